import json
from pathlib import Path

import pyarrow.parquet as pq
import pytest

from tsembed.data import EvalRow, TrainRow, read_eval, read_train, write_eval, write_train
from tsembed.data.formats import atomic_path, read_records, write_records
from tsembed.errors import DataError

from .factories import eval_record, train_record

TRAIN_ROWS = [
    TrainRow(**train_record()),
    TrainRow(**train_record(qry="plain text query", qry_image_path="", neg_text="", neg_image_path="")),
    TrainRow(**train_record(pos_text="<|image_1|>\nRepresent the given image.", pos_image_path="img/b.png")),
]
EVAL_ROWS = [
    EvalRow(**eval_record()),
    EvalRow(**eval_record(qry_text="ünïcödé {braces}", tgt_text=["x", "y"], tgt_img_path=["", ""])),
]


@pytest.mark.parametrize("suffix", [".jsonl", ".parquet"])
def test_train_round_trip(image_root: Path, suffix: str) -> None:
    path = write_train(image_root / f"train{suffix}", TRAIN_ROWS)
    split = read_train(path, image_root)
    assert split.rows == TRAIN_ROWS
    assert split.report.ok and split.report.num_rows == 3
    assert split.image_root == image_root


@pytest.mark.parametrize("suffix", [".jsonl", ".parquet"])
def test_eval_round_trip(image_root: Path, suffix: str) -> None:
    path = write_eval(image_root / f"eval{suffix}", EVAL_ROWS)
    assert read_eval(path, image_root).rows == EVAL_ROWS


def test_parquet_columns_are_read_by_name_not_position(image_root: Path) -> None:
    import pyarrow as pa

    rec = train_record()
    reordered = {k: [rec[k]] for k in reversed(list(rec))}
    pq.write_table(pa.table(reordered), image_root / "t.parquet")
    assert read_train(image_root / "t.parquet", image_root).rows == [TrainRow(**rec)]


def test_parquet_schema_is_typed_even_for_empty_columns(image_root: Path) -> None:
    write_eval(image_root / "e.parquet", [EvalRow("q", "", ["a"], [""])])
    import pyarrow as pa

    field_type = pq.read_schema(image_root / "e.parquet").field("tgt_img_path").type
    assert pa.types.is_list(field_type) and field_type.value_type == pa.string()


def test_jsonl_is_utf8_one_object_per_line(image_root: Path) -> None:
    path = write_eval(image_root / "e.jsonl", EVAL_ROWS)
    lines = path.read_text(encoding="utf-8").splitlines()
    assert len(lines) == 2 and "ünïcödé" in lines[1]
    assert json.loads(lines[0])["tgt_img_path"] == ["img/a.png", "img/b.png"]


def test_json_array_and_directory_of_shards_are_read(image_root: Path) -> None:
    (image_root / "arr.json").write_text(json.dumps([train_record(), train_record()]))
    assert len(read_train(image_root / "arr.json", image_root)) == 2
    shards = image_root / "shards"
    write_train(shards / "part-0.parquet", TRAIN_ROWS[:1])
    write_train(shards / "part-1.jsonl", TRAIN_ROWS[1:])
    assert read_train(shards, image_root).rows == TRAIN_ROWS


def test_write_is_atomic(tmp_path: Path) -> None:
    target = tmp_path / "rows.jsonl"
    write_records(target, [{"a": 1}])
    with pytest.raises(RuntimeError), atomic_path(target) as tmp:
        tmp.write_text("partial")
        raise RuntimeError("crash mid-write")
    assert target.read_text() == '{"a": 1}\n'  # old content survives a crash
    assert sorted(p.name for p in tmp_path.iterdir()) == ["rows.jsonl"]  # no temp file left behind
    assert target.stat().st_mode & 0o044  # readable by others like any normal file


def test_missing_file_and_unknown_suffix_are_data_errors(tmp_path: Path) -> None:
    with pytest.raises(DataError, match="does not exist"):
        read_records(tmp_path / "nope.jsonl")
    (tmp_path / "rows.csv").write_text("a,b\n")
    with pytest.raises(DataError, match="unsupported file type '.csv'"):
        read_records(tmp_path / "rows.csv")


def _with_bad_byte(path: Path, records: list[dict]) -> tuple[Path, int]:
    """Write records as jsonl with a Latin-1 'é' (0xe9, not UTF-8) inside row 2; return its byte offset."""
    lines = [json.dumps(r).encode() + b"\n" for r in records]
    lines[1] = lines[1].replace(b'"qry": "', b'"qry": "caf\xe9 ', 1)
    path.write_bytes(b"".join(lines))
    return path, len(lines[0]) + lines[1].index(b"\xe9")


def test_non_utf8_byte_is_a_data_error_naming_file_row_and_offset(image_root: Path) -> None:
    path, offset = _with_bad_byte(image_root / "t.jsonl", [train_record()] * 3)
    records, problems = read_records(path)
    assert [r.row for r in records] == [1, 3] and [p.row for p in problems] == [2]
    with pytest.raises(DataError) as info:
        read_train(path, image_root)
    assert f"{path} row 2: not valid UTF-8: byte 0xe9 at byte offset {offset}" in str(info.value)
    split = read_train(path, image_root, skip_invalid=True)  # what training does with data.skip_invalid
    assert len(split) == 2 and split.report.num_skipped == 1 and split.report.bad_rows == [2]


def test_non_utf8_byte_in_a_json_array_names_line_and_offset(image_root: Path) -> None:
    path = image_root / "arr.json"
    path.write_bytes(b'[\n{"qry": "a"},\n{"qry": "caf\xe9"}\n]')
    records, problems = read_records(path)
    assert not records and [p.row for p in problems] == [3] and "byte offset 28" in problems[0].message

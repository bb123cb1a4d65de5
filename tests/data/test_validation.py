import json
import logging
from pathlib import Path

import pytest

from tsembed.data import read_eval, read_train, validate_file
from tsembed.data.formats import write_records
from tsembed.data.problems import MAX_LISTED
from tsembed.errors import DataError

from .factories import eval_record, train_record


def _write(root: Path, name: str, records: list) -> Path:
    return write_records(root / name, records)


def _error(reader, path: Path, root: Path) -> str:
    with pytest.raises(DataError) as info:
        reader(path, root)
    return str(info.value)


@pytest.mark.parametrize(
    ("record", "field", "value", "message"),
    [
        (
            train_record(qry_image_path="img/missing.png"),
            "qry_image_path",
            "img/missing.png",
            "not found under image root",
        ),
        (
            train_record(pos_image_path="img/bad.png", pos_text="<|image_1|>"),
            "pos_image_path",
            "img/bad.png",
            "not a readable image",
        ),
        (train_record(qry="", qry_image_path=""), "qry", "", "is empty"),
        (train_record(qry="<|image_1|> twice <|image_1|>"), "qry", "<|image_1|> twice", "contains 2"),
        (train_record(pos_text="<|image_1|> red"), "pos_text", "<|image_1|> red", "`pos_image_path` is empty"),
        (train_record(qry="<|image_1|><|image_2|>"), "qry", "<|image_1|><|image_2|>", "unsupported placeholder"),
        (train_record(qry_image="x"), "qry_image", "x", "unknown field (did you mean `qry_image_path`?)"),
        ({k: v for k, v in train_record().items() if k != "pos_text"}, "pos_text", "None", "is missing"),
        (train_record(pos_text=3), "pos_text", "3", "must be a string, got int"),
    ],
)
def test_each_train_problem_names_file_row_field_and_value(image_root, record, field, value, message) -> None:
    path = _write(image_root, "train.jsonl", [train_record(), record])
    text = _error(read_train, path, image_root)
    line = next(line for line in text.splitlines() if f"`{field}`" in line)
    assert f"{path} row 2: `{field}` " in line
    assert value in line and message in line


@pytest.mark.parametrize(
    ("record", "field", "message"),
    [
        (eval_record(tgt_img_path=["img/a.png"]), "tgt_img_path", "has 1 entries but `tgt_text` has 2"),
        (eval_record(tgt_text=[], tgt_img_path=[]), "tgt_text", "needs at least one candidate"),
        (eval_record(tgt_img_path=["img/a.png", "img/nope.png"]), "tgt_img_path[1]", "not found"),
        (eval_record(tgt_text=["<|image_1|>", "<|image_1|> x <|image_1|>"]), "tgt_text[1]", "contains 2 <|image_1|>"),
        (eval_record(qry_text=" "), "qry_text", "is empty"),
        (eval_record(tgt_text="a"), "tgt_text", "must be a list of strings"),
        (eval_record(tgt_txt=["a"]), "tgt_txt", "did you mean `tgt_text`?"),
    ],
)
def test_each_eval_problem_names_file_row_field(image_root, record, field, message) -> None:
    path = _write(image_root, "eval.jsonl", [record])
    text = _error(read_eval, path, image_root)
    assert f"{path} row 1: `{field}` " in text and message in text


def test_all_problems_are_reported_not_only_the_first(image_root: Path) -> None:
    records = [
        train_record(qry="", qry_image_path=""),  # row 1: empty
        train_record(),  # row 2: fine
        train_record(qry_image_path="img/gone.png"),  # row 3
        # row 4: two placeholders and a bad image
        train_record(neg_image_path="img/bad.png", neg_text="<|image_1|> x <|image_1|>"),
    ]
    path = _write(image_root, "t.jsonl", records)
    report = validate_file(path, image_root)
    assert report.bad_rows == [1, 3, 4]
    assert [p.row for p in report.problems] == sorted(p.row for p in report.problems)
    fields = {(p.row, p.field) for p in report.problems}
    assert {(1, "qry"), (3, "qry_image_path"), (4, "neg_text"), (4, "neg_image_path")} <= fields
    text = _error(read_train, path, image_root)
    assert "in 3 of 4 train rows" in text and "row 3" in text and "row 4" in text


def test_message_is_capped_with_a_count_of_the_rest(image_root: Path) -> None:
    path = _write(image_root, "t.jsonl", [train_record(qry="x", qry_image_path="")] * 5
                 + [train_record(qry="", qry_image_path="")] * 60)
    text = _error(read_train, path, image_root)
    assert text.count(f"{path} row") == MAX_LISTED
    assert "... and" in text and "more problem(s)" in text


def test_skip_invalid_drops_bad_rows_counts_and_logs_them(image_root: Path, caplog) -> None:
    records = [train_record(), train_record(qry_image_path="img/gone.png"), train_record(),
               train_record(qry="", qry_image_path="")]
    path = _write(image_root, "t.jsonl", records)
    with caplog.at_level(logging.WARNING, logger="tsembed.data.problems"):
        split = read_train(path, image_root, skip_invalid=True)
    assert len(split) == 2 and split.report.num_skipped == 2 and split.report.kept == [0, 2]
    assert "skipped 2 of 4 rows" in caplog.text and "img/gone.png" in caplog.text


def test_invalid_json_line_is_a_problem_with_its_line_number(image_root: Path) -> None:
    path = image_root / "t.jsonl"
    path.write_text(json.dumps(train_record()) + "\n\n{not json\n" + json.dumps(train_record()) + "\n")
    text = _error(read_train, path, image_root)
    assert f"{path} row 3: invalid JSON" in text
    split = read_train(path, image_root, skip_invalid=True)
    assert len(split) == 2 and split.report.num_skipped == 1


def test_parquet_problems_use_1_based_row_numbers(image_root: Path) -> None:
    path = _write(image_root, "t.parquet", [train_record(), train_record(qry="", qry_image_path="")])
    assert f"{path} row 2: `qry`" in _error(read_train, path, image_root)


def test_images_are_checked_once_per_distinct_path(image_root: Path, monkeypatch) -> None:
    from tsembed.data import images

    calls: list[str] = []
    original = images.ImageChecker._check
    monkeypatch.setattr(images.ImageChecker, "_check", lambda self, p: calls.append(p) or original(self, p))
    path = _write(image_root, "e.jsonl", [eval_record()] * 40)
    read_eval(path, image_root)
    assert sorted(calls) == ["img/a.png", "img/b.png"]


def test_wrong_image_root_gets_a_hint(image_root: Path, tmp_path: Path) -> None:
    path = _write(image_root, "e.jsonl", [eval_record()])
    assert "hint: none of the 2 images was found" in _error(read_eval, path, tmp_path)


def test_kind_is_inferred_and_structure_checked_without_images(image_root: Path) -> None:
    path = _write(image_root, "e.jsonl", [eval_record(tgt_img_path=["img/x.png", "img/y.png"])])
    assert validate_file(path, image_root, check_images=False).kind == "eval"
    assert not validate_file(path, image_root).ok
    with pytest.raises(DataError, match="cannot tell train from eval"):
        validate_file(_write(image_root, "x.jsonl", [{"foo": 1}]), image_root)


@pytest.mark.parametrize(
    ("path", "message"),
    [
        ("../outside.png", "leaves the image root through '..'"),
        ("img/../../outside.png", "leaves the image root through '..'"),
        ("/etc/passwd", "is an absolute path"),
        ("C:\\data\\x.png", "is an absolute path"),
    ],
)
def test_image_paths_that_leave_the_root_are_flagged(image_root: Path, path: str, message: str) -> None:
    (image_root.parent / "outside.png").write_bytes((image_root / "img" / "a.png").read_bytes())  # exists, readable
    records = [train_record(pos_image_path=path, pos_text="<|image_1|>"), eval_record(qry_img_path=path,
                                                                                       qry_text="<|image_1|> q")]
    for kind, record in zip(("train", "eval"), records, strict=True):
        report = validate_file(_write(image_root, f"{kind}.jsonl", [record]), image_root, kind, check_images=False)
        assert len(report.problems) == 1 and message in report.problems[0].message and report.kept == []
    assert validate_file(_write(image_root, "ok.jsonl", [train_record(pos_image_path="img/../img/a.png",
                                                                      pos_text="<|image_1|>")]), image_root).ok


def test_validate_rejects_every_row_eval_would_and_accepts_its_label_fields(image_root: Path) -> None:
    from tsembed.evaluation import load_eval_set, resolve_eval_sets

    good = eval_record(tgt_text=["<|image_1|> a", "<|image_1|> b"])
    rows = [
        {**good, "pos_index": 0},  # a label eval accepts: not an unknown field
        {**good, "tgt_img_path": ["img/a.png", "img/a.png"], "tgt_text": ["<|image_1|> a", "<|image_1|> a"]},
        {**good, "label": 1},
        {**good, "tgt_label": "<|image_1|> b"},
    ]
    path = _write(image_root, "e.jsonl", rows)
    report = validate_file(path, image_root, "eval")
    assert report.kept == [0]
    assert [(p.row, p.field) for p in report.problems] == [(2, "tgt_text[0]"), (3, "label"), (4, "tgt_label")]
    evaluated = load_eval_set(resolve_eval_sets(path)[0], skip_invalid=True).report
    assert evaluated.kept == report.kept and evaluated.problems == report.problems

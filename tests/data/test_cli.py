import json
import re
from pathlib import Path

import pytest

from tsembed.cli import main
from tsembed.data import read_eval, read_train
from tsembed.data.formats import write_records
from tsembed.data.suite import Suite
from tsembed.errors import DataError

from .factories import eval_record, train_record


def test_build_suite_command_writes_a_loadable_suite(tmp_path: Path, capsys) -> None:
    out = tmp_path / "suite"
    argv = [
        "data",
        "build-suite",
        "--out",
        str(out),
        "--seed",
        "3",
        "--max-train",
        "3",
        "--max-eval",
        "2",
        "--pool-size",
        "5",
        "--dataset",
        "EmojiGroup",
        "--dataset",
        "NameToImage",
        "--no-progress",
    ]
    assert main(argv) == 0
    assert "suite written to" in capsys.readouterr().out
    assert main(["data", "validate", str(out / "eval/NameToImage.jsonl")]) == 0  # image root: the suite root
    assert main(argv) == 1  # exists, no --overwrite
    assert "--overwrite" in capsys.readouterr().err


def test_validate_command_reports_problems_and_skip_invalid(image_root: Path, capsys) -> None:
    path = write_records(image_root / "e.jsonl", [eval_record(), eval_record(tgt_img_path=["img/a.png"])])
    assert main(["data", "validate", str(path), "--image-root", str(image_root)]) == 1
    err = capsys.readouterr().err
    assert f"{path} row 2: `tgt_img_path`" in err
    assert main(["data", "validate", str(path), "--image-root", str(image_root), "--skip-invalid"]) == 0
    assert "1 of 2 rows would be skipped" in capsys.readouterr().out


def test_validate_suite_split_with_kind(tiny_suite: Suite) -> None:
    path = tiny_suite.root / "train/CountVQA.jsonl"
    assert main(["data", "validate", str(path), "--image-root", str(tiny_suite.root), "--kind", "train"]) == 0
    assert main(["data", "validate", str(path), "--kind", "eval"]) == 1  # train rows read as eval rows


def test_validate_can_allow_extra_fields(image_root: Path) -> None:
    path = write_records(image_root / "e.jsonl", [eval_record(dataset="x")])
    assert main(["data", "validate", str(path), "--image-root", str(image_root)]) == 1
    assert main(["data", "validate", str(path), "--image-root", str(image_root), "--allow-extra-fields"]) == 0


def test_validate_reports_a_non_utf8_byte_and_skips_it(image_root: Path, capsys) -> None:
    path = write_records(image_root / "e.jsonl", [eval_record()] * 3)
    path.write_bytes(path.read_bytes().replace(b'"qry_text": "', b'"qry_text": "\xff', 1))
    assert main(["data", "validate", str(path), "--image-root", str(image_root)]) == 1
    err = capsys.readouterr().err
    assert f"{path} row 1: not valid UTF-8: byte 0xff at byte offset" in err and "Traceback" not in err
    assert main(["data", "validate", str(path), "--image-root", str(image_root), "--skip-invalid"]) == 0
    assert "1 of 3 rows would be skipped" in capsys.readouterr().out


@pytest.mark.parametrize("kind, field, record", [
    ("train", "`pos_text`", lambda: train_record(pos_text="red \ud800")),
    ("train", "`qry`", lambda: train_record(qry="<|image_1|> x \udfff")),
    ("eval", "`tgt_text[1]`", lambda: eval_record(tgt_text=["a", "b\ud800"], tgt_img_path=["", ""])),
])
def test_lone_surrogate_is_rejected_naming_file_row_and_field(image_root: Path, capsys, kind, field, record) -> None:
    """D5: JSON's "\\ud800" escape decodes to a str that crashes the tokenizer with a bare TypeError later."""
    good = train_record() if kind == "train" else eval_record()
    path = image_root / f"{kind}.jsonl"
    path.write_text("".join(json.dumps(r) + "\n" for r in [good, record(), good]))  # json.dumps escapes it
    assert "\\ud" in path.read_text()
    assert main(["data", "validate", str(path), "--image-root", str(image_root)]) == 1
    err = capsys.readouterr().err
    assert f"{path} row 2: {field}" in err and "lone surrogate" in err and "Traceback" not in err
    read = read_train if kind == "train" else read_eval
    with pytest.raises(DataError, match=f"row 2: {re.escape(field)}.*lone surrogate"):
        read(path, image_root)
    assert len(read(path, image_root, skip_invalid=True)) == 2


def test_validate_reads_an_mmeb_clone_folder_as_eval_and_train_read_it(tmp_path: Path, capsys) -> None:
    from tests.data.mmeb_hub import (
        EVAL_FIXTURE,
        TRAIN_FIXTURE,
        write_mmeb_eval,
        write_mmeb_train,
        write_repeated_positive_eval,
    )

    root, images = tmp_path / "MMEB-eval", tmp_path / "eval_images"
    write_mmeb_eval(root, images)
    assert main(["data", "validate", str(root), "--image-root", str(images)]) == 0
    out = capsys.readouterr().out
    assert all(f"{root / name / 'test-*.parquet'}: 4 eval rows, all valid" in out for name in EVAL_FIXTURE)
    # Images default to the clone, as `tsembed eval` resolves them: here they are elsewhere, and it says so.
    assert main(["data", "validate", str(root), "--no-check-images"]) == 0
    assert main(["data", "validate", str(root)]) == 1
    assert "not found under image root" in capsys.readouterr().err
    # A dataset whose rows repeat their positive: refused as plain `eval` refuses it, kept under VLM2Vec's tie rule.
    write_repeated_positive_eval(root, images)
    assert main(["data", "validate", str(root), "--image-root", str(images)]) == 1
    assert "is repeated as candidate 2" in capsys.readouterr().err
    assert main(["data", "validate", str(root), "--image-root", str(images), "--tie-rule", "vlm2vec"]) == 0
    assert "note: 3 row(s) with the positive repeated" in capsys.readouterr().out
    train = write_mmeb_train(tmp_path / "MMEB-train")
    assert main(["data", "validate", str(train)]) == 0  # both splits of every subset; images under the clone
    out = capsys.readouterr().out
    assert out.count("train rows, all valid") == 2 * len(TRAIN_FIXTURE)

"""MMEB as downloaded from the Hub: the dataset registry, finding split files, and reading the rows."""

from collections import Counter
from pathlib import Path

import pytest

from tsembed.data import read_eval, read_train
from tsembed.data.formats import read_records
from tsembed.data.mmeb_layout import discover, is_layout, split_path
from tsembed.data.registry import DATASETS, MMEB_EVAL_DATASETS, MMEB_TRAIN_DATASETS, get_dataset
from tsembed.data.rows import EvalRow, join_instruction, merge_instructions
from tsembed.errors import DataError

from .mmeb_hub import EVAL_FIXTURE, TRAIN_FIXTURE, write_image, write_mmeb_eval, write_mmeb_train, write_parquet


def test_registry_has_mmeb_v1_as_in_the_paper() -> None:
    # MMEB (VLM2Vec, Table 1): 10 classification, 10 VQA, 12 retrieval, 4 grounding; 20 IND + 16 OOD.
    assert len(MMEB_EVAL_DATASETS) == 36 and len({d.name for d in MMEB_EVAL_DATASETS}) == 36
    assert Counter(d.meta_task for d in MMEB_EVAL_DATASETS) == {"classification": 10, "vqa": 10, "retrieval": 12,
                                                               "grounding": 4}
    assert Counter((d.meta_task, d.ood) for d in MMEB_EVAL_DATASETS) == {
        ("classification", False): 5, ("classification", True): 5, ("vqa", False): 6, ("vqa", True): 4,
        ("retrieval", False): 8, ("retrieval", True): 4, ("grounding", False): 1, ("grounding", True): 3}
    ood = {d.name for d in MMEB_EVAL_DATASETS if d.ood}
    assert ood == {"Place365", "ImageNet-A", "ImageNet-R", "ObjectNet", "Country211", "ScienceQA", "VizWiz", "GQA",
                   "TextVQA", "FashionIQ", "Wiki-SS-NQ", "OVEN", "EDIS", "RefCOCO", "RefCOCO-Matching",
                   "Visual7W-Pointing"}
    # MMEB-train = the 20 IND datasets, ImageNet under its train folder name.
    assert len(MMEB_TRAIN_DATASETS) == 20 and not any(d.ood for d in MMEB_TRAIN_DATASETS)
    ind = {d.name for d in MMEB_EVAL_DATASETS if not d.ood}
    assert {d.name.replace("ImageNet_1K", "ImageNet-1K") for d in MMEB_TRAIN_DATASETS} == ind
    assert get_dataset("ImageNet_1K").meta_task == "classification" and DATASETS["MSCOCO"].meta_task == "grounding"
    # Rows carry their instructions: the templates pass content through unchanged.
    assert get_dataset("CIRR").format_query("<|image_1|> x {y}") == "<|image_1|> x {y}"


def test_discover_finds_every_hub_layout(tmp_path: Path) -> None:
    write_mmeb_eval(tmp_path / "MMEB-eval", tmp_path / "images", ("ImageNet-1K", "OK-VQA"))
    # refs/convert/parquet stores <Dataset>/<split>/0000.parquet; a converted copy may hold <split>.jsonl
    rows = [{"qry_text": "q", "qry_img_path": "", "tgt_text": ["a"], "tgt_img_path": [""]}]
    write_parquet(tmp_path / "MMEB-eval" / "CIRR" / "test" / "0000.parquet", rows)
    (tmp_path / "MMEB-eval" / "GQA").mkdir()
    (tmp_path / "MMEB-eval" / "GQA" / "test.jsonl").write_text('{"qry_text": "q"}\n')
    (tmp_path / "MMEB-eval" / ".git").mkdir()
    found = {d.name: d.path for d in discover(tmp_path / "MMEB-eval", "test")}
    root = tmp_path / "MMEB-eval"
    assert found == {"CIRR": root / "CIRR" / "test", "GQA": root / "GQA" / "test.jsonl",
                     "ImageNet-1K": root / "ImageNet-1K" / "test-*.parquet",
                     "OK-VQA": root / "OK-VQA" / "test-*.parquet"}
    assert is_layout(root) and not is_layout(root / "ImageNet-1K") and not is_layout(tmp_path / "images")
    with pytest.raises(DataError, match=r"no dataset folder holds split 'original'.*'ImageNet-1K': \['test'\]"):
        discover(root, "original")


def test_glob_reads_every_shard_and_names_each_file(tmp_path: Path) -> None:
    for shard in range(2):
        rows = [{"qry_text": f"q{shard}{i}", "qry_img_path": "", "tgt_text": ["a"], "tgt_img_path": [""]}
                for i in range(3)]
        write_parquet(tmp_path / "X" / f"test-0000{shard}-of-00002.parquet", rows)
    write_parquet(tmp_path / "X" / "original-00000-of-00001.parquet", [{"qry": "not me"}])
    path = split_path(tmp_path / "X", "test")
    records, problems = read_records(path)
    assert not problems and [r.value["qry_text"] for r in records] == ["q00", "q01", "q02", "q10", "q11", "q12"]
    assert records[4].file.endswith("test-00001-of-00002.parquet") and records[4].row == 2
    with pytest.raises(DataError, match="no data file matches"):
        read_records(tmp_path / "X" / "dev-*.parquet")


def test_train_split_reads_only_its_shards(tmp_path: Path) -> None:
    root = write_mmeb_train(tmp_path / "MMEB-train")
    found = discover(root, "original")
    assert [d.name for d in found] == sorted(TRAIN_FIXTURE)  # images/ holds no split files and is skipped
    split = read_train(found[0].path, root)
    assert len(split) == TRAIN_FIXTURE["ImageNet_1K"] and split.report.ok
    assert split.rows[0].query_input(root).image == root / "images" / "ImageNet_1K" / "red_0.png"
    assert len(read_train(discover(root, "diverse_instruction")[0].path, root)) == TRAIN_FIXTURE["ImageNet_1K"] + 1


def test_instruction_fields_merge_as_vlm2vec_joins_them(tmp_path: Path) -> None:
    assert join_instruction("<|image_1|> Represent the given image for classification", "", True) == (
        "<|image_1|>\nRepresent the given image for classification")
    assert join_instruction("Find an image that matches the caption:", " a dog ", False) == (
        "Find an image that matches the caption: a dog")
    record = {"qry_inst": "<|image_1|> Represent the given image with the following question:",
              "qry_text": "What colour?", "qry_img_path": "q.png", "tgt_inst": "<|image_1|> Represent the given image.",
              "tgt_text": ["", "red"], "tgt_img_path": ["a.png", ""]}
    merged = merge_instructions(record)
    assert merged == {"qry_text": "<|image_1|>\nRepresent the given image with the following question: What colour?",
                      "qry_img_path": "q.png", "tgt_text": ["<|image_1|>\nRepresent the given image.", "red"],
                      "tgt_img_path": ["a.png", ""]}
    assert EvalRow.from_record(record) == EvalRow(**merged)
    assert merge_instructions({"qry_text": "x"}) == {"qry_text": "x"}
    # Through the reader: validation runs on the merged texts (placeholder checks pass), rows come out merged.
    for name in ("q.png", "a.png"):
        write_image(tmp_path / name, "red")
    split = read_eval(write_parquet(tmp_path / "e.parquet", [record]), tmp_path)
    assert split.report.ok and split.rows[0].qry_text == merged["qry_text"]
    bad = {**record, "qry_inst": 3}
    with pytest.raises(DataError, match=r"e2.parquet row 1: `qry_inst` 3 must be a string"):
        read_eval(write_parquet(tmp_path / "e2.parquet", [bad]), tmp_path)


def test_missing_column_and_image_errors_name_file_row_and_field(tmp_path: Path) -> None:
    written = write_mmeb_eval(tmp_path / "MMEB-eval", tmp_path / "images", ("OK-VQA",))
    path = tmp_path / "MMEB-eval" / "OK-VQA" / "test-00000-of-00001.parquet"
    (tmp_path / "images" / "OK-VQA" / "green.png").unlink()
    with pytest.raises(DataError) as err:
        read_eval(path, tmp_path / "images")
    assert f"{path} row 2: `qry_img_path` 'OK-VQA/green.png' not found under image root '{tmp_path / 'images'}'" in (
        str(err.value))
    # A column missing from the whole file: every row is named, and one line says what the file has instead.
    rows = [{k: v for k, v in r.items() if k != "tgt_img_path"} for r in written["OK-VQA"]]
    old = write_parquet(tmp_path / "old" / "test-00000-of-00001.parquet", rows)
    with pytest.raises(DataError) as err:
        read_eval(old, tmp_path / "images")
    text = str(err.value)
    assert f"{old} row 1: `tgt_img_path` None is missing" in text and f"{old} row 4: `tgt_img_path`" in text
    assert f"{old}: column(s) ['tgt_img_path'] missing from all 4 rows; its columns are" in text
    # Wrong image root: the hint points at the images/ folder inside it.
    with pytest.raises(DataError, match=r"is the image root right\? \(it has an images/ folder: try"):
        read_eval(path, tmp_path)


def test_fixture_covers_every_meta_task() -> None:
    assert {get_dataset(n).meta_task for n in EVAL_FIXTURE} == {"classification", "vqa", "retrieval", "grounding"}
    assert all((get_dataset(n).meta_task, get_dataset(n).ood) == v for n, v in EVAL_FIXTURE.items())

"""`tsembed eval` on MMEB-eval as users download it: grouping from the registry and the leaderboard's files."""

import json

import pytest

from tests.data.mmeb_hub import EVAL_FIXTURE, write_mmeb_eval
from tests.toy_backbone import ToyBackbone
from tsembed.backbones import BACKBONES
from tsembed.cli import main
from tsembed.errors import DataError
from tsembed.evaluation import evaluate
from tsembed.evaluation.leaderboard import leaderboard_report, score_dict

from .helpers import toy_model


@pytest.fixture
def mmeb(tmp_path):
    """MMEB-eval cloned to ``MMEB-eval/``, its images unpacked to ``eval_images/`` (the VLM2Vec README's names)."""
    write_mmeb_eval(tmp_path / "MMEB-eval", tmp_path / "eval_images")
    return tmp_path / "MMEB-eval", tmp_path / "eval_images"


def test_evaluate_reads_the_hub_layout_and_groups_by_registry(mmeb):
    root, images = mmeb
    model = toy_model()
    results = evaluate(model, root, image_root=images, progress=False)
    assert [d.name for d in results.datasets] == sorted(EVAL_FIXTURE)
    for d in results.datasets:
        assert (d.meta_task, d.ood) == EVAL_FIXTURE[d.name] and d.num_rows == 4 and d.num_skipped == 0
    agg = results.aggregates
    assert list(agg) == ["classification", "vqa", "retrieval", "grounding", "IND", "OOD", "overall"]
    hits = {d.name: d.metrics["hit@1"] for d in results.datasets}
    assert agg["OOD"]["hit@1"] == pytest.approx((hits["Place365"] + hits["RefCOCO"]) / 2)
    assert agg["classification"]["hit@1"] == pytest.approx((hits["ImageNet-1K"] + hits["Place365"]) / 2)
    assert results.settings["image_root"] == str(images)
    # The same files named one by one give the same numbers: the layout only finds them.
    files = {name: root / name / "test-00000-of-00001.parquet" for name in EVAL_FIXTURE}
    by_file = evaluate(model, files, image_root=images, progress=False)
    assert {d.name: d.metrics["hit@1"] for d in by_file.datasets} == hits
    # One dataset folder on its own, and a dataset filter.
    one = evaluate(model, root / "OK-VQA", image_root=images, progress=False)
    assert [(d.name, d.meta_task, d.num_rows) for d in one.datasets] == [("OK-VQA", "vqa", 4)]
    assert [d.name for d in evaluate(model, root, ["RefCOCO"], image_root=images, progress=False).datasets] == [
        "RefCOCO"]


def test_missing_image_names_file_row_and_field_and_skipped_rows_are_reported(mmeb):
    root, images = mmeb
    (images / "MSCOCO_t2i" / "blue.png").unlink()  # candidate 2 of row 1, the positive of row 3
    shard = root / "MSCOCO_t2i" / "test-00000-of-00001.parquet"
    with pytest.raises(DataError) as err:
        evaluate(toy_model(), root, ["MSCOCO_t2i"], image_root=images, progress=False)
    assert f"{shard} row 1: `tgt_img_path[2]` 'MSCOCO_t2i/blue.png' not found under image root '{images}'" in str(
        err.value)
    results = evaluate(toy_model(), root, ["MSCOCO_t2i"], image_root=images, skip_invalid=True, progress=False)
    (d,) = results.datasets
    assert (d.num_rows, d.num_skipped) == (0, 4)  # every row lists all four colours
    assert score_dict(d) == {"acc": None, "num_correct": None, "hit@1": None, "precision@1": None,
                             "num_pred": 0, "num_data": 4}  # nothing scored: no numbers, and the count says why


def test_leaderboard_files_hold_each_dataset_score(mmeb):
    root, images = mmeb
    results = evaluate(toy_model(), root, image_root=images, progress=False)
    report = leaderboard_report(results, "org/tsembed-toy", {"model_size": "tiny"})
    assert report["metadata"]["model_name"] == "org/tsembed-toy" and report["metadata"]["model_size"] == "tiny"
    scores = report["metrics"]["image"]
    assert list(scores) == sorted(EVAL_FIXTURE)
    for d in results.datasets:
        s = scores[d.name]
        assert s["acc"] == s["hit@1"] == s["precision@1"] == d.metrics["hit@1"]
        assert s["num_correct"] == round(d.metrics["hit@1"] * 4) and s["num_pred"] == s["num_data"] == 4


def test_cli_eval_format_mmeb(mmeb, tmp_path, monkeypatch, capsys):
    root, images = mmeb
    monkeypatch.setitem(BACKBONES, ToyBackbone.kind, ToyBackbone)
    toy_model().save_pretrained(tmp_path / "my-model")
    out = tmp_path / "out"
    args = ["eval", "--model", str(tmp_path / "my-model"), "--suite", str(root), "--image-root", str(images),
            "--out", str(out), "--format", "mmeb", "--no-progress", "--no-cache"]
    assert main(args) == 0
    results = json.loads((out / "results.json").read_text())
    assert results["aggregates"]["IND"]["num_datasets"] == 3 and results["aggregates"]["OOD"]["num_datasets"] == 2
    # VLM2Vec-V2's experiment layout: <exp>/image/<Dataset>_score.json and _pred.jsonl, <exp>/<model>.json.
    assert sorted(p.name for p in (out / "mmeb").iterdir()) == ["image", "my-model.json"]
    assert sorted(p.name for p in (out / "mmeb" / "image").iterdir()) == sorted(
        [f"{n}_score.json" for n in EVAL_FIXTURE] + [f"{n}_pred.jsonl" for n in EVAL_FIXTURE])
    score = json.loads((out / "mmeb" / "image" / "OK-VQA_score.json").read_text())
    by_name = {d["name"]: d for d in results["datasets"]}
    assert score["acc"] == by_name["OK-VQA"]["metrics"]["hit@1"] and score["num_pred"] == 4
    assert results["settings"]["tie_rule"] == "vlm2vec"  # --format mmeb scores ties as the leaderboard does
    report = json.loads((out / "mmeb" / "my-model.json").read_text())
    assert report["metadata"]["model_name"] == "my-model" and set(report["metrics"]["image"]) == set(EVAL_FIXTURE)
    assert "| grounding |" in capsys.readouterr().out
    assert main([*args[:-2], "--format", "csv"]) != 0  # unknown format: a usage error, nothing evaluated

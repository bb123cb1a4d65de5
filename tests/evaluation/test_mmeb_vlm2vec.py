"""`tsembed eval --format mmeb` against VLM2Vec's own scoring: ties (V1's argmax), V2's score and pred files in V2's
experiment layout, and rows VLM2Vec's readers accept (a repeated positive, an image without a placeholder).

The re-scoring here is written the way VLM2Vec-V1's ``eval.py`` scores, independently of tsembed's scorer: one
embedding per distinct ``(text, image path)``, each row's candidate scores ``dot(candidate, query)``, ``argmax``, and
a row is correct when the argmax is candidate 0."""

import json
import math

import numpy as np
import pytest

from tests.data.mmeb_hub import (
    REPEATED_DATASET,
    write_mmeb_eval,
    write_placeholderless_eval,
    write_repeated_positive_eval,
)
from tests.toy_backbone import ToyBackbone
from tsembed.backbones import BACKBONES
from tsembed.cli import main
from tsembed.data.validation import REPEATED_POSITIVE
from tsembed.errors import DataError
from tsembed.evaluation import evaluate
from tsembed.evaluation.encoder import CachedEncoder
from tsembed.evaluation.leaderboard import default_model_name, v2_metrics
from tsembed.inputs import EmbedInput
from tsembed.model import TSEmbedModel

from .helpers import toy_model


@pytest.fixture
def clone(tmp_path, monkeypatch):
    """MMEB-eval as cloned (two image-classification datasets and one with repeated positives), a saved toy model."""
    monkeypatch.setitem(BACKBONES, ToyBackbone.kind, ToyBackbone)
    root, images = tmp_path / "MMEB-eval", tmp_path / "eval_images"
    write_mmeb_eval(root, images, ("ImageNet-1K", "OK-VQA"))
    repeated = write_repeated_positive_eval(root, images)
    toy_model().save_pretrained(tmp_path / "runs" / "toy-run" / "model")
    return root, images, tmp_path / "runs" / "toy-run" / "model", repeated


def _argmax_rescore(model_dir, cache_dir, images, rows) -> tuple[int, int]:
    """(n_correct, n) as VLM2Vec-V1 computes them, from the embeddings the run cached (nothing re-encoded)."""
    encoder = CachedEncoder(TSEmbedModel.from_pretrained(model_dir).eval(), cache_dir, progress=False)
    keys = list(dict.fromkeys([(r["qry_text"], r["qry_img_path"]) for r in rows]
                              + [pair for r in rows for pair in zip(r["tgt_text"], r["tgt_img_path"], strict=True)]))
    inputs = [EmbedInput(text=text or None, image=images / path if path else None) for text, path in keys]
    vectors = encoder.encode(inputs).embeddings
    assert encoder.stats.encoded == 0  # the very embeddings the run scored
    embedding = {key: vectors[i].astype(np.float64) for i, key in enumerate(keys)}
    n_correct = 0
    for row in rows:
        qry_t = embedding[(row["qry_text"], row["qry_img_path"])]
        tgt_t = [embedding[pair] for pair in zip(row["tgt_text"], row["tgt_img_path"], strict=True)]
        scores = np.array([math.fsum(t * qry_t) for t in tgt_t])  # exact dot products: a repeated candidate ties
        if np.argmax(scores) == 0:
            n_correct += 1
    return n_correct, len(rows)


def _eval(model_dir, root, images, out, *extra):
    args = ["eval", "--model", str(model_dir), "--suite", str(root), "--image-root", str(images), "--out", str(out),
            "--format", "mmeb", "--no-progress", "--cache-dir", str(out.parent / "cache"), *extra]
    return main(args)


def test_vlm2vec_tie_rule_equals_argmax_rescoring_on_repeated_positives(clone, tmp_path):
    root, images, model_dir, rows = clone
    out = tmp_path / "out"
    assert _eval(model_dir, root, images, out, "--tie-rule", "vlm2vec") == 0
    score = json.loads((out / "mmeb" / "image" / f"{REPEATED_DATASET}_score.json").read_text())
    n_correct, n = _argmax_rescore(model_dir, tmp_path / "cache", images, rows)
    assert (score["num_correct"], score["num_pred"], score["num_data"]) == (n_correct, n, n)
    assert score["acc"] == n_correct / n and score["hit@1"] == n_correct / n  # exactly, as V1 writes it
    assert 0 < n_correct  # the repeated positives tie with themselves and count as found
    results = json.loads((out / "results.json").read_text())
    (d,) = [d for d in results["datasets"] if d["name"] == REPEATED_DATASET]
    assert d["notes"] == {REPEATED_POSITIVE: 3} and d["num_skipped"] == 0
    # --format mmeb takes VLM2Vec's rule by default: the same file.
    assert _eval(model_dir, root, images, tmp_path / "default" / "out") == 0
    again = json.loads((tmp_path / "default" / "out" / "mmeb" / "image" / f"{REPEATED_DATASET}_score.json").read_text())
    assert again == score
    # The pessimistic rule refuses such rows (each would tie against itself), naming a flag eval has.
    refused = r"(?s)is repeated as candidate 2.*--tie-rule vlm2vec.*--skip-invalid to `tsembed eval`"
    with pytest.raises(DataError, match=refused):
        evaluate(toy_model(), root, [REPEATED_DATASET], image_root=images, progress=False)


def test_argmax_rescoring_matches_on_every_dataset_including_collapsed_ties(clone, tmp_path):
    """The toy model maps ImageNet-1K's queries (one text, four images) onto one point: every score ties."""
    root, images, model_dir, _ = clone
    out = tmp_path / "out"
    assert _eval(model_dir, root, images, out) == 0
    import pyarrow.parquet as pq

    for name in ("ImageNet-1K", "OK-VQA", REPEATED_DATASET):
        rows = pq.read_table(root / name / "test-00000-of-00001.parquet").to_pylist()
        score = json.loads((out / "mmeb" / "image" / f"{name}_score.json").read_text())
        n_correct, n = _argmax_rescore(model_dir, tmp_path / "cache", images, rows)
        assert score["acc"] == n_correct / n, name


def test_v2_score_and_pred_files_in_v2_layout_with_metadata(clone, tmp_path):
    root, images, model_dir, rows = clone
    out = tmp_path / "out"
    assert _eval(model_dir, root, images, out, "--model-size", "9M parameters", "--release-date", "2026-12-01",
                 "--model-url", "https://example.org/toy", "--max-length-tokens", "64") == 0
    exp = out / "mmeb"
    assert default_model_name(model_dir) == "toy-run"  # runs/toy-run/model is not reported as "model"
    report = json.loads((exp / "toy-run.json").read_text())
    meta = report["metadata"]
    assert meta["model_name"] == "toy-run" and meta["model_backbone"] == "toy"
    assert meta["model_size"] == "9M parameters" and meta["model_release_date"] == "2026-12-01"
    assert meta["url"] == "https://example.org/toy" and meta["max_length_tokens"] == 64
    assert meta["embedding_dimension"] == 32 and meta["data_source"] == "Self-Reported"
    # What V2's report_score_v2.py reads: <exp>/image/<Dataset>_score.json with hit@1.
    for name in ("ImageNet-1K", "OK-VQA", REPEATED_DATASET):
        score = json.loads((exp / "image" / f"{name}_score.json").read_text())
        assert report["metrics"]["image"][name] == score
        for metric in ("hit", "ndcg_linear", "ndcg_exponential", "precision", "recall", "f1", "map", "mrr"):
            for k in (1, 5, 10):
                assert isinstance(score[f"{metric}@{k}"], float), (name, metric, k)
        assert type(score["acc"]) is float and score["acc"] == score["num_correct"] / score["num_pred"]
        preds = [json.loads(line) for line in (exp / "image" / f"{name}_pred.jsonl").read_text().splitlines()]
        assert len(preds) == score["num_pred"] and set(preds[0]) == {"prediction", "label", "rel_scores"}
        assert v2_metrics(preds) == {k: v for k, v in score.items() if k not in ("acc", "num_correct", "num_pred",
                                                                                  "num_data")}
    # V2's metrics live in results.json too, so the score files can be written again from it alone.
    saved = {d["name"]: d for d in json.loads((out / "results.json").read_text())["datasets"]}
    assert saved["OK-VQA"]["ranking"]["mrr@10"] == report["metrics"]["image"]["OK-VQA"]["mrr@10"]
    preds = [json.loads(line) for line in (exp / "image" / f"{REPEATED_DATASET}_pred.jsonl").read_text().splitlines()]
    assert [p["label"] for p in preds] == [[r["tgt_text"][0]] for r in rows]
    assert sorted(preds[0]["prediction"]) == sorted(rows[0]["tgt_text"])
    assert main(["eval", "--model", str(model_dir), "--suite", str(root), "--format", "mmeb", "--tie-rule", "x",
                 "--no-progress", "--no-cache", "--out", str(tmp_path / "x")]) != 0


def test_v2_metrics_hand_case():
    preds = [{"prediction": ["a", "b", "c"], "label": ["a"]}, {"prediction": ["b", "a", "c"], "label": ["a"]},
             {"prediction": ["b", "c", "a"], "label": ["a"]}]
    m = v2_metrics(preds, ks=(1, 5))
    assert m["hit@1"] == pytest.approx(1 / 3) and m["hit@5"] == 1.0
    assert m["mrr@5"] == pytest.approx((1 + 1 / 2 + 1 / 3) / 3) and m["map@5"] == m["mrr@5"]
    assert m["precision@5"] == pytest.approx(1 / 5) and m["recall@1"] == pytest.approx(1 / 3)
    assert m["ndcg_linear@5"] == pytest.approx((1 + 1 / math.log2(3) + 1 / math.log2(4)) / 3)


def test_eval_row_with_an_image_and_no_placeholder_is_read_as_vlm2vec_reads_it(tmp_path, caplog):
    root, images = tmp_path / "MMEB-eval", tmp_path / "images"
    rows = write_placeholderless_eval(root, images)
    with caplog.at_level("INFO", logger="tsembed.data.problems"):
        results = evaluate(toy_model(), root, image_root=images, progress=False)
    (d,) = results.datasets
    assert d.num_rows == len(rows) and d.num_skipped == 0
    assert list(d.notes.values()) == [len(rows)] and "<|image_1|>" in next(iter(d.notes))
    assert f"{len(rows)} of {len(rows)} rows with an image without a <|image_1|> placeholder" in caplog.text
    assert "row(s) with an image without" in results.to_markdown()
    assert main(["data", "validate", str(root / "VisDial"), "--image-root", str(images)]) == 0

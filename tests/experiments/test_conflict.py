"""Task-gradient conflict: the cosine math on hand cases, the gradients against a hand-written InfoNCE."""

import json
import random

import pytest
import torch
import yaml

from tests.toy_backbone import ToyBackbone
from tests.training.helpers import WORDS, toy_model
from tsembed.backbones import BACKBONES
from tsembed.cli import main
from tsembed.experiments.conflict import (
    ConflictReport,
    cosine_matrix,
    dataset_gradients,
    group_cosines,
    split_half_cosine,
)
from tsembed.training.data import TrainingData, TrainSource
from tsembed.training.losses import info_nce
from tsembed.training.objective import LossConfig


def test_cosines_and_group_means_by_hand():
    grads = {"a": torch.tensor([1.0, 0.0]), "b": torch.tensor([0.0, 2.0]), "c": torch.tensor([-3.0, 0.0])}
    m = cosine_matrix(grads)
    torch.testing.assert_close(m, torch.tensor([[1.0, 0, -1], [0, 1, 0], [-1, 0, 1]]))
    s = group_cosines(["a", "b", "c"], m, {"a": "X", "b": "X", "c": "Y"})
    assert s["pairs"] == pytest.approx({"X|X": 0.0, "X|Y": -0.5})
    assert s["within_mean"] == pytest.approx(0.0) and s["across_mean"] == pytest.approx(-0.5)
    assert s["across_min"] == pytest.approx(-1.0) and s["across_negative_fraction"] == pytest.approx(0.5)
    assert split_half_cosine(torch.tensor([[1.0, 0.0], [0.0, 1.0]])) == pytest.approx(0.0)
    assert split_half_cosine(torch.tensor([[1.0, 1.0], [2.0, 2.0], [5.0, 0.0]])) == pytest.approx(1.0)
    assert split_half_cosine(torch.ones(1, 3)) is None
    assert group_cosines(["a", "c"], cosine_matrix({"a": grads["a"], "c": grads["c"]}),
                         {"a": "X", "c": "Y"})["within_mean"] is None


def test_declared_condition_pairs_are_reported_with_their_minimum():
    grads = {"a": torch.tensor([1.0, 0.0]), "b": torch.tensor([-1.0, 1.0]), "c": torch.tensor([0.0, 1.0])}
    report = ConflictReport(list(grads), {n: n for n in grads}, cosine_matrix(grads), {}, 1, 2, {},
                            pairs={"ab": ("a", "b"), "bc": ("b", "c"), "gone": ("a", "z")})
    out = report.to_dict()
    assert out["pairs"] == pytest.approx({"ab": -0.7071, "bc": 0.7071}, abs=1e-4)
    assert out["pair_cosine_min"] == pytest.approx(-0.7071, abs=1e-4)
    assert "paired conditions" in report.markdown() and "ab -0.707" in report.markdown()


@pytest.fixture(scope="module")
def two_datasets(tmp_path_factory):
    root = tmp_path_factory.mktemp("conflict")
    sources = []
    for name, labels in (("colors", WORDS[:3]), ("animals", WORDS[3:6])):
        path = root / f"{name}.jsonl"
        rows = [{"qry": f"which {name} {WORDS[6 + i % 12]} {labels[i % 3]}", "qry_image_path": "",
                 "pos_text": labels[i % 3], "pos_image_path": "", "neg_text": "", "neg_image_path": ""}
                for i in range(12)]
        path.write_text("".join(json.dumps(r) + "\n" for r in rows))
        sources.append(TrainSource(name, path))
    return sources


def test_gradients_equal_a_hand_written_infonce(two_datasets):
    """Plain InfoNCE (guards off) over in-batch targets, on the same sampled batches."""
    data = TrainingData(two_datasets)
    loss = LossConfig(tau=0.1, false_negative_margin=None, mask_same_content=False)
    model = toy_model(level="sequence")
    got = dataset_gradients(model, data, loss, batches=2, batch_size=4, hard_negatives=False, seed=3)
    assert model.training  # restored

    params = [p for p in model.parameters() if p.requires_grad]
    rng = random.Random(3)
    model.eval()
    for d, rows in sorted(data.by_dataset.items()):
        per_batch = []
        for _ in range(2):
            picked = rng.sample(rows, 4)
            q = model(**model.prepare([data.query_input(i) for i in picked])).embeddings
            t = model(**model.prepare([data.targets[data.positive_ids[i]] for i in picked])).embeddings
            grads = torch.autograd.grad(info_nce(q @ t.T, torch.arange(4), 0.1), params, allow_unused=True)
            flat = [(g if g is not None else torch.zeros_like(p)).flatten() for g, p in zip(grads, params, strict=True)]
            per_batch.append(torch.cat(flat))
        name = data.sources[d].name
        assert all(g.norm() > 0 for g in per_batch)
        torch.testing.assert_close(got[name], torch.stack(per_batch), rtol=1e-4, atol=1e-6)


def test_cli_writes_the_report(two_datasets, tmp_path, monkeypatch):
    monkeypatch.setitem(BACKBONES, ToyBackbone.kind, ToyBackbone)
    config = {"data": {"train_files": [{"name": s.name, "path": str(s.path)} for s in two_datasets],
                       "batch_size": 4},
              "model": {"backbone": {"kind": "toy"}, "moe": {"num_experts": 2, "rank": 2}},
              "run": {"output_dir": str(tmp_path / "run")}}
    path = tmp_path / "cfg.yaml"
    path.write_text(yaml.safe_dump(config))
    assert main(["task-conflict", "--config", str(path), "--batches", "1", "--out", str(tmp_path / "out")]) == 0
    report = json.loads((tmp_path / "out" / "conflict.json").read_text())
    assert report["datasets"] == ["colors", "animals"] and len(report["cosines"]) == 2
    assert report["cosines"][0][0] == pytest.approx(1.0) and report["split_half"]["colors"] is None
    assert -1.0 <= report["summary"]["across_mean"] <= 1.0
    assert "| animals|colors |" in (tmp_path / "out" / "conflict.md").read_text()

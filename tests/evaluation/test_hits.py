"""Per-query hits: written by every evaluation beside results.json, read back only by tsembed.evaluation.hits."""

import json

import numpy as np
import pytest
import torch

from tsembed.errors import DataError
from tsembed.evaluation import evaluate, score_rows
from tsembed.evaluation.hits import HITS, DatasetHits, load_hits, write_hits

from .helpers import TOY_DATASETS, toy_model, write_toy_suite


def test_row_hits_follow_the_tie_rule():
    emb = torch.tensor([[1.0, 0.0], [0.0, 1.0], [0.9, 0.1], [0.1, 0.9], [0.6, 0.6]])
    cands = torch.tensor([[2, 3, 4], [2, 4, 0], [2, 2, 3]])  # row 2: a distractor ties with the positive
    valid = torch.ones(3, 3, dtype=torch.bool)
    metrics, _, hits = score_rows(emb, torch.tensor([0, 1, 0]), cands, valid)
    assert hits.tolist() == [1, 0, 0] and metrics["hit@1"] == pytest.approx(hits.mean())


def test_round_trip_and_errors(tmp_path):
    path = write_hits(tmp_path, {"a": DatasetHits(np.array([1, 0, 1]), ("e1", "e1", "e2")), "b": [0, 0]})
    assert path == tmp_path / HITS and not list(tmp_path.glob(".*.tmp"))
    loaded = load_hits(tmp_path)
    assert loaded["a"].hits.tolist() == [1, 0, 1] and loaded["a"].clusters == ("e1", "e1", "e2")
    assert loaded["b"].clusters is None and len(loaded["b"]) == 2
    with pytest.raises(DataError, match="0 and 1"):
        DatasetHits(np.array([0, 2]))
    with pytest.raises(DataError, match="2 cluster ids for 3"):
        DatasetHits(np.array([0, 1, 1]), ("x", "y"))
    (tmp_path / "bad").mkdir()
    (tmp_path / "bad" / HITS).write_text(json.dumps({"datasets": {}}))
    with pytest.raises(DataError, match="not a tsembed-hits file"):
        load_hits(tmp_path / "bad")
    with pytest.raises(DataError, match="cannot read"):
        load_hits(tmp_path / "missing")


def test_evaluation_writes_hits_beside_results(tmp_path):
    suite = write_toy_suite(tmp_path / "suite")
    results = evaluate(toy_model(), suite, progress=False)
    json_path, _ = results.save(tmp_path / "run")
    hits = load_hits(json_path.parent)
    assert list(hits) == list(TOY_DATASETS)
    for d in results.datasets:
        assert len(hits[d.name]) == d.num_rows
        assert hits[d.name].hits.mean() == pytest.approx(d.metrics["hit@1"])
    assert "hits" not in json.loads(json_path.read_text())  # results.json stays as it was

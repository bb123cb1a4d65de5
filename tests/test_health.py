import math

import numpy as np
import pytest
import torch

from tsembed.health import (
    COLLAPSE_COSINE,
    DAGGER,
    collapsed_datasets,
    is_collapsed,
    mark,
    mean_pairwise_cosine,
    run_checked,
    run_collapsed,
)


def _pair_loop(x: np.ndarray) -> float:
    unit = x / np.linalg.norm(x, axis=1, keepdims=True)
    pairs = [float(unit[i] @ unit[j]) for i in range(len(x)) for j in range(len(x)) if i != j]
    return sum(pairs) / len(pairs)


def test_mean_pairwise_cosine_matches_the_pair_loop_on_tensors_and_arrays():
    x = np.random.default_rng(0).normal(size=(9, 4)) + 0.5
    assert mean_pairwise_cosine(x) == pytest.approx(_pair_loop(x), abs=1e-9)
    assert mean_pairwise_cosine(torch.tensor(x, dtype=torch.float32)) == pytest.approx(_pair_loop(x), abs=1e-6)
    assert mean_pairwise_cosine(torch.tensor([[1.0, 0.0], [-1.0, 0.0]])) == pytest.approx(-1.0)
    assert mean_pairwise_cosine(np.ones((5, 3)) * 3) == pytest.approx(1.0)
    assert math.isnan(mean_pairwise_cosine(np.ones((1, 3))))


def test_collapsed_is_a_threshold_on_the_query_cosine():
    assert is_collapsed(1.0) and is_collapsed(COLLAPSE_COSINE) and not is_collapsed(0.98)
    assert not is_collapsed(None) and not is_collapsed(float("nan"))
    assert is_collapsed(0.5, threshold=0.4)
    assert collapsed_datasets({"A": 0.2, "B": 0.999, "C": None, "D": 1.0}) == ["B", "D"]


def test_run_records_and_marks():
    assert run_collapsed({"collapsed": True}) and run_collapsed({"collapsed_datasets": ["A"]})
    assert not run_collapsed({"variant": "lora"}) and not run_collapsed({"collapsed": False, "collapsed_datasets": []})
    assert mark("lora80", True) == f"lora80 {DAGGER}" and mark("lora80", False) == "lora80"
    assert run_checked({"collapsed": False}) and run_checked({"query_cosine": {}}) and not run_checked({"seed": 0})

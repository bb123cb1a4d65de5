"""Entropy and NMI against hand-computed values and scikit-learn."""

import math

import numpy as np
import pytest

from tsembed.evaluation.information import entropy, mutual_information, normalized_mutual_info


def test_nmi_hand_case():
    a, b = [0, 0, 0, 1], ["x", "x", "y", "y"]
    mi = 0.5 * math.log(4 / 3) + 0.25 * math.log(2 / 3) + 0.25 * math.log(2)
    h_a, h_b = -(0.75 * math.log(0.75) + 0.25 * math.log(0.25)), math.log(2)
    assert mutual_information(a, b) == pytest.approx(mi)
    assert entropy(a) == pytest.approx(h_a)
    assert normalized_mutual_info(a, b) == pytest.approx(mi / ((h_a + h_b) / 2))


def test_nmi_limit_cases():
    assert normalized_mutual_info(["a", "a", "b", "b"], [3, 3, 1, 1]) == pytest.approx(1.0)  # relabelled
    assert normalized_mutual_info([0, 0, 1, 1], [0, 1, 0, 1]) == 0.0  # independent
    assert normalized_mutual_info([0, 0, 1, 1], [2, 2, 2, 2]) == 0.0  # a collapsed router tells nothing
    assert normalized_mutual_info([5, 5], [1, 1]) == 1.0  # sklearn's convention for two constant labellings


def test_nmi_matches_sklearn():
    metrics = pytest.importorskip("sklearn.metrics")
    rng = np.random.default_rng(0)
    for _ in range(100):
        n = int(rng.integers(1, 60))
        a = rng.integers(0, int(rng.integers(1, 6)), size=n)
        b = rng.integers(0, int(rng.integers(1, 6)), size=n)
        assert normalized_mutual_info(a, b) == pytest.approx(metrics.normalized_mutual_info_score(a, b), abs=1e-12)

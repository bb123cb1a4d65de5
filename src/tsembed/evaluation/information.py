"""Entropy and normalised mutual information of discrete labels, for routing analysis (pure numpy).

NMI follows scikit-learn's ``normalized_mutual_info_score`` with its default arithmetic-mean
normalisation, NMI = MI(a, b) / ((H(a) + H(b)) / 2), natural logarithms, and the same limit cases:
two constant labellings give 1.0, and MI = 0 otherwise gives 0.0.
"""

from __future__ import annotations

from collections.abc import Sequence

import numpy as np


def _codes(labels: Sequence | np.ndarray) -> np.ndarray:
    return np.unique(np.asarray(labels), return_inverse=True)[1].reshape(-1)


def entropy(labels: Sequence | np.ndarray) -> float:
    """Shannon entropy (nats) of the empirical distribution of ``labels``."""
    counts = np.bincount(_codes(labels)) if len(labels) else np.zeros(0)
    p = counts[counts > 0] / max(counts.sum(), 1)
    return float(-(p * np.log(p)).sum())


def distribution_entropy(probs: np.ndarray, axis: int = -1) -> np.ndarray:
    """Entropy (nats) of probability vectors along ``axis``; 0 · log 0 counts as 0."""
    p = np.clip(probs, 0.0, None)
    p = p / np.clip(p.sum(axis=axis, keepdims=True), 1e-12, None)
    logs = np.log(np.where(p > 0, p, 1.0))
    return -(p * logs).sum(axis=axis)


def mutual_information(a: Sequence | np.ndarray, b: Sequence | np.ndarray) -> float:
    """MI(a; b) in nats from the contingency table of two labellings of the same items."""
    ca, cb = _codes(a), _codes(b)
    if ca.shape != cb.shape:
        raise ValueError(f"labellings differ in length: {ca.shape[0]} and {cb.shape[0]}")
    n = ca.shape[0]
    if n == 0:
        return 0.0
    table = np.zeros((ca.max() + 1, cb.max() + 1))
    np.add.at(table, (ca, cb), 1.0)
    pab = table / n  # [A, B]
    pa, pb = pab.sum(axis=1, keepdims=True), pab.sum(axis=0, keepdims=True)
    nz = pab > 0
    return float(max((pab[nz] * np.log(pab[nz] / (pa @ pb)[nz])).sum(), 0.0))


def normalized_mutual_info(a: Sequence | np.ndarray, b: Sequence | np.ndarray) -> float:
    """NMI with arithmetic-mean normalisation, in [0, 1] (see the module docstring for limit cases)."""
    ka, kb = len(np.unique(np.asarray(a))), len(np.unique(np.asarray(b)))
    if ka == kb == 1 or ka == kb == 0:
        return 1.0
    mi = mutual_information(a, b)
    if mi <= 0.0:
        return 0.0
    return float(mi / max((entropy(a) + entropy(b)) / 2.0, np.finfo(float).eps))

"""The one definition of a collapsed embedding space, shared by training, evaluation and every summary.

Contrastive training has a stationary point where every query of a task gets the same embedding: all its scores
tie, the loss sits at log(M) for M targets and the gradient vanishes (docs/results/conflict/README.md §9–§10). A
dataset has *collapsed* when the mean pairwise cosine of its query embeddings is at or above ``COLLAPSE_COSINE``;
a run has collapsed when any of its eval datasets has. A collapsed run is marked with ``DAGGER`` in every table
and left out of every mean and paired difference, with the count of such runs reported beside them: a comparison
against a collapsed model means nothing, and it must never be averaged in silently.

Leaf module: imports nothing of tsembed, so training, evaluation and experiments can all use it.
"""

from __future__ import annotations

import math
from collections.abc import Mapping
from typing import Any

import torch

#: Mean pairwise query cosine at or above which a dataset counts as collapsed (untrained models sit near 0.6).
COLLAPSE_COSINE = 0.99
#: The mark of a collapsed run (or dataset) in tables.
DAGGER = "†"
#: Footnote for tables that carry the mark.
DAGGER_NOTE = (f"{DAGGER} collapsed: the query embeddings of at least one dataset fell onto one point (mean pairwise "
               f"cosine ≥ {COLLAPSE_COSINE}); such runs are left out of every mean and paired difference.")


def mean_pairwise_cosine(embeddings: Any) -> float:
    """Mean cosine over the distinct pairs (i ≠ j) of the rows of ``embeddings`` [N, D] (tensor or array).

    1.0 when every row points the same way; NaN with fewer than two rows. Computed as
    (|Σ u_i|² − Σ |u_i|²) / (N (N − 1)) over the unit rows u_i, so it is O(N·D) (no N × N matrix); float64.
    Zero rows count as cosine 0 with everything.
    """
    x = torch.as_tensor(embeddings).detach()
    n = x.shape[0]
    if n < 2:
        return float("nan")
    with torch.no_grad():
        unit = torch.nn.functional.normalize(x.to(torch.float64).reshape(n, -1), dim=-1)
        total = unit.sum(0).pow(2).sum() - unit.pow(2).sum()
        return float(total / (n * (n - 1)))


def is_collapsed(query_cosine: float | None, threshold: float = COLLAPSE_COSINE) -> bool:
    """True when a mean pairwise query cosine says the dataset collapsed (None or NaN: unknown, not collapsed)."""
    return query_cosine is not None and not math.isnan(query_cosine) and query_cosine >= threshold


def collapsed_datasets(query_cosines: Mapping[str, float | None], threshold: float = COLLAPSE_COSINE) -> list[str]:
    """The datasets of ``{name: mean pairwise query cosine}`` that collapsed, in the mapping's order."""
    return [name for name, cosine in query_cosines.items() if is_collapsed(cosine, threshold)]


def run_collapsed(record: Mapping[str, Any]) -> bool:
    """Whether a run record (``results.json`` of a run, an ablation ``per_seed`` entry) is marked collapsed.

    Records written before the mark existed have no ``collapsed`` key and count as not collapsed.
    """
    return bool(record.get("collapsed")) or bool(record.get("collapsed_datasets"))


def run_checked(record: Mapping[str, Any]) -> bool:
    """Whether a run record carries the check at all (older records have neither key): an unchecked run is
    counted apart (``unchecked_runs``), never silently taken as healthy."""
    return "collapsed" in record or "query_cosine" in record


def mark(label: str, collapsed: bool) -> str:
    """``label`` with the dagger when ``collapsed``."""
    return f"{label} {DAGGER}" if collapsed else label

"""Collapse watch: warns when a dataset's query embeddings have fallen onto one point.

Contrastive training has a stationary point where every query of a task gets the same embedding: all its
scores tie, the loss sits at log(M) for M targets, and the gradient vanishes, so the run never leaves it on its
own. A conditional task whose labelled hard negative starts far above its positive (docs/results/conflict §9)
reaches it within tens of steps; the summed loss hides it behind the other datasets. The objective logs the mean
pairwise cosine of each batch's queries (``query_cosine``, ``tsembed.health``); this turns a streak of near-1
values into one warning, and the trainer records the datasets it flagged with the model (``collapsed_datasets``).
"""

from __future__ import annotations

import logging
import math
from dataclasses import dataclass, field
from typing import Any

from tsembed.health import COLLAPSE_COSINE, is_collapsed

logger = logging.getLogger(__name__)


@dataclass
class CollapseWatch:
    """Per-dataset streaks of collapsed batches; one warning per dataset per run.

    threshold: mean pairwise query cosine at or above which a batch counts as collapsed.
    patience: consecutive collapsed batches of one dataset before the warning.
    """

    threshold: float = COLLAPSE_COSINE
    patience: int = 5
    streaks: dict[str, int] = field(default_factory=dict)
    warned: set[str] = field(default_factory=set)

    def update(self, dataset: str, query_cosine: float | None, loss: float, num_targets: int, step: int) -> bool:
        """Record one batch of ``dataset``; True exactly when this batch triggers the warning."""
        if query_cosine is None or dataset == "mixed":
            return False
        collapsed = is_collapsed(query_cosine, self.threshold)
        self.streaks[dataset] = self.streaks.get(dataset, 0) + 1 if collapsed else 0
        if self.streaks[dataset] < self.patience or dataset in self.warned:
            return False
        self.warned.add(dataset)
        logger.warning(
            "step %d: the query embeddings of dataset %s have collapsed (mean pairwise cosine >= %.2f for %d of its "
            "batches in a row; loss %.3f vs log(%d targets) = %.3f): its scores tie and its gradient vanishes. "
            "See docs/results/conflict/README.md §9 for causes and levers.",
            step, dataset, self.threshold, self.patience, loss, num_targets, math.log(max(num_targets, 1)),
        )
        return True

    @property
    def flagged(self) -> list[str]:
        """The datasets the watch has warned about, sorted."""
        return sorted(self.warned)

    def state_dict(self) -> dict[str, Any]:
        return {"streaks": dict(self.streaks), "warned": sorted(self.warned)}

    def load_state_dict(self, state: dict[str, Any]) -> None:
        self.streaks = dict(state.get("streaks", {}))
        self.warned = set(state.get("warned", ()))

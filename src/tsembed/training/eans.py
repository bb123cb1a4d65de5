"""Expert-Aware Negative Sampling (docs/design.md §3.5): routing signatures choose and weight negatives."""

from __future__ import annotations

import math
from collections.abc import Callable
from dataclasses import dataclass

import torch

from tsembed.errors import ConfigError
from tsembed.training.losses import eans_select, eans_weights


@dataclass
class EANSConfig:
    """EANS settings. ``mode``: off | weight (β) | select (k) | mine (m extra negatives per query) |
    hardness (β_h: negatives weighted by their embedding score, LLaVE's hardness weighting, the control that
    asks whether routing similarity adds anything over the similarity the loss already computes)."""

    mode: str = "weight"
    beta: float = 5.0
    select_k: int = 8
    mine_m: int = 2
    hardness_beta: float = 9.0  # LLaVE's α for cosine scores

    def __post_init__(self) -> None:
        if self.mode not in EANS_MODES:
            raise ConfigError(f"eans.mode must be one of {sorted(EANS_MODES)}, got {self.mode!r}")
        for name in ("beta", "hardness_beta"):
            value = getattr(self, name)
            if isinstance(value, bool) or not isinstance(value, int | float) or not math.isfinite(value) or value < 0:
                raise ConfigError(f"eans.{name} must be a finite number >= 0, got {value!r}")
        if self.select_k < 1:
            raise ConfigError(f"eans.select_k must be >= 1, got {self.select_k!r}")
        if self.mine_m < 1:
            raise ConfigError(f"eans.mine_m must be >= 1, got {self.mine_m!r}")

    @property
    def spec(self) -> EANSMode:
        """The registry entry of ``mode``: what the objective, the trainer and the ablation dispatch on."""
        return EANS_MODES[self.mode]


@dataclass(frozen=True)
class EANSMode:
    """One way of weighting negatives: ``weights(affinity, scores, negatives, config, keep)`` -> [N, M].

    Attributes:
        uses_routing: Needs routing signatures (the affinity); False for modes any adapter can use.
        reweights: The loss differs from plain InfoNCE over the same negatives, so the unweighted InfoNCE
            is logged beside it (comparable across stages and variants).
        mines: Adds negatives to the batch from the signature bank.
        active: Stage 2 changes something; False (``off``) keeps a run in stage 1 throughout.
    """

    weights: Callable[[torch.Tensor, torch.Tensor, torch.Tensor, EANSConfig, torch.Tensor | None], torch.Tensor]
    uses_routing: bool
    reweights: bool
    mines: bool = False
    active: bool = True

    def negative_weights(self, affinity: torch.Tensor, scores: torch.Tensor, negatives: torch.Tensor,
                         config: EANSConfig, keep: torch.Tensor | None) -> torch.Tensor:
        """Weights w [N, M] for the loss; ``negatives`` already excludes positives and false negatives.

        ``affinity`` is the routing affinity, ``scores`` the embedding similarities (both treated as constants).
        """
        return self.weights(affinity, scores.detach(), negatives, config, keep)


def _uniform(affinity: torch.Tensor, scores: torch.Tensor, negatives: torch.Tensor, config: EANSConfig,
             keep: torch.Tensor | None) -> torch.Tensor:
    return negatives.to(affinity.dtype)


#: Plain InfoNCE: the ``off`` mode, and what every mode computes in stage 1.
PLAIN_INFONCE = EANSMode(_uniform, uses_routing=False, reweights=False, active=False)

#: The one registry of EANS modes; config validation, the objective, the trainer and the ablation dispatch
#: through it.
EANS_MODES: dict[str, EANSMode] = {
    "off": PLAIN_INFONCE,
    "weight": EANSMode(lambda a, s, n, c, k: eans_weights(a, n, c.beta), uses_routing=True, reweights=True),
    "select": EANSMode(lambda a, s, n, c, k: eans_select(a, n, c.select_k, keep=k), uses_routing=True,
                       reweights=True),
    # the effect of mine is the extra negatives it puts in the batch; their weights are plain InfoNCE's
    "mine": EANSMode(_uniform, uses_routing=True, reweights=False, mines=True),
    # LLaVE: w ∝ exp(β_h · sg(score)), normalised like `weight` so the mean weight is 1
    "hardness": EANSMode(lambda a, s, n, c, k: eans_weights(s, n, c.hardness_beta), uses_routing=False,
                         reweights=True),
}


class SignatureBank:
    """Latest routing signature of every training item, filled for free from normal forward passes.

    Items are training targets (by content id) and queries (by row id), in two banks of one class.
    ``drift()`` is the mean L2 change of re-banked signatures since the last call: the routing-stability
    signal of the two-stage switch.
    """

    def __init__(self, num_items: int, dim: int) -> None:
        self.signatures = torch.zeros(num_items, dim)
        self.filled = torch.zeros(num_items, dtype=torch.bool)
        self._change_sum = 0.0
        self._change_count = 0

    def update(self, ids: torch.Tensor, signatures: torch.Tensor) -> None:
        ids = ids.cpu().long()
        new = signatures.detach().float().cpu()
        # last write wins for an id that appears twice in one batch (e.g. a label shared by two queries)
        seen_before = self.filled[ids]
        if seen_before.any():
            change = (new[seen_before] - self.signatures[ids[seen_before]]).norm(dim=-1)
            self._change_sum += float(change.sum())
            self._change_count += int(change.numel())
        self.signatures[ids] = new
        self.filled[ids] = True

    def drift(self) -> float | None:
        """Mean signature change since the previous call (None when nothing was re-banked)."""
        if self._change_count == 0:
            return None
        value = self._change_sum / self._change_count
        self._change_sum, self._change_count = 0.0, 0
        return value

    def mine(self, query_signatures: torch.Tensor, exclude: list[set[int]], m: int) -> list[list[int]]:
        """Per query, the ids of the m filled items closest in routing signature, minus ``exclude[i]``."""
        if not bool(self.filled.any()):
            return [[] for _ in exclude]
        candidates = torch.nonzero(self.filled).squeeze(1)  # [C]
        affinity = query_signatures.float().cpu() @ self.signatures[candidates].T  # [N, C]
        take = min(candidates.numel(), m + max((len(e) for e in exclude), default=0))
        order = affinity.topk(take, dim=-1).indices  # [N, take]
        mined = []
        for i, row in enumerate(order.tolist()):
            picked = [int(candidates[j]) for j in row if int(candidates[j]) not in exclude[i]]
            mined.append(picked[:m])
        return mined

    def state_dict(self) -> dict[str, torch.Tensor]:
        return {"signatures": self.signatures, "filled": self.filled}

    def load_state_dict(self, state: dict[str, torch.Tensor]) -> None:
        if state["signatures"].shape != self.signatures.shape:
            raise ConfigError(
                f"signature bank in checkpoint has shape {tuple(state['signatures'].shape)}, "
                f"expected {tuple(self.signatures.shape)} (different data or adapters?)"
            )
        self.signatures.copy_(state["signatures"])
        self.filled.copy_(state["filled"])

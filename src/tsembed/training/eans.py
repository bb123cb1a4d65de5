"""Expert-Aware Negative Sampling (DESIGN §3.5): routing signatures choose and weight negatives."""

from __future__ import annotations

from dataclasses import dataclass

import torch

from tsembed.errors import ConfigError
from tsembed.training.losses import eans_select, eans_weights

EANS_MODES = ("off", "weight", "select", "mine")


@dataclass
class EANSConfig:
    """EANS settings. ``mode``: off | weight (β) | select (k) | mine (m extra negatives per query)."""

    mode: str = "weight"
    beta: float = 5.0
    select_k: int = 8
    mine_m: int = 2

    def __post_init__(self) -> None:
        if self.mode not in EANS_MODES:
            raise ConfigError(f"eans.mode must be one of {EANS_MODES}, got {self.mode!r}")
        if self.beta < 0:
            raise ConfigError(f"eans.beta must be >= 0, got {self.beta!r}")
        if self.select_k < 1:
            raise ConfigError(f"eans.select_k must be >= 1, got {self.select_k!r}")
        if self.mine_m < 1:
            raise ConfigError(f"eans.mine_m must be >= 1, got {self.mine_m!r}")


def negative_weights(
    mode: str, affinity: torch.Tensor, negatives: torch.Tensor, config: EANSConfig, keep: torch.Tensor | None
) -> torch.Tensor:
    """Weights w [N, M] for the loss; ``negatives`` already excludes positives and false negatives."""
    if mode == "weight":
        return eans_weights(affinity, negatives, config.beta)
    if mode == "select":
        return eans_select(affinity, negatives, config.select_k, keep=keep)
    # off, and mine (whose effect is the extra negatives in the batch): plain InfoNCE weights
    return negatives.to(affinity.dtype)


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

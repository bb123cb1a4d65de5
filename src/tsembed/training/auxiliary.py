"""A step's auxiliary losses, weighted and added to the contrastive loss in one place (docs/design.md §3.2, §3.4).

Two kinds, told apart by where their gradient comes from under GradCache:

- **embedding terms** (uniformity) are functions of the embeddings, so the objective adds them to its loss and
  they reach the model through the cached embedding gradients, like InfoNCE;
- **routing terms** (load balance, router z-loss) are functions of the routing statistics, which pass 1 sums over
  chunks and ranks; each chunk's re-run back-propagates its own share of them.

``contrastive_step`` asks this module for every total it reports or differentiates, so the full-batch loss,
GradCache's per-chunk surrogates and the logged total are one formula.
"""

from __future__ import annotations

from dataclasses import dataclass

import torch

from tsembed.moe import RoutingStats, aux_losses
from tsembed.training.loss_config import LossConfig
from tsembed.training.losses import uniformity


def add_embedding_terms(loss: torch.Tensor, queries: torch.Tensor, targets: torch.Tensor,
                        config: LossConfig) -> tuple[torch.Tensor, dict[str, float]]:
    """``loss`` + λ_unif · uniformity (mean of this rank's queries' and targets'), and its log; ``loss`` itself
    when the weight is 0."""
    if not config.uniformity_weight:
        return loss, {}
    spread = (uniformity(queries) + uniformity(targets)) / 2
    return loss + config.uniformity_weight * spread, {"uniformity": float(spread.detach())}


@dataclass
class RoutingTerms:
    """Load balance and router z-loss summed over the adapted layers (zero for a model without adapters)."""

    load_balance: torch.Tensor
    z_loss: torch.Tensor

    @classmethod
    def of(cls, stats: list[dict[str, RoutingStats]], shares: dict[str, torch.Tensor], units: dict[str, int],
           device: torch.device) -> RoutingTerms:
        """The terms of these forwards' statistics (``tsembed.moe.aux_losses``); zero when there are none."""
        if not shares:
            zero = torch.zeros((), device=device)
            return cls(zero, zero)
        return cls(*aux_losses(stats, shares, units))

    def weighted(self, config: LossConfig, ranks: int = 1) -> torch.Tensor:
        """λ_bal · L_bal + λ_z · L_z, times ``ranks`` when it is back-propagated: DDP averages gradients over ranks,
        while these terms come from statistics summed over all ranks, so each rank's share is ``ranks`` × its own."""
        return ranks * (config.load_balance_weight * self.load_balance + config.z_loss_weight * self.z_loss)


def step_total(contrastive: torch.Tensor, routing: RoutingTerms, config: LossConfig, ranks: int = 1) -> torch.Tensor:
    """The step's loss: the objective's (InfoNCE + embedding terms) plus the weighted routing terms."""
    return contrastive + routing.weighted(config, ranks)

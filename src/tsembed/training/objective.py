"""The contrastive objective: InfoNCE over all ranks' targets + false-negative guard + EANS (docs/design.md §3.4–§3.5).

Embeds nothing: it takes embeddings and routing signatures (from ``training/step.py``), gathers the
targets of every rank with gradient, and calls the pure functions of ``losses.py``.
"""

from __future__ import annotations

import math
from dataclasses import dataclass
from typing import Any

import torch
from torch import nn

from tsembed.health import mean_pairwise_cosine
from tsembed.training.auxiliary import add_embedding_terms
from tsembed.training.distributed import gather_no_grad, gather_sizes, gather_with_grad, rank
from tsembed.training.eans import PLAIN_INFONCE, EANSConfig
from tsembed.training.loss_config import LossConfig
from tsembed.training.losses import false_negative_mask, info_nce, negative_mask

__all__ = ["ContrastiveObjective", "ContrastiveOutput", "ExpertUsage", "LossConfig"]  # LossConfig: its old home


@dataclass
class ContrastiveOutput:
    loss: torch.Tensor
    logs: dict[str, float]


class ContrastiveObjective(nn.Module):
    """InfoNCE with hard negatives, cross-rank targets, a false-negative guard and EANS weights."""

    def __init__(self, loss: LossConfig, eans: EANSConfig) -> None:
        super().__init__()
        self.loss_config = loss
        self.eans_config = eans
        self.log_tau = nn.Parameter(torch.tensor(math.log(loss.tau)), requires_grad=loss.learnable_tau)

    @property
    def tau(self) -> torch.Tensor:
        return self.log_tau.exp()

    def forward(
        self,
        queries: torch.Tensor,
        targets: torch.Tensor,
        query_signatures: torch.Tensor | None,
        target_signatures: torch.Tensor | None,
        target_ids: torch.Tensor,
        target_owner: torch.Tensor,
        eans_active: bool,
    ) -> ContrastiveOutput:
        """Loss of this rank's N queries against the targets of all ranks.

        Args:
            queries: [N, D] local query embeddings; query i's positive is local target i.
            targets: [T, D] local targets: N positives, then hard negatives (explicit and mined).
            query_signatures / target_signatures: [N, S] / [T, S] routing signatures, or None.
            target_ids: [T] content ids (equal id = same content), for the same-content guard.
            target_owner: [T] local query index owning a hard negative, -1 for positives.
            eans_active: stage 2; False gives plain InfoNCE whatever the EANS mode.
        """
        n, local_t = queries.shape[0], targets.shape[0]
        # ranks may hold different numbers of targets (hard negatives in some rows only): gathers pad and cut
        sizes = gather_sizes(local_t, targets.device)
        offset = sum(sizes[: rank()])
        all_targets = gather_with_grad(targets, sizes)  # [ΣT, D]
        all_ids = gather_no_grad(target_ids, sizes)
        owner = gather_no_grad(torch.where(target_owner >= 0, target_owner + rank() * n, target_owner), sizes)
        positive = torch.arange(n, device=queries.device) + offset  # [N]
        query_global = positive - offset + rank() * n  # global query index
        scores = queries @ all_targets.T  # [N, M]

        negatives = negative_mask(positive, scores.shape[1])
        same = all_ids[None, :] == all_ids[positive][:, None] if self.loss_config.mask_same_content else None
        keep = owner[None, :] == query_global[:, None]  # each query's own hard negatives
        exempt = None if self.loss_config.guard_own_negatives else keep
        guarded = false_negative_mask(scores, positive, same, self.loss_config.false_negative_margin, exempt)
        usable = negatives & ~guarded

        if query_signatures is not None and target_signatures is not None:
            affinity = query_signatures @ gather_no_grad(target_signatures, sizes).T  # [N, M]
        else:
            affinity = torch.zeros_like(scores)
        mode = self.eans_config.spec if eans_active else PLAIN_INFONCE
        weights = mode.negative_weights(affinity, scores, usable, self.eans_config, keep)
        loss = info_nce(scores, positive, self.tau, weights)
        logs = _eans_logs(weights, affinity, negatives, usable)
        logs["query_cosine"] = mean_pairwise_cosine(queries)  # tsembed.health: the collapse measure
        logs["num_targets"] = float(scores.shape[1])
        if mode.reweights:  # the unweighted loss, comparable across stages and variants
            with torch.no_grad():
                logs["infonce"] = float(info_nce(scores, positive, self.tau, usable.to(scores.dtype)))
        else:
            logs["infonce"] = float(loss.detach())
        loss, extra_logs = add_embedding_terms(loss, queries, targets, self.loss_config)  # uniformity
        logs.update(extra_logs)
        return ContrastiveOutput(loss, logs)


def _eans_logs(weights: torch.Tensor, affinity: torch.Tensor, negatives: torch.Tensor, usable: torch.Tensor) -> dict:
    """Mean normalised entropy of the negative weights, affinity of weighted vs uniform negatives,
    and the share of negatives masked as false."""
    with torch.no_grad():
        w = weights * usable
        p = w / w.sum(dim=-1, keepdim=True).clamp_min(1e-12)
        entropy = -(p * p.clamp_min(1e-12).log()).sum(dim=-1)
        count = usable.sum(dim=-1).clamp_min(2).float()
        uniform_aff = (affinity * usable).sum(-1) / usable.sum(-1).clamp_min(1)
        chosen_aff = (p * affinity).sum(-1)
        return {
            "eans_entropy": float((entropy / count.log()).mean()),
            "affinity_chosen": float(chosen_aff.mean()),
            "affinity_random": float(uniform_aff.mean()),
            "false_negative_frac": float(((negatives & ~usable).sum() / negatives.sum().clamp_min(1)).item()),
        }


class ExpertUsage:
    """Running mean of the top-1 shares f_e per layer over about ``window`` steps (checkpointed)."""

    def __init__(self, window: int) -> None:
        self.decay = 1.0 - 1.0 / window
        self.shares: dict[str, torch.Tensor] = {}

    def update(self, batch_shares: dict[str, torch.Tensor], commit: bool = True) -> dict[str, torch.Tensor]:
        """The running shares including this batch; ``commit=False`` computes them without storing."""
        out = {name: share if name not in self.shares
               else self.decay * self.shares[name].to(share.device) + (1 - self.decay) * share
               for name, share in batch_shares.items()}
        if commit:
            self.shares = {name: share.detach().clone() for name, share in out.items()}
        return out

    def state_dict(self) -> dict[str, Any]:
        return {"decay": self.decay, "shares": {k: v.cpu() for k, v in self.shares.items()}}

    def load_state_dict(self, state: dict[str, Any]) -> None:
        self.decay = state["decay"]
        self.shares = dict(state["shares"])


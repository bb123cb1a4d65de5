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

from tsembed.errors import ConfigError
from tsembed.health import mean_pairwise_cosine
from tsembed.training.distributed import gather_no_grad, gather_sizes, gather_with_grad, rank
from tsembed.training.eans import PLAIN_INFONCE, EANSConfig
from tsembed.training.losses import false_negative_mask, info_nce, negative_mask, uniformity


def _finite(value: Any) -> bool:
    return not isinstance(value, bool) and isinstance(value, int | float) and math.isfinite(value)


@dataclass
class LossConfig:
    """Loss settings.

    tau: InfoNCE temperature τ (learnable if ``learnable_tau``).
    false_negative_margin: drop negatives scoring above the positive + margin (None: off).
    mask_same_content: drop negatives whose content equals the positive's.
    guard_own_negatives: apply the score rule to a query's own hard negatives too (its row's labelled
        negative and any mined for it). False exempts them: they were chosen as negatives *for this query*,
        and the score rule drops exactly the labelled trap that outscores the positive, i.e. the one
        negative a conditional task most needs to learn from (docs/results/conflict, §9).
    load_balance_weight / z_loss_weight: weights of the MoE auxiliary losses.
    load_balance_window: steps over which the top-1 shares f_e of the balance loss are measured. 1: this
        batch only (Switch). N > 1: a running mean over about N steps (decay 1 − 1/N), the "global-batch"
        balance of Qiu et al. 2025. With homogeneous batches (one dataset each) a per-batch loss penalises
        exactly the dataset specialisation the router should learn; a window balances usage across datasets.
        Default 20: with a router at the full lr it is what lets routing specialise on the dev split
        (docs/results/routing-diagnosis/ §1, §5).
    uniformity_weight: weight of Wang & Isola's uniformity term on this rank's queries and targets (mean of the
        two); 0 (default) is off. It keeps a gradient at the collapsed point where InfoNCE has none
        (docs/results/conflict §9).
    """

    tau: float = 0.02
    learnable_tau: bool = False
    false_negative_margin: float | None = 0.1
    mask_same_content: bool = True
    guard_own_negatives: bool = True
    load_balance_weight: float = 0.01
    z_loss_weight: float = 0.001
    load_balance_window: int = 20
    uniformity_weight: float = 0.0

    def __post_init__(self) -> None:
        # NaN passes every < / > comparison, so each range check also asks for a finite number
        if not (_finite(self.tau) and self.tau > 0):
            raise ConfigError(f"loss.tau must be a finite number > 0, got {self.tau!r}")
        for name in ("load_balance_weight", "z_loss_weight", "uniformity_weight"):
            value = getattr(self, name)
            if not (_finite(value) and value >= 0):
                raise ConfigError(f"loss.{name} must be a finite number >= 0, got {value!r}")
        margin = self.false_negative_margin
        if margin is not None and not (_finite(margin) and margin >= 0):
            raise ConfigError(f"loss.false_negative_margin must be a finite number >= 0 or null (off), got {margin!r}")
        if isinstance(self.load_balance_window, bool) or not isinstance(self.load_balance_window, int) \
                or self.load_balance_window < 1:
            raise ConfigError(f"loss.load_balance_window must be an integer >= 1 (steps), got "
                              f"{self.load_balance_window!r}")


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
        if self.loss_config.uniformity_weight:
            spread = (uniformity(queries) + uniformity(targets)) / 2
            logs["uniformity"] = float(spread.detach())
            loss = loss + self.loss_config.uniformity_weight * spread
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


"""Loss settings (``loss:`` in a training config), apart from the objective so the auxiliary terms can read them."""

from __future__ import annotations

import math
from dataclasses import dataclass
from typing import Any

from tsembed.errors import ConfigError


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

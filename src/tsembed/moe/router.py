"""The learned router: one linear map to route logits, task-hint biases, temperature and jitter (docs/design.md §3.2).

Every learned routing decision in tsembed goes through this module: each MoE-LoRA layer's router. The gate
functions that turn its probabilities into expert weights live in ``tsembed.moe.routers``; the model-level pilot
router of composed models in ``tsembed.moe.pilot``.
"""

from __future__ import annotations

import torch
from torch import nn

from tsembed.precision import compute_input


class Router(nn.Module):
    """logits = W u (+ the input's task-hint bias); probs = softmax(logits / T), both fp32.

    Args:
        in_features: size of the routing input u.
        num_routes: router choices (routed experts, then null experts).
        init_std: std of W's normal initialisation.
        temperature: softmax temperature T.
        jitter: multiplicative uniform noise (1 ± jitter) on u while training.
        num_hints: task hints with a learned logit bias each (0: none).
        hint_init: initial bias of hint i towards route ``i mod hint_experts``.
        hint_experts: how many routes the hint initialisation cycles over (the routed experts).
    """

    def __init__(self, in_features: int, num_routes: int, *, init_std: float = 0.02, temperature: float = 1.0,
                 jitter: float = 0.0, num_hints: int = 0, hint_init: float = 0.0, hint_experts: int | None = None,
                 device: torch.device | None = None, dtype: torch.dtype | None = None) -> None:
        super().__init__()
        factory = {"device": device, "dtype": dtype}
        self.weight = nn.Parameter(torch.empty(num_routes, in_features, **factory))
        nn.init.normal_(self.weight, std=init_std)
        self.temperature = float(temperature)
        self.jitter = float(jitter)
        # one learned logit bias per declared task; zero at init, so hints change nothing until trained
        self.hint = nn.Parameter(torch.zeros(num_hints, num_routes, **factory)) if num_hints else None
        if self.hint is not None and hint_init:
            with torch.no_grad():
                hints = torch.arange(num_hints)
                self.hint[hints, hints % (hint_experts or num_routes)] = float(hint_init)

    @property
    def num_routes(self) -> int:
        return int(self.weight.shape[0])

    def forward(self, router_in: torch.Tensor, hints: torch.Tensor | None = None) -> tuple[torch.Tensor, torch.Tensor]:
        """Logits and probabilities [..., num_routes] (fp32) for routing inputs [B, ..., d]; ``hints`` [B] (-1:
        none) add their bias to every row of their input."""
        if self.training and self.jitter > 0:
            noise = torch.empty_like(router_in).uniform_(1.0 - self.jitter, 1.0 + self.jitter)
            router_in = router_in * noise
        # the softmax, top-k and auxiliary losses read fp32 logits even when the GEMM ran in bf16
        logits = nn.functional.linear(compute_input(router_in, self.weight.dtype), self.weight).float()
        if hints is not None and self.hint is not None:
            bias = self.hint[hints.clamp_min(0)] * (hints >= 0).unsqueeze(-1).to(logits.dtype)  # [B, routes]
            logits = logits + bias.view(bias.shape[0], *([1] * (logits.dim() - 2)), bias.shape[-1])
        scaled = logits if self.temperature == 1.0 else logits / self.temperature  # one launch fewer at T = 1
        return logits, torch.softmax(scaled, dim=-1)

    def own_router_parameters(self) -> list[nn.Parameter]:
        """The weight and the task-hint biases (``moe.routers.RouterOwner``)."""
        return [self.weight] + ([self.hint] if self.hint is not None else [])

    @torch.no_grad()
    def start_at(self, centroids: torch.Tensor, scale: float) -> None:
        """Rows = ``centroids`` [k, d] × ``scale`` (a k-means start, ``tsembed.moe.router_start``), the remaining
        rows zero (never chosen first until the router learns to)."""
        weight = torch.zeros_like(self.weight)
        weight[: centroids.shape[0]] = centroids.to(weight) * scale
        self.weight.copy_(weight)

    def keep_routes(self, routes: torch.Tensor) -> None:
        """Keep only ``routes`` (in that order): their weight rows and hint columns."""
        with torch.no_grad():
            self.weight = nn.Parameter(self.weight.index_select(0, routes), requires_grad=self.weight.requires_grad)
            if self.hint is not None:
                self.hint = nn.Parameter(self.hint.index_select(1, routes), requires_grad=self.hint.requires_grad)

    def extra_repr(self) -> str:
        return (f"in={self.weight.shape[1]}, routes={self.num_routes}, temperature={self.temperature:g}, "
                f"jitter={self.jitter:g}, hints={0 if self.hint is None else self.hint.shape[0]}")

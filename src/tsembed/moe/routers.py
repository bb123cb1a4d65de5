"""Gate functions that turn router probabilities into expert weights (docs/design.md §3.2).

One function per routing mode, chosen through ``ROUTERS``; all work on the last dimension.
"""

from __future__ import annotations

from collections.abc import Callable
from typing import Protocol, runtime_checkable

import torch
from torch import nn

from tsembed.errors import ConfigError


@runtime_checkable
class RouterOwner(Protocol):
    """A module that routes: it names its router parameters itself (weights, task-hint biases), so that the
    router learning-rate group is chosen by what a module is, never by a parameter-name suffix."""

    def own_router_parameters(self) -> list[nn.Parameter]: ...


def router_parameters(model: nn.Module) -> list[nn.Parameter]:
    """Every router parameter of ``model``: those each ``RouterOwner`` submodule names, each once."""
    seen: dict[int, nn.Parameter] = {}
    for module in model.modules():
        if isinstance(module, RouterOwner):
            for p in module.own_router_parameters():
                seen.setdefault(id(p), p)
    return list(seen.values())


def topk_gates(probs: torch.Tensor, top_k: int, top_p: float) -> torch.Tensor:
    """Keep the k most probable experts and renormalise their probabilities to sum to one.

    Top-1 renormalised is p/p = 1: right for the forward pass (a sequence-level expert then merges
    exactly into W), but constant, so the task loss would send the router no gradient and only the
    load-balance loss would train it: routing would barely depend on the task, and EANS would have
    nothing to read (docs/results/ablation-400steps/README.md, "Why" 2). Top-1 therefore divides by the
    *detached* probability: the value stays exactly 1, and the router's logits get ∂L/∂g · (δ − p), the
    gradient of the chosen expert's log-probability.
    """
    values, index = probs.topk(top_k, dim=-1)  # [..., k]
    norm = values.detach() if top_k == 1 else values.sum(dim=-1, keepdim=True)
    return torch.zeros_like(probs).scatter(-1, index, values / norm)  # [..., E]


def topp_gates(probs: torch.Tensor, top_k: int, top_p: float) -> torch.Tensor:
    """Keep the fewest experts whose mass reaches top_p ("Harder Tasks Need More Experts")."""
    sorted_probs, order = probs.sort(dim=-1, descending=True)  # [..., E]
    mass_before = sorted_probs.cumsum(dim=-1) - sorted_probs  # mass of the experts ranked above
    keep = mass_before < top_p  # the first expert is always kept
    kept = sorted_probs * keep
    kept = kept / kept.sum(dim=-1, keepdim=True)
    return torch.zeros_like(probs).scatter(-1, order, kept)


def dense_gates(probs: torch.Tensor, top_k: int, top_p: float) -> torch.Tensor:
    """Every expert, weighted by its router probability."""
    return probs


GateFn = Callable[[torch.Tensor, int, float], torch.Tensor]
ROUTERS: dict[str, GateFn] = {"topk": topk_gates, "topp": topp_gates, "dense": dense_gates}


def get_gate_fn(mode: str) -> GateFn:
    try:
        return ROUTERS[mode]
    except KeyError:
        raise ConfigError(f"unknown routing mode {mode!r}; valid modes: {sorted(ROUTERS)}") from None

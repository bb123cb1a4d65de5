"""Fold adapters into the base weights, giving a plain model any engine can serve."""

from __future__ import annotations

import torch
from torch import nn

from tsembed.errors import AdapterError
from tsembed.moe.attach import get_moe_config, replace_adapted
from tsembed.moe.layer import MoELoRALinear


def _merged_linear(layer: MoELoRALinear, expert: int) -> nn.Linear:
    base = layer.base_layer
    with torch.no_grad():
        base.weight.add_(layer.expert_delta(expert).to(base.weight.dtype))
    return base


def merge_and_unload(model: nn.Module) -> nn.Module:
    """Merge single-expert adapters (E = 1 and no null expert, so the gate is always 1) into the base weights."""
    config = get_moe_config(model)
    if config.num_null_experts:
        raise AdapterError(
            f"merge_and_unload cannot fold adapters with null experts (moe.num_null_experts="
            f"{config.num_null_experts}): the router may choose the no-op route, so whether the expert applies "
            "depends on the input; use merge_expert(model, e) to fold one routed expert of a sequence-level router"
        )
    if config.num_experts != 1:
        raise AdapterError(
            f"merge_and_unload needs num_experts=1 (got {config.num_experts}): with several experts the gate depends "
            "on the input; use merge_expert(model, e) to fold one expert of a sequence-level router"
        )
    return replace_adapted(model, lambda layer: _merged_linear(layer, 0))


def merge_expert(model: nn.Module, expert: int) -> nn.Module:
    """Fold routed expert ``expert`` (plus shared experts) into the base weights.

    The result equals the routed model on inputs that a top-1 sequence-level router sends to ``expert``.
    Null experts own no weights and cannot be named here (an input routed to one gets the shared experts
    alone).
    """
    config = get_moe_config(model)
    if config.level != "sequence":
        raise AdapterError(
            "merge_expert needs sequence-level routing (moe.level='sequence'): with token-level routing one "
            "input mixes several experts, so no single merged expert reproduces it"
        )
    if not 0 <= expert < config.num_experts:
        nulls = (f"; routes {config.num_experts}..{config.num_routes - 1} are null experts, which have no weights "
                 "to merge") if config.num_null_experts and expert >= config.num_experts else ""
        raise AdapterError(f"expert must be in [0, {config.num_experts - 1}], got {expert}{nulls}")
    return replace_adapted(model, lambda layer: _merged_linear(layer, expert))

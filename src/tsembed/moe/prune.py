"""Drop routed experts from an attached model: every MoE layer and the config attached with them."""

from __future__ import annotations

from dataclasses import replace

from torch import nn

from tsembed.errors import AdapterError
from tsembed.moe.attach import CONFIG_ATTR, adapter_layers, get_moe_config
from tsembed.moe.config import MoELoRAConfig


def prune_experts(model: nn.Module, keep: list[int]) -> MoELoRAConfig:
    """Keep only routed experts ``keep`` (renumbered in that order) in every MoE layer of ``model``.

    Shared and null experts stay; ``top_k`` shrinks to the routes left (kept experts + null experts).
    Everything is checked before any layer changes, so a bad ``keep`` leaves the model as it was.

    Returns:
        The model's new adapter config (also attached to ``model``).

    Raises:
        AdapterError: no adapters, or ``keep`` empty, repeating an expert or out of range.
    """
    config = get_moe_config(model)
    bad = [e for e in keep if not 0 <= e < config.num_experts]
    if not keep or bad or len(set(keep)) != len(keep):
        nulls = (f" (routes {config.num_experts}..{config.num_routes - 1} are null experts: they own no parameters "
                 "and always stay)") if config.num_null_experts else ""
        raise AdapterError(f"experts to keep must be distinct experts of [0, {config.num_experts - 1}] and "
                           f"not empty, got {keep}{nulls}")
    for layer in adapter_layers(model).values():
        layer.keep_experts(keep)
    names = [config.expert_names[e] for e in keep] if config.expert_names else []
    new = replace(config, num_experts=len(keep), top_k=min(config.top_k, len(keep) + config.num_null_experts),
                  expert_names=names)
    setattr(model, CONFIG_ATTR, new)
    return new

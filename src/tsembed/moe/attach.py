"""Attach MoE-LoRA adapters to any ``nn.Module`` by module-name patterns, and take them off again."""

from __future__ import annotations

import re
from dataclasses import dataclass

from torch import nn

from tsembed.errors import AdapterError, ConfigError
from tsembed.moe.config import MoELoRAConfig
from tsembed.moe.layer import MoELoRALinear
from tsembed.moe.routing import RoutingState

STATE_ATTR = "tsembed_routing_state"
CONFIG_ATTR = "tsembed_moe_config"


@dataclass(frozen=True)
class AttachSummary:
    """What ``attach`` did: the adapted module paths and the parameter counts."""

    modules: tuple[str, ...]
    trainable_parameters: int
    total_parameters: int

    @property
    def num_modules(self) -> int:
        return len(self.modules)

    def __str__(self) -> str:
        share = 100.0 * self.trainable_parameters / max(self.total_parameters, 1)
        return (
            f"MoE-LoRA on {self.num_modules} modules: {self.trainable_parameters:,} trainable of "
            f"{self.total_parameters:,} parameters ({share:.2f}%)"
        )


def find_targets(model: nn.Module, patterns: list[str]) -> list[str]:
    """Module paths fully matching any pattern; every pattern must match and every match must be a Linear."""
    compiled = [re.compile(p) for p in patterns]
    matches: list[str] = []
    unmatched = set(patterns)
    wrong_type: list[str] = []
    for name, module in model.named_modules():
        hits = [p.pattern for p in compiled if name and p.fullmatch(name)]
        if not hits:
            continue
        unmatched.difference_update(hits)
        if isinstance(module, MoELoRALinear):
            raise AdapterError(f"module {name!r} already carries MoE-LoRA adapters; detach them first")
        if type(module) is not nn.Linear:
            wrong_type.append(f"{name} ({type(module).__name__})")
            continue
        matches.append(name)
    problems = []
    if unmatched:
        linears = [n for n, m in model.named_modules() if isinstance(m, nn.Linear)]
        example = ", ".join(linears[:8]) + (" ..." if len(linears) > 8 else "")
        problems.append(
            f"target patterns matched no module: {sorted(unmatched)} (patterns are full regex matches on module "
            f"paths; Linear modules of this model include: {example or 'none'})"
        )
    if wrong_type:
        problems.append(f"targets must be nn.Linear, but these matched modules are not: {wrong_type}")
    if problems:
        raise AdapterError("; ".join(problems))
    return matches


def attach(model: nn.Module, config: MoELoRAConfig) -> AttachSummary:
    """Replace the targeted linears with ``MoELoRALinear`` and freeze everything else.

    All checks run before the model is touched, so a failure never leaves it half-adapted.
    """
    if isinstance(getattr(model, STATE_ATTR, None), RoutingState):
        raise AdapterError(f"{type(model).__name__} already has MoE-LoRA adapters attached")
    if not config.target_modules:  # an unresolved config: the trainer fills in the backbone's default targets
        raise ConfigError("moe.target_modules: give at least one module-name pattern")
    targets = find_targets(model, config.target_modules)

    state = RoutingState()
    for param in model.parameters():
        param.requires_grad_(False)
    for name in targets:
        parent, child = _parent_of(model, name)
        setattr(parent, child, MoELoRALinear(getattr(parent, child), config, name, state))
    state.hook_id = model.register_forward_pre_hook(state, with_kwargs=True).id
    setattr(model, STATE_ATTR, state)
    setattr(model, CONFIG_ATTR, config)
    return summarize(model)


def summarize(model: nn.Module) -> AttachSummary:
    modules = tuple(name for name, m in model.named_modules() if isinstance(m, MoELoRALinear))
    adapter_params = sum(p.numel() for m in adapter_layers(model).values() for p in _adapter_params(m))
    return AttachSummary(modules, adapter_params, sum(p.numel() for p in model.parameters()))


def adapter_layers(model: nn.Module) -> dict[str, MoELoRALinear]:
    return {name: m for name, m in model.named_modules() if isinstance(m, MoELoRALinear)}


def signature_size(model: nn.Module) -> int:
    """Length of the routing signature of ``model``: E + N router probabilities (routed and null experts) per
    adapted layer."""
    return sum(layer.num_routes for layer in adapter_layers(model).values())


def get_moe_config(model: nn.Module) -> MoELoRAConfig:
    config = getattr(model, CONFIG_ATTR, None)
    if config is None:
        raise AdapterError(f"{type(model).__name__} has no MoE-LoRA adapters attached")
    return config


def detach(model: nn.Module) -> nn.Module:
    """Put the original linears back (adapters discarded) and remove the routing hook."""
    return replace_adapted(model, lambda layer: layer.base_layer)


def replace_adapted(model: nn.Module, make: object) -> nn.Module:
    """Swap every ``MoELoRALinear`` for ``make(layer)`` and drop the attachment bookkeeping."""
    state = getattr(model, STATE_ATTR, None)
    if not isinstance(state, RoutingState):
        raise AdapterError(f"{type(model).__name__} has no MoE-LoRA adapters attached")
    for name in list(adapter_layers(model)):
        parent, child = _parent_of(model, name)
        setattr(parent, child, make(getattr(parent, child)))  # type: ignore[operator]
    model._forward_pre_hooks.pop(state.hook_id, None)
    model._forward_pre_hooks_with_kwargs.pop(state.hook_id, None)
    delattr(model, STATE_ATTR)
    delattr(model, CONFIG_ATTR)
    return model


def _adapter_params(layer: MoELoRALinear) -> list[nn.Parameter]:
    return list(layer.adapter_parameters().values())


def _parent_of(model: nn.Module, name: str) -> tuple[nn.Module, str]:
    parent_name, _, child = name.rpartition(".")
    return (model.get_submodule(parent_name) if parent_name else model), child

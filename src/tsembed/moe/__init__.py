"""MoE-LoRA: LoRA experts with a learned router, attachable to any PyTorch model (docs/design.md §3.2–§3.3)."""

from tsembed.moe.attach import (
    AttachSummary,
    adapter_layers,
    attach,
    detach,
    find_targets,
    get_moe_config,
    signature_size,
    summarize,
)
from tsembed.moe.config import MoELoRAConfig
from tsembed.moe.io import adapter_state_dict, load_adapters, read_adapter_config, save_adapters
from tsembed.moe.layer import MoELoRALinear
from tsembed.moe.merge import merge_and_unload, merge_expert
from tsembed.moe.prune import prune_experts
from tsembed.moe.routers import ROUTERS
from tsembed.moe.routing import (
    RoutingOutput,
    RoutingStats,
    aux_losses,
    balance,
    checkpoint_context,
    chosen_routes,
    collect_routing,
    forced_routes,
    load_balance_loss,
    masked_mean,
    router_z_loss,
    routing_signature,
    set_routing_hints,
    set_routing_mask,
    top1_counts,
    top1_shares,
)

__all__ = [
    "ROUTERS",
    "AttachSummary",
    "MoELoRAConfig",
    "MoELoRALinear",
    "RoutingOutput",
    "RoutingStats",
    "adapter_layers",
    "adapter_state_dict",
    "attach",
    "aux_losses",
    "balance",
    "chosen_routes",
    "collect_routing",
    "detach",
    "find_targets",
    "forced_routes",
    "get_moe_config",
    "load_adapters",
    "load_balance_loss",
    "masked_mean",
    "merge_and_unload",
    "merge_expert",
    "prune_experts",
    "read_adapter_config",
    "router_z_loss",
    "routing_signature",
    "save_adapters",
    "checkpoint_context",
    "set_routing_hints",
    "set_routing_mask",
    "signature_size",
    "summarize",
    "top1_counts",
    "top1_shares",
]

"""Routing capture: what the routers did in the last forward pass (DESIGN §3.2–§3.3).

Every MoE-LoRA layer of an attached model shares one ``RoutingState``. The state is also the root
module's forward pre-hook: each forward starts with empty records and takes the ``attention_mask``
keyword argument as the routing mask, so callers never thread the mask to each layer by hand. A
backbone whose adapted layers see another sequence (e.g. visual tokens fused into text) calls
``set_routing_mask`` with that sequence's mask before running those layers. Task hints (ids into
``MoELoRAConfig.task_hints``, one per input) reach the layers the same way, through ``set_routing_hints``.
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import Any

import torch
import torch.nn.functional as F
from torch import nn

from tsembed.errors import AdapterError


@dataclass
class LayerRouting:
    """Router outputs of one layer in the last forward.

    probs: [B, L, E] (token level) or [B, E] (sequence level), with gradient.
    logits: same shape as probs, pre-temperature router logits (for the z-loss).
    mask: [B, L] bool of real (non-pad) tokens, or None when every token is real.
    """

    probs: torch.Tensor
    logits: torch.Tensor
    mask: torch.Tensor | None


@dataclass
class RoutingStats:
    """Additive routing statistics of one layer over a set of routing units.

    Sums rather than means, so chunks (GradCache) and ranks (DDP) combine exactly by addition.
    top1_counts [E] (no gradient), prob_sums [E] and lse_sq_sum [] (with gradient), num_units.
    """

    top1_counts: torch.Tensor
    prob_sums: torch.Tensor
    lse_sq_sum: torch.Tensor
    num_units: int


@dataclass
class RoutingOutput:
    """Routing of one forward pass, summarised for losses, EANS and inspection.

    layer_probs: per adapted layer (module order), probabilities per input [B, E]
        (token level: the mean over the input's real tokens).
    signature: s(x) = normalize(concat_l (m_l(x) − 1/E)), [B, L·E], detached (EANS uses it with
        stop-gradient); see ``routing_signature`` for why it is centred.
    load_balance_loss: sum over layers of E · Σ_e f_e · P_e (differentiable through P_e).
    z_loss: sum over layers of mean(logsumexp(logits)²).
    """

    layer_probs: dict[str, torch.Tensor]
    signature: torch.Tensor
    load_balance_loss: torch.Tensor
    z_loss: torch.Tensor
    layer_stats: dict[str, RoutingStats]


class RoutingState:
    """Shared per-model routing scratchpad; doubles as the root forward pre-hook."""

    def __init__(self) -> None:
        self.mask: torch.Tensor | None = None
        self.text_mask: torch.Tensor | None = None  # [B, L] text tokens, for moe.router_input="text"
        self.hints: torch.Tensor | None = None
        self.records: dict[str, LayerRouting] = {}
        self.hook_id: int | None = None

    def __call__(self, module: nn.Module, args: tuple, kwargs: dict[str, Any]) -> None:
        self.records = {}
        mask = kwargs.get("attention_mask")
        self.mask = mask if isinstance(mask, torch.Tensor) and mask.dim() == 2 else None

    def mask_for(self, batch: int, length: int, layer: str) -> torch.Tensor | None:
        """The routing mask for a [batch, length, d] layer input, checked against its shape."""
        if self.mask is None:
            return None
        if tuple(self.mask.shape) != (batch, length):
            raise AdapterError(
                f"routing mask has shape {tuple(self.mask.shape)} but MoE layer {layer!r} sees a sequence of "
                f"shape ({batch}, {length}); a backbone that changes the sequence (e.g. inserts visual tokens) "
                "must call tsembed.moe.set_routing_mask(model, mask) with the mask of that sequence"
            )
        return self.mask.bool()

    def hints_for(self, batch: int, layer: str) -> torch.Tensor | None:
        """Task-hint ids [batch] (-1: no hint) for a layer input of ``batch`` inputs, checked against it."""
        if self.hints is None:
            return None
        if self.hints.shape[0] != batch:
            raise AdapterError(
                f"{self.hints.shape[0]} task hints were set but MoE layer {layer!r} sees {batch} inputs; "
                "set one hint id per input with tsembed.moe.set_routing_hints(model, ids)"
            )
        return self.hints


def get_routing_state(model: nn.Module) -> RoutingState:
    state = getattr(model, "tsembed_routing_state", None)
    if not isinstance(state, RoutingState):
        raise AdapterError(
            f"{type(model).__name__} has no MoE-LoRA adapters attached; call tsembed.moe.attach(model, config) "
            "on this module first"
        )
    return state


def set_routing_mask(model: nn.Module, attention_mask: torch.Tensor | None,
                     text_mask: torch.Tensor | None = None) -> None:
    """Tell every MoE layer of ``model`` which tokens are real ([B, L], 1 = token, 0 = pad) and, optionally,
    which are text (not image) tokens, for routers that read the instruction only (``moe.router_input``).

    A row without text tokens routes on all its tokens.
    """
    state = getattr(model, "tsembed_routing_state", None)
    if isinstance(state, RoutingState):  # a backbone without adapters has nothing to tell
        state.mask = attention_mask
        if text_mask is not None and attention_mask is not None:
            text_mask = text_mask.bool() & attention_mask.bool()
            text_mask = torch.where(text_mask.any(dim=1, keepdim=True), text_mask, attention_mask.bool())
        state.text_mask = text_mask


def set_routing_hints(model: nn.Module, hint_ids: torch.Tensor | None) -> None:
    """Give every MoE layer of ``model`` one task-hint id per input ([B] long, -1 = none); None clears."""
    state = getattr(model, "tsembed_routing_state", None)
    if isinstance(state, RoutingState):
        state.hints = hint_ids


def masked_mean(values: torch.Tensor, mask: torch.Tensor | None) -> torch.Tensor:
    """Mean over dim 1 of [B, L, D] values, counting only positions where mask [B, L] is true."""
    if mask is None:
        return values.mean(dim=1)
    weights = mask.to(values.dtype).unsqueeze(-1)  # [B, L, 1]
    return (values * weights).sum(dim=1) / weights.sum(dim=1).clamp_min(1.0)


def load_balance_loss(probs: torch.Tensor) -> torch.Tensor:
    """Switch-style balance loss E · Σ_e f_e · P_e over routing units (rows of probs [N, E]).

    f_e is the share of units whose top-1 expert is e, P_e the mean probability of e; a perfectly
    balanced router gives 1, a collapsed one gives E.
    """
    num_experts = probs.shape[-1]
    top1 = probs.argmax(dim=-1)  # [N]
    share = torch.bincount(top1, minlength=num_experts).to(probs.dtype) / max(probs.shape[0], 1)  # f_e
    return num_experts * (share * probs.mean(dim=0)).sum()


def router_z_loss(logits: torch.Tensor) -> torch.Tensor:
    """ST-MoE router z-loss: mean over units of logsumexp(logits)², keeping logits small."""
    return torch.logsumexp(logits, dim=-1).pow(2).mean()


def routing_signature(per_layer: list[torch.Tensor]) -> torch.Tensor:
    """s(x) = normalize(concat_l (m_l(x) − 1/E)) from per-layer [B, E] probabilities.

    Centred on the uniform distribution: a load-balanced router keeps every m_l(x) close to 1/E, so
    the uncentred cosine of any two inputs is close to 1 and EANS weights come out uniform
    (docs/results/ablation-400steps/README.md, "Why" 1). Centred, the affinity is the cosine of the
    routers' *preferences* and spans [-1, 1]; a router that is exactly uniform (or a single expert) gives
    a zero signature and affinity 0 everywhere.
    """
    return F.normalize(torch.cat([p - 1.0 / p.shape[-1] for p in per_layer], dim=-1), dim=-1)


def _units(record: LayerRouting) -> tuple[torch.Tensor, torch.Tensor]:
    """Probabilities and logits of the real routing units as [N, E] rows (pads dropped)."""
    probs, logits = record.probs, record.logits
    if probs.dim() == 2:  # sequence level: one unit per input
        return probs, logits
    if record.mask is None:
        return probs.flatten(0, 1), logits.flatten(0, 1)
    return probs[record.mask], logits[record.mask]


def layer_stats(record: LayerRouting) -> RoutingStats:
    probs, logits = _units(record)
    counts = torch.bincount(probs.detach().argmax(dim=-1), minlength=probs.shape[-1])
    lse = torch.logsumexp(logits, dim=-1)
    return RoutingStats(counts, probs.sum(dim=0), lse.pow(2).sum(), probs.shape[0])


def collect_routing(model: nn.Module) -> RoutingOutput:
    """Summarise the routing of ``model``'s last forward (same pass, no extra compute on the model)."""
    state = get_routing_state(model)
    if not state.records:
        raise AdapterError("no routing recorded: run a forward pass of the attached model first")
    layer_probs: dict[str, torch.Tensor] = {}
    stats: dict[str, RoutingStats] = {}
    balance, z = [], []
    for name, record in state.records.items():
        probs = record.probs
        layer_probs[name] = probs if probs.dim() == 2 else masked_mean(probs, record.mask)
        unit_probs, unit_logits = _units(record)
        stats[name] = layer_stats(record)
        if unit_probs.shape[0] == 0:  # no real token in this layer (e.g. an absent tower): nothing to balance
            continue
        balance.append(load_balance_loss(unit_probs))
        z.append(router_z_loss(unit_logits))
    signature = routing_signature([p.detach() for p in layer_probs.values()])
    return RoutingOutput(
        layer_probs=layer_probs,
        signature=signature,
        load_balance_loss=torch.stack(balance).sum() if balance else signature.new_zeros(()),
        z_loss=torch.stack(z).sum() if z else signature.new_zeros(()),
        layer_stats=stats,
    )

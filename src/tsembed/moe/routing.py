"""Routing capture: what the routers did in the last forward pass (docs/design.md §3.2–§3.3).

Every MoE-LoRA layer of an attached model shares one ``RoutingState``. The state is also the root
module's forward pre-hook: each forward starts with empty records and takes the ``attention_mask``
keyword argument as the routing mask, so callers never thread the mask to each layer by hand. A
backbone whose adapted layers see another sequence (e.g. visual tokens fused into text) calls
``set_routing_mask`` with that sequence's mask before running those layers. Task hints (ids into
``MoELoRAConfig.task_hints``, one per input) reach the layers the same way, through ``set_routing_hints``.
"""

from __future__ import annotations

import contextlib
from collections.abc import Iterator
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


class RoutingOutput:
    """Routing of one forward pass, summarised for EANS and inspection; auxiliary losses on request.

    layer_probs: per adapted layer (module order), probabilities per input [B, E]
        (token level: the mean over the input's real tokens).
    signature: s(x) = normalize(concat_l (m_l(x) − 1/E)), [B, L·E], detached (EANS uses it with
        stop-gradient); see ``routing_signature`` for why it is centred.

    The training-only statistics are computed when first read, so an inference forward pays nothing
    for them: ``layer_stats`` (additive per-layer sums, see ``RoutingStats``), ``load_balance_loss``
    (sum over layers of E · Σ_e f_e · P_e, differentiable through P_e) and ``z_loss`` (sum over layers
    of mean(logsumexp(logits)²)).
    """

    def __init__(self, layer_probs: dict[str, torch.Tensor], signature: torch.Tensor,
                 records: dict[str, LayerRouting]) -> None:
        self.layer_probs = layer_probs
        self.signature = signature
        self._records = records
        self._stats: dict[str, RoutingStats] | None = None
        self._aux: tuple[torch.Tensor, torch.Tensor] | None = None

    @property
    def layer_stats(self) -> dict[str, RoutingStats]:
        if self._stats is None:
            self._stats = {name: layer_stats(record) for name, record in self._records.items()}
        return self._stats

    def _aux_losses(self) -> tuple[torch.Tensor, torch.Tensor]:
        if self._aux is None:
            stats = self.layer_stats
            units = {name: s.num_units for name, s in stats.items()}
            shares = top1_shares({name: s.top1_counts for name, s in stats.items()}, units)
            balance, z = aux_losses([stats], shares, units)
            self._aux = balance.to(self.signature.device), z.to(self.signature.device)
        return self._aux

    @property
    def load_balance_loss(self) -> torch.Tensor:
        return self._aux_losses()[0]

    @property
    def z_loss(self) -> torch.Tensor:
        return self._aux_losses()[1]


class RoutingState:
    """Shared per-model routing scratchpad; doubles as the root forward pre-hook."""

    def __init__(self) -> None:
        self.mask: torch.Tensor | None = None
        self.text_mask: torch.Tensor | None = None  # [B, L] text tokens, for moe.router_input="text"
        self.hints: torch.Tensor | None = None
        self.gates: torch.Tensor | None = None  # [B, E] expert weights chosen outside the layers (moe.router="pilot")
        self.forced: dict[str, torch.Tensor] | None = None  # per layer, [B] route ids chosen for another input
        self.bypass = False  # True: every adapted layer computes its base linear alone (the base model)
        self.records: dict[str, LayerRouting] = {}
        self.hook_id: int | None = None

    def __getstate__(self) -> dict[str, Any]:
        """The scratchpad of the last forward is left out: its records hold tensors with gradient history, which
        cannot be pickled (a DataLoader worker started by spawn or forkserver pickles the model), and a copy
        starts its own forwards anyway."""
        return {**self.__dict__, "mask": None, "text_mask": None, "hints": None, "gates": None, "forced": None,
                "records": {}}

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


    def forced_for(self, batch: int, layer: str) -> torch.Tensor | None:
        """The route ids [batch] this layer must use (``forced_routes``), or None to route by its own router."""
        if self.forced is None:
            return None
        routes = self.forced.get(layer)
        if routes is None:
            raise AdapterError(f"routes were forced for {sorted(self.forced)} but not for MoE layer {layer!r}")
        if routes.shape[0] == 1:  # one route for every input
            return routes.expand(batch)
        if routes.shape[0] != batch:
            raise AdapterError(f"{routes.shape[0]} forced routes were set but MoE layer {layer!r} sees {batch} inputs")
        return routes

    def gates_for(self, batch: int, layer: str) -> torch.Tensor:
        """The model-level router's expert weights [batch, E] for a layer that owns no router."""
        if self.gates is None:
            raise AdapterError(
                f"MoE layer {layer!r} is routed by the model's pilot router, but no expert weights were set; "
                "embed through TSEmbedModel (or call tsembed.moe.set_routing_gates(model, gates) first)"
            )
        if self.gates.shape[0] != batch:
            raise AdapterError(f"{self.gates.shape[0]} rows of expert weights were set but MoE layer {layer!r} "
                               f"sees {batch} inputs")
        return self.gates


def set_routing_gates(model: nn.Module, gates: torch.Tensor | None) -> None:
    """Give every pilot-routed layer of ``model`` the expert weights of each input ([B, E]); None clears."""
    get_routing_state(model).gates = gates


@contextlib.contextmanager
def adapters_bypassed(model: nn.Module) -> Iterator[None]:
    """Run ``model`` as its base model: every adapted layer computes its frozen linear alone (no routing is
    recorded). The pilot router reads the base model's embedding of an input before choosing its expert."""
    state = get_routing_state(model)
    previous, state.bypass = state.bypass, True
    try:
        yield
    finally:
        state.bypass = previous


@contextlib.contextmanager
def forced_routes(model: nn.Module, routes: dict[str, torch.Tensor] | None) -> Iterator[None]:
    """Inside the block, every learned layer of ``model`` mixes its experts by ``routes`` ({layer: [B] route ids, or
    [1] for every input}, e.g. ``chosen_routes`` of the queries whose candidates these inputs are) instead of its
    router's choice. The
    routers still run and are recorded (balance and z-loss, EANS signatures see them as before); only the experts
    applied change. None: a no-op (every input routed by itself)."""
    state = get_routing_state(model) if routes is not None else None
    if state is None:
        yield
        return
    previous, state.forced = state.forced, routes
    try:
        yield
    finally:
        state.forced = previous


def chosen_routes(routing: RoutingOutput) -> dict[str, torch.Tensor]:
    """Each sequence-level layer's top-1 route per input ([B] long) in a forward's routing: what ``forced_routes``
    takes to embed other inputs with these inputs' experts."""
    return {name: probs.detach().argmax(dim=-1) for name, probs in routing.layer_probs.items()}


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


class checkpoint_context:  # noqa: N801 - used like the function it was: checkpoint_context(model)
    """``context_fn`` for ``torch.utils.checkpoint`` (non-reentrant) over layers of ``model``: the recompute in the
    backward sees the routing state (mask, text mask, task hints, forced routes) of its forward, not whatever a later
    forward left (``TSEmbedModel.forward`` clears the hints on return; a full batch embeds queries, then
    targets, then runs one backward). Its routing records go to a scratch dict, leaving the forward's.

    The state is looked up at each call, so this may be given before adapters are attached. A class, not a
    closure: DataLoader workers started by spawn pickle the model, and the model holds this.
    """

    def __init__(self, model: nn.Module) -> None:
        self.model = model

    def __call__(self) -> tuple[Any, Any]:
        state = getattr(self.model, "tsembed_routing_state", None)
        if not isinstance(state, RoutingState):
            return contextlib.nullcontext(), contextlib.nullcontext()
        return contextlib.nullcontext(), _replayed(state, (state.mask, state.text_mask, state.hints, state.forced))


@contextlib.contextmanager
def _replayed(state: RoutingState, saved: tuple) -> Iterator[None]:
    current = (state.mask, state.text_mask, state.hints, state.forced, state.records)
    state.mask, state.text_mask, state.hints, state.forced = saved
    state.records = {}
    try:
        yield
    finally:
        state.mask, state.text_mask, state.hints, state.forced, state.records = current


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


def top1_counts(probs: torch.Tensor) -> torch.Tensor:
    """How many routing units (rows of probs [N, E]) pick each expert first: [E] long, no gradient."""
    return torch.bincount(probs.detach().argmax(dim=-1), minlength=probs.shape[-1])


def balance(top1_share: torch.Tensor, mean_prob: torch.Tensor) -> torch.Tensor:
    """The Switch balance term E · Σ_e f_e · P_e over the last dim (f_e: top-1 share, P_e: mean probability).

    The one formula behind the training loss, ``load_balance_loss`` and the routing report; 1 for a
    perfectly balanced router, E for a collapsed one. [..., E] inputs give [...].
    """
    return mean_prob.shape[-1] * (top1_share.to(mean_prob.dtype) * mean_prob).sum(dim=-1)


def load_balance_loss(probs: torch.Tensor) -> torch.Tensor:
    """Switch-style balance loss E · Σ_e f_e · P_e over routing units (rows of probs [N, E]).

    f_e is the share of units whose top-1 expert is e, P_e the mean probability of e; a perfectly
    balanced router gives 1, a collapsed one gives E.
    """
    share = top1_counts(probs).to(probs.dtype) / max(probs.shape[0], 1)  # f_e [E]
    return balance(share, probs.mean(dim=0))


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
    lse = torch.logsumexp(logits, dim=-1)
    return RoutingStats(top1_counts(probs), probs.sum(dim=0), lse.pow(2).sum(), probs.shape[0])


def top1_shares(top1_counts: dict[str, torch.Tensor], num_units: dict[str, int]) -> dict[str, torch.Tensor]:
    """f_e = counts_e / n per layer (layers without units are left out)."""
    return {name: counts.float() / num_units[name] for name, counts in top1_counts.items() if num_units[name]}


def aux_losses(
    stats: list[dict[str, RoutingStats]],
    shares: dict[str, torch.Tensor],
    num_units: dict[str, int],
) -> tuple[torch.Tensor, torch.Tensor]:
    """Load-balance and z-loss summed over layers, from additive stats of one or more forwards.

    ``shares`` (the top-1 shares f_e: of the whole step, or a running mean) and ``num_units`` cover the
    whole step (all chunks, all ranks), so the gradients of per-chunk calls add up to the full-batch
    gradient (GradCache, DDP). L_bal = E · Σ_e f_e · P_e with P_e = Σ prob_sums_e / n.
    """
    balances, z = [], []
    for name, share in shares.items():
        n = num_units[name]
        prob_sums = sum(s[name].prob_sums for s in stats)
        lse_sq = sum(s[name].lse_sq_sum for s in stats)
        balances.append(balance(share, prob_sums / n))
        z.append(lse_sq / n)
    if not balances:
        zero = torch.zeros((), dtype=torch.float32)
        return zero, zero
    return torch.stack(balances).sum(), torch.stack(z).sum()


def collect_routing(model: nn.Module) -> RoutingOutput:
    """Summarise the routing of ``model``'s last forward (same pass, no extra compute on the model).

    Only the per-input probabilities and the signature are computed here; the auxiliary losses wait
    until training reads them.
    """
    state = get_routing_state(model)
    if not state.records:
        raise AdapterError("no routing recorded: run a forward pass of the attached model first")
    records = dict(state.records)
    layer_probs = {name: r.probs if r.probs.dim() == 2 else masked_mean(r.probs, r.mask) for name, r in records.items()}
    signature = routing_signature([p.detach() for p in layer_probs.values()])
    return RoutingOutput(layer_probs=layer_probs, signature=signature, records=records)

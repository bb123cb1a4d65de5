"""The MoE-LoRA linear layer, computed as one wide LoRA (docs/design.md §3.2).

y = W x + (α/r) · B_cat ((A_cat x) ⊙ repeat(g, r)): all experts (and the always-on shared experts,
stored after them with gate 1) live in one ``lora_A`` [(E+S)·r, d_in] and one ``lora_B``
[d_out, (E+S)·r], so a forward is two GEMMs and an elementwise product, with no per-expert loop.
The router chooses among E + N routes: the E routed experts, then N null experts (no parameters, output
zero), whose gates are computed with the others and then dropped.

A pilot-routed layer (``moe.router="pilot"``, what ``tsembed compose`` builds) owns no router: the model's pilot
router sets each input's expert weights, and the layer adds the experts one at a time with the batch's shape,
so an input's output depends on its own experts alone (adding an expert leaves every other input's vector
bit-identical).
"""

from __future__ import annotations

import math

import torch
import torch.nn.functional as F
from torch import nn

from tsembed.errors import AdapterError
from tsembed.moe.config import MoELoRAConfig
from tsembed.moe.router import Router
from tsembed.moe.routers import get_gate_fn
from tsembed.moe.routing import LayerRouting, RoutingState, masked_mean
from tsembed.precision import compute_input


class MoELoRALinear(nn.Module):
    """A frozen ``nn.Linear`` plus E routed LoRA experts, S shared ones and N null (no-op) routes.

    Every ``lora_B`` starts at zero, so at initialisation the layer computes its base linear, and the routed
    experts add nothing until trained: a shared + routed layer starts as its shared experts alone, i.e. one
    plain LoRA of rank S·r.

    Args:
        base_layer: the linear to adapt; kept as a frozen submodule.
        config: adapter settings.
        name: module path inside the attached model (keys routing records and checkpoints).
        state: routing scratchpad shared by all layers of the model.
    """

    def __init__(self, base_layer: nn.Linear, config: MoELoRAConfig, name: str, state: RoutingState) -> None:
        super().__init__()
        self.base_layer = base_layer
        self.name = name
        self.num_experts = config.num_experts
        self.num_shared = config.num_shared_experts
        self.num_null = config.num_null_experts
        self.rank = config.rank
        self.scaling = config.scaling
        self.level = config.level
        self.routing = config.routing
        self.top_k = config.top_k
        self.top_p = float(config.top_p)
        self.router_input = config.router_input
        self.router_kind = config.router
        self._gate_fn = get_gate_fn(config.routing)
        object.__setattr__(self, "_state", state)  # shared, so not a submodule

        weight = base_layer.weight
        total = (self.num_experts + self.num_shared) * self.rank
        # fp32 master weights by default, whatever the base's dtype (tsembed.precision)
        factory = {"device": weight.device, "dtype": config.dtype}
        self.lora_A = nn.Parameter(torch.empty(total, base_layer.in_features, **factory))
        self.lora_B = nn.Parameter(torch.zeros(base_layer.out_features, total, **factory))
        self.dropout = nn.Dropout(config.dropout) if config.dropout > 0 else nn.Identity()
        self.router = (Router(base_layer.in_features, self.num_routes, init_std=config.router_init_std,
                              temperature=config.temperature, jitter=config.jitter, num_hints=len(config.task_hints),
                              hint_init=float(config.task_hint_init), hint_experts=self.num_experts, **factory)
                       if self.router_kind == "learned" else None)
        nn.init.kaiming_uniform_(self.lora_A, a=math.sqrt(5))  # fan_in = d_in, as in peft's LoRA

    @property
    def router_hint(self) -> nn.Parameter | None:
        """The task-hint logit biases [hints, E+N] (None without hints)."""
        return None if self.router is None else self.router.hint

    @property
    def num_routes(self) -> int:
        """The router's choices: the E routed experts, then the N null experts."""
        return self.num_experts + self.num_null

    @property
    def in_features(self) -> int:
        return self.base_layer.in_features

    @property
    def out_features(self) -> int:
        return self.base_layer.out_features

    def route(self, x: torch.Tensor, mask: torch.Tensor | None) -> tuple[torch.Tensor, torch.Tensor]:
        """Router logits and probabilities (fp32) for x [B, L, d]: [B, L, E+N] (token) or [B, E+N] (sequence)."""
        if self.router is None:  # pilot-routed: the model chose each input's expert weights
            probs = self._state.gates_for(x.shape[0], self.name).float()
            return probs.clamp_min(1e-12).log(), probs
        return self.router(self.router_features(x, mask), self._state.hints_for(x.shape[0], self.name))

    def router_features(self, x: torch.Tensor, mask: torch.Tensor | None) -> torch.Tensor:
        """What the router reads from x [B, L, d]: every token (token level, [B, L, d]) or the mean of the input's
        tokens (sequence level, [B, d]; only its text tokens with ``router_input="text"``)."""
        if self.level == "token":
            return x
        text = self._state.text_mask if self.router_input == "text" else None
        return masked_mean(x, text if text is not None and text.shape == x.shape[:2] else mask)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        result = self.base_layer(x)
        if self._state.bypass:  # the base model (the pilot router reads its embeddings)
            return result
        if x.dim() == 2:  # [N, d]: every row is its own one-token input
            x3, mask = x.unsqueeze(1), None
        elif x.dim() == 3:
            x3 = x
            mask = self._state.mask_for(x.shape[0], x.shape[1], self.name)
        else:
            raise ValueError(
                f"MoE layer {self.name!r} expects inputs of shape [N, d] or [B, L, d], got {tuple(x.shape)}"
            )
        batch, length, _ = x3.shape
        x3 = compute_input(x3, self.lora_A.dtype)  # bf16 activations meet fp32 adapters outside autocast

        logits, probs = self.route(x3, mask)
        self._state.records[self.name] = LayerRouting(probs=probs, logits=logits, mask=mask)
        if self.router is None:
            return self._dispatch(x3, result.reshape(batch, length, -1), probs).view_as(result).to(result.dtype)
        forced = self._state.forced_for(batch, self.name)
        if forced is None:
            gates = self._gate_fn(probs, self.top_k, self.top_p)  # [B, L, E+N] or [B, E+N]
        else:  # another input's experts (moe.target_routing="query"); the router's own choice stays on record
            gates = F.one_hot(forced.to(probs.device), self.num_routes).to(probs.dtype)
        if self.num_null:  # a null route's gate (renormalised with the others) multiplies a zero output
            gates = gates[..., : self.num_experts]
        if gates.dim() == 2:
            gates = gates.unsqueeze(1)  # [B, 1, E], broadcast over tokens
        if self.num_shared:
            gates = torch.cat([gates, gates.new_ones(*gates.shape[:-1], self.num_shared)], dim=-1)
        hidden = F.linear(self.dropout(x3), self.lora_A)  # [B, L, (E+S)·r]; under autocast in its dtype
        gates = gates.to(hidden.dtype)
        hidden = (hidden.view(batch, length, -1, self.rank) * gates.unsqueeze(-1)).view(batch * length, -1)
        # result + (α/r) · hidden @ B^T in one GEMM with the add and the scale fused in: [B·L, d_out]; the sum is
        # formed in the adapter's dtype (fp32 outside autocast) and only then rounded to the base output's dtype
        out = torch.addmm(result.reshape(batch * length, -1).to(hidden.dtype), hidden, self.lora_B.t(),
                          alpha=self.scaling)
        return out.view_as(result).to(result.dtype)

    def _dispatch(self, x3: torch.Tensor, result: torch.Tensor, gates: torch.Tensor) -> torch.Tensor:
        """result + Σ_e g_e · (α/r) · B_e A_e x, one expert at a time, in expert order, over the whole batch.

        Each expert's GEMMs have the batch's shape whatever the routing, and a zero gate adds an exact zero: an
        input's output depends only on its own experts, bit for bit (expert e's rows alone would change shape, and
        with it the GEMM's rounding, whenever another input moved to or from e). Experts no input chose are skipped.
        """
        out = result.to(self.lora_A.dtype)
        x3 = self.dropout(x3)
        r = self.rank
        for e in range(self.num_experts):
            gate = gates[:, e]
            if not bool((gate != 0).any()):
                continue
            scale = (gate * self.scaling).to(out.dtype).view(-1, 1, 1)
            hidden = F.linear(x3, self.lora_A[e * r:(e + 1) * r]) * scale  # [B, L, r]
            out = out + F.linear(hidden, self.lora_B[:, e * r:(e + 1) * r])
        return out

    def own_router_parameters(self) -> list[nn.Parameter]:
        """The router's weight and its task-hint biases (``moe.routers.RouterOwner``); none when pilot-routed."""
        return [] if self.router is None else self.router.own_router_parameters()

    def adapter_parameters(self) -> dict[str, nn.Parameter]:
        """What the adapter adds to the base layer, keyed as in checkpoints (``router.weight``, ...)."""
        params = {"lora_A": self.lora_A, "lora_B": self.lora_B}
        if self.router is not None:
            params["router.weight"] = self.router.weight
        if self.router_hint is not None:
            params["router_hint"] = self.router_hint
        return params

    # ----- the wide-LoRA row layout: routed expert e owns rows [e·r, (e+1)·r) of lora_A (columns of
    # lora_B); the shared experts follow the E routed ones. Only these methods spell that out.
    def _rows(self, experts: list[int]) -> torch.Tensor:
        """Rows of ``experts`` (in that order) followed by every shared expert's rows."""
        r = self.rank
        rows = [i for e in experts for i in range(e * r, (e + 1) * r)]
        rows += range(self.num_experts * r, (self.num_experts + self.num_shared) * r)
        return torch.tensor(rows, dtype=torch.long, device=self.lora_A.device)

    def _check_expert(self, expert: int) -> None:
        if not 0 <= expert < self.num_experts:
            raise AdapterError(f"MoE layer {self.name!r}: expert must be in [0, {self.num_experts - 1}], got {expert}")

    def expert_factors(self, expert: int) -> tuple[torch.Tensor, torch.Tensor]:
        """Routed expert ``expert`` plus every shared expert as one plain LoRA: A [(1+S)·r, d_in] and
        B [d_out, (1+S)·r], so that B @ A · scaling is what the layer adds when the router gives it gate 1."""
        self._check_expert(expert)
        rows = self._rows([expert])
        return self.lora_A[rows], self.lora_B[:, rows]

    def expert_delta(self, expert: int) -> torch.Tensor:
        """ΔW of one routed expert (plus every shared expert): what merging it adds to W."""
        a, b = self.expert_factors(expert)
        return (b @ a) * self.scaling  # [d_out, d_in]

    def keep_experts(self, keep: list[int]) -> None:
        """Drop every routed expert not in ``keep``; the kept ones are renumbered in ``keep``'s order.

        The LoRA rows, router rows and task-hint columns of the dropped experts go; shared experts and null
        experts (which own nothing but their router rows) stay, numbered after the kept ones; ``top_k``
        shrinks to the number of routes left. On inputs whose chosen experts are all kept,
        the layer computes what it computed before.

        Raises:
            AdapterError: ``keep`` is empty, repeats an expert or names one the layer does not have.
        """
        if not keep or len(set(keep)) != len(keep):
            raise AdapterError(f"MoE layer {self.name!r}: experts to keep must be distinct and not empty, got {keep}")
        for e in keep:
            self._check_expert(e)
        rows = self._rows(keep)
        routes = [*keep, *range(self.num_experts, self.num_routes)]  # the null routes follow the kept experts
        if self.router is not None:
            self.router.keep_routes(torch.tensor(routes, dtype=torch.long, device=self.lora_A.device))
        self.lora_A = _sliced(self.lora_A, rows, dim=0)
        self.lora_B = _sliced(self.lora_B, rows, dim=1)
        self.num_experts = len(keep)
        self.top_k = min(self.top_k, self.num_routes)

    def extra_repr(self) -> str:
        return (
            f"in={self.in_features}, out={self.out_features}, experts={self.num_experts}, shared={self.num_shared}, "
            f"null={self.num_null}, "
            f"rank={self.rank}, routing={self.routing}, level={self.level}, router={self.router_kind}"
        )


def _sliced(param: nn.Parameter, index: torch.Tensor, dim: int) -> nn.Parameter:
    """A new parameter holding ``param``'s entries at ``index`` along ``dim`` (same requires_grad)."""
    with torch.no_grad():
        return nn.Parameter(param.index_select(dim, index), requires_grad=param.requires_grad)

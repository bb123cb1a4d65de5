"""Slow, obviously-correct references the fused MoE-LoRA layer is tested against."""

from __future__ import annotations

import torch

from tsembed.moe import MoELoRALinear


def reference_gates(probs: torch.Tensor, mode: str, top_k: int, top_p: float) -> torch.Tensor:
    """Gates row by row with plain Python loops."""
    flat = probs.reshape(-1, probs.shape[-1])
    rows = []
    for row in flat:
        order = sorted(range(len(row)), key=lambda e: -float(row[e].detach()))
        if mode == "dense":
            chosen = order
        elif mode == "topk":
            chosen = order[:top_k]
        else:  # topp: add experts until their mass reaches top_p
            chosen, mass = [], 0.0
            for e in order:
                chosen.append(e)
                mass += float(row[e].detach())
                if mass >= top_p:
                    break
        # top-1: value 1, gradient through the chosen probability (see routers.topk_gates)
        total = row[chosen[0]].detach() if mode == "topk" and top_k == 1 else sum(row[e] for e in chosen)
        gate = torch.zeros_like(row)
        for e in chosen:
            gate = gate + torch.nn.functional.one_hot(torch.tensor(e), len(row)).to(row.dtype) * (row[e] / total)
        rows.append(gate)
    return torch.stack(rows).reshape(probs.shape)


def reference_forward(layer: MoELoRALinear, x: torch.Tensor, mask: torch.Tensor | None = None,
                      hints: list[int] | None = None) -> torch.Tensor:
    """y = W x + (α/r) Σ_e g_e B_e A_e x + (α/r) Σ_s B_s A_s x, one expert at a time.

    The gates g run over the E routed experts and the N null experts (route E + j); a null route adds nothing.

    hints: one task-hint id per input (-1: none); the hint's learned bias is added to that input's logits.
    """
    x3 = x.unsqueeze(1) if x.dim() == 2 else x
    r = layer.rank
    if layer.level == "token":
        router_in = x3
    else:
        if mask is None:
            mask = torch.ones(x3.shape[:2], dtype=torch.bool)
        means = []
        for b in range(x3.shape[0]):
            means.append(x3[b][mask[b].bool()].mean(dim=0))
        router_in = torch.stack(means)
    logits = router_in @ layer.router.weight.T
    if hints is not None:
        rows = []
        for b, h in enumerate(hints):
            rows.append(logits[b] + layer.router_hint[h] if h >= 0 else logits[b])
        logits = torch.stack(rows)
    probs = torch.softmax(logits / layer.router.temperature, dim=-1)
    gates = reference_gates(probs, layer.routing, layer.top_k, layer.top_p)
    if gates.dim() == 2:
        gates = gates.unsqueeze(1)
    out = x3 @ layer.base_layer.weight.T + layer.base_layer.bias
    assert gates.shape[-1] == layer.num_experts + layer.num_null
    for e in range(layer.num_experts + layer.num_null):
        if e >= layer.num_experts:  # a null expert: no parameters, output zero
            continue
        a, b = layer.lora_A[e * r : (e + 1) * r], layer.lora_B[:, e * r : (e + 1) * r]
        out = out + layer.scaling * gates[..., e : e + 1] * ((x3 @ a.T) @ b.T)
    for s in range(layer.num_shared):
        e = layer.num_experts + s
        a, b = layer.lora_A[e * r : (e + 1) * r], layer.lora_B[:, e * r : (e + 1) * r]
        out = out + layer.scaling * ((x3 @ a.T) @ b.T)
    return out.reshape(*x.shape[:-1], -1)


def assert_fused_matches_reference(model: torch.nn.Module, layer: MoELoRALinear, x: torch.Tensor,
                                   mask: torch.Tensor) -> None:
    """The fused layer's output and gradients (input, LoRA factors, router) equal the per-expert loop's."""
    fused = model(x)
    params = [x, layer.lora_A, layer.lora_B, layer.router.weight]
    upstream = torch.randn_like(fused)
    grads = torch.autograd.grad((fused * upstream).sum(), params)
    ref = reference_forward(layer, x, mask)
    ref_grads = torch.autograd.grad((ref * upstream).sum(), params)
    torch.testing.assert_close(fused, ref, atol=1e-5, rtol=1e-5)
    for g, rg in zip(grads, ref_grads, strict=True):
        torch.testing.assert_close(g, rg, atol=1e-5, rtol=1e-5)

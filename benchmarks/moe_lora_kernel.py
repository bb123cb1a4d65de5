"""MoE-LoRA kernel benchmark: fused wide-LoRA MoE vs plain LoRA vs a MixLoRA-style per-expert loop.

One frozen base ``nn.Linear`` (d × d), 4,096 tokens, r = 8, top-2 token routing, forward + backward
(the input requires grad, as it does inside a model whose lower layers are adapted). All variants are
timed side by side in one run; each figure is the median of ``--repeats`` timed runs after warm-up.
Memory: on a GPU, peak allocated memory; on the CPU (which has no allocator statistics), the bytes of
tensors autograd saves for backward, the activation memory that grows with batch size. First, the aten ops one
adapted linear dispatches forward and backward (each at least one kernel launch on a GPU) next to peft's LoRA's
(the target: at most 2x).

    python benchmarks/moe_lora_kernel.py [--quick] [--repeats 7]

The last line is one JSON object (ratios; `*_over_*` = time of the first / time of the second).
"""

from __future__ import annotations

import argparse
import json
import statistics
import time
from collections.abc import Callable

import torch
import torch.nn.functional as F
from torch import nn
from torch.utils._python_dispatch import TorchDispatchMode

from tsembed.moe import MoELoRAConfig, MoELoRALinear, attach

TOKENS = 4096
RANK = 8
TOP_K = 2


class PlainLoRA(nn.Module):
    """Reference LoRA: y = W x + (α/r) B A x."""

    def __init__(self, base: nn.Linear, rank: int) -> None:
        super().__init__()
        self.base = base
        self.lora_A = nn.Parameter(torch.randn(rank, base.in_features, device=base.weight.device) * 0.01)
        self.lora_B = nn.Parameter(torch.randn(base.out_features, rank, device=base.weight.device) * 0.01)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return self.base(x) + 2.0 * F.linear(F.linear(x, self.lora_A), self.lora_B)


class SparseDispatchMoE(nn.Module):
    """MixLoRA-style MoE-LoRA: per expert, gather its tokens, run its LoRA, index_add the result back."""

    def __init__(self, base: nn.Linear, num_experts: int, rank: int, top_k: int) -> None:
        super().__init__()
        self.base, self.top_k, self.num_experts = base, top_k, num_experts
        dev = base.weight.device
        self.router = nn.Linear(base.in_features, num_experts, bias=False, device=dev)
        self.lora_A = nn.ParameterList(
            [nn.Parameter(torch.randn(rank, base.in_features, device=dev) * 0.01) for _ in range(num_experts)]
        )
        self.lora_B = nn.ParameterList(
            [nn.Parameter(torch.randn(base.out_features, rank, device=dev) * 0.01) for _ in range(num_experts)]
        )

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        flat = x.reshape(-1, x.shape[-1])
        out = self.base(flat)
        probs = torch.softmax(self.router(flat), dim=-1)
        weights, experts = probs.topk(self.top_k, dim=-1)
        weights = weights / weights.sum(dim=-1, keepdim=True)
        for e in range(self.num_experts):
            token_idx, slot = torch.where(experts == e)
            if token_idx.numel() == 0:
                continue
            h = F.linear(F.linear(flat[token_idx], self.lora_A[e]), self.lora_B[e])
            out = out.index_add(0, token_idx, 2.0 * h * weights[token_idx, slot, None])
        return out.view(*x.shape[:-1], -1)


def make_variants(d: int, experts: int, device: str, dtype: torch.dtype) -> dict[str, nn.Module]:
    torch.manual_seed(0)
    base = nn.Linear(d, d, device=device, dtype=dtype).requires_grad_(False)
    moe = nn.Sequential(nn.Linear(d, d, device=device, dtype=dtype))
    moe[0].load_state_dict(base.state_dict())
    attach(moe, MoELoRAConfig(target_modules=["0"], num_experts=experts, rank=RANK, top_k=TOP_K, level="token"))
    layer: MoELoRALinear = moe[0]
    nn.init.normal_(layer.lora_B, std=0.01)
    return {
        "moe_lora": moe,
        "lora_r": PlainLoRA(base, RANK),
        "lora_Er": PlainLoRA(base, RANK * experts),
        "sparse_loop": SparseDispatchMoE(base, experts, RANK, TOP_K),
    }


class _OpCounter(TorchDispatchMode):
    """Counts the aten ops a block dispatches: on a GPU each is (at least) one kernel launch."""

    def __init__(self) -> None:
        super().__init__()
        self.count = 0

    def __torch_dispatch__(self, func, types, args=(), kwargs=None):  # type: ignore[no-untyped-def]
        self.count += 1
        return func(*args, **(kwargs or {}))


def peft_lora(d: int, device: str, dtype: torch.dtype) -> nn.Module:
    """peft's own LoRA on one linear, the adapter users compare against."""
    from peft import LoraConfig, get_peft_model

    model = nn.Sequential(nn.Linear(d, d, device=device, dtype=dtype))
    return get_peft_model(model, LoraConfig(r=RANK, lora_alpha=16, target_modules=["0"]))


def aten_ops(module: nn.Module, x: torch.Tensor) -> tuple[int, int]:
    """Aten ops of one forward and of its backward."""
    xi = x.detach().requires_grad_(True)
    with _OpCounter() as forward:
        out = module(xi)
    loss = out.float().square().mean()
    with _OpCounter() as backward:
        loss.backward()
    return forward.count, backward.count


def op_counts(d: int, device: str, dtype: torch.dtype) -> dict[str, tuple[int, int]]:
    """Aten ops per adapted linear: the MoE-LoRA layer at token top-2 and sequence top-1, peft's LoRA, a plain
    LoRA and the bare linear, on one small input (the count does not depend on its size)."""
    x = torch.randn(2, 8, d, device=device, dtype=dtype)
    counts = {}
    for level, top_k in (("token", TOP_K), ("sequence", 1)):
        moe = nn.Sequential(nn.Linear(d, d, device=device, dtype=dtype))
        attach(moe, MoELoRAConfig(target_modules=["0"], num_experts=4, rank=RANK, top_k=top_k, level=level))
        counts[f"moe_lora_{level}_top{top_k}"] = aten_ops(moe, x)
    counts["peft_lora"] = aten_ops(peft_lora(d, device, dtype), x)
    base = nn.Linear(d, d, device=device, dtype=dtype)
    counts["lora_r"] = aten_ops(PlainLoRA(base, RANK), x)
    counts["linear"] = aten_ops(nn.Linear(d, d, device=device, dtype=dtype), x)
    return counts


def saved_tensor_bytes(step: Callable[[], torch.Tensor]) -> int:
    """Bytes of the tensors autograd keeps for backward (deduplicated by storage)."""
    seen: dict[int, int] = {}

    def pack(t: torch.Tensor) -> torch.Tensor:
        seen[t.untyped_storage().data_ptr()] = t.untyped_storage().nbytes()
        return t

    with torch.autograd.graph.saved_tensors_hooks(pack, lambda t: t):
        step()
    return sum(seen.values())


def make_step(module: nn.Module, x: torch.Tensor) -> Callable[[], torch.Tensor]:
    module = module.to(x.dtype)
    params = [p for p in module.parameters() if p.requires_grad]

    def step() -> torch.Tensor:
        xi = x.detach().requires_grad_(True)
        out = module(xi)
        return torch.autograd.grad(out.float().square().mean(), [xi, *params])[0]

    return step


def measure_all(
    modules: dict[str, nn.Module], x: torch.Tensor, repeats: int, device: str
) -> dict[str, tuple[float, float]]:
    """Median ms and memory per variant; variants take turns in every repeat so background load hits all alike."""
    steps = {name: make_step(m, x) for name, m in modules.items()}
    sync = torch.cuda.synchronize if device == "cuda" else (lambda: None)
    for step in steps.values():
        step(), step()
    sync()
    times: dict[str, list[float]] = {name: [] for name in steps}
    for _ in range(repeats):
        for name, step in steps.items():
            start = time.perf_counter()
            step()
            sync()
            times[name].append(time.perf_counter() - start)
    results = {}
    for name, step in steps.items():
        if device == "cuda":
            torch.cuda.reset_peak_memory_stats()
            step()
            sync()
            memory = torch.cuda.max_memory_allocated() / 2**20
        else:
            memory = saved_tensor_bytes(lambda m=modules[name]: m(x.detach().requires_grad_(True))) / 2**20
        results[name] = (statistics.median(times[name]) * 1000, memory)
    return results


def main(quick: bool = False, repeats: int = 7) -> dict[str, float]:
    device = "cuda" if torch.cuda.is_available() else "cpu"
    dtype = torch.bfloat16 if device == "cuda" else torch.float32
    dims = [768] if quick else [384, 768, 2048]
    expert_counts = [8] if quick else [4, 8, 16]
    mem_label = "peak MiB" if device == "cuda" else "saved MiB"
    print(f"device={device} dtype={str(dtype).split('.')[-1]} tokens={TOKENS} r={RANK} top-{TOP_K} "
          f"threads={torch.get_num_threads()} repeats={repeats} (median ms of forward+backward)")
    header = f"{'d':>5} {'E':>3} | " + " | ".join(f"{n:>22}" for n in ("moe_lora", "lora_r", "lora_Er", "sparse_loop"))
    print(header + f" | {'moe/lora_Er':>11} {'loop/moe':>9}")
    print("-" * len(header) + "-" * 24)
    summary: dict[str, float] = {}
    ops = op_counts(64, device, dtype)
    print("aten ops per adapted linear (forward / backward): " + ", ".join(f"{k} {f}/{b}" for k, (f, b) in ops.items()))
    peft_f, peft_b = ops["peft_lora"]
    for name in ops:
        if name.startswith("moe_lora"):
            summary[f"ops_fwd_{name}_over_peft"] = round(ops[name][0] / peft_f, 3)
            summary[f"ops_bwd_{name}_over_peft"] = round(ops[name][1] / peft_b, 3)
    for d in dims:
        for experts in expert_counts:
            x = torch.randn(8, TOKENS // 8, d, device=device, dtype=dtype)
            results = measure_all(make_variants(d, experts, device, dtype), x, repeats, device)
            moe_t = results["moe_lora"][0]
            ratio_wide = moe_t / results["lora_Er"][0]
            ratio_loop = results["sparse_loop"][0] / moe_t
            cells = " | ".join(f"{t:8.2f} ms {m:6.1f} {mem_label[:4]}" for t, m in results.values())
            print(f"{d:>5} {experts:>3} | {cells} | {ratio_wide:>11.3f} {ratio_loop:>9.2f}")
            summary[f"moe_over_wide_lora_d{d}_e{experts}"] = round(ratio_wide, 4)
            summary[f"loop_over_moe_d{d}_e{experts}"] = round(ratio_loop, 4)
            summary[f"moe_over_lora_r_d{d}_e{experts}"] = round(moe_t / results["lora_r"][0], 4)
            moe_mem = results["moe_lora"][1]
            summary[f"moe_mem_over_wide_lora_d{d}_e{experts}"] = round(moe_mem / results["lora_Er"][1], 4)
            summary[f"loop_mem_over_moe_d{d}_e{experts}"] = round(results["sparse_loop"][1] / moe_mem, 4)
    summary["device"] = device  # type: ignore[assignment]
    print(json.dumps(summary))
    return summary


if __name__ == "__main__":
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--quick", action="store_true", help="only d=768, E=8")
    parser.add_argument("--repeats", type=int, default=7, help="timed repeats per variant (median reported)")
    args = parser.parse_args()
    main(quick=args.quick, repeats=args.repeats)

"""Thin wrappers over torch.distributed that degrade to no-ops in a single process."""

from __future__ import annotations

import torch
import torch.distributed as dist
from torch import nn
from torch.nn.parallel import DistributedDataParallel


def is_distributed() -> bool:
    return dist.is_available() and dist.is_initialized()


def world_size() -> int:
    return dist.get_world_size() if is_distributed() else 1


def rank() -> int:
    return dist.get_rank() if is_distributed() else 0


def wrap_ddp(module: nn.Module, device: torch.device) -> nn.Module:
    """``module`` in ``DistributedDataParallel`` when running distributed, else ``module`` itself.

    DDP averages gradients over ranks in buckets during the backward, overlapping communication with it.
    ``find_unused_parameters``: a step need not use every trainable parameter (task-hint biases only for
    inputs that declare a task; a learnable τ enters GradCache's loss on cached embeddings, outside any
    DDP forward), and DDP must not wait for gradients that never come. It costs one walk of the autograd
    graph per synchronised forward.
    """
    if not is_distributed():
        return module
    return DistributedDataParallel(module, device_ids=[device.index] if device.type == "cuda" else None,
                                   find_unused_parameters=True)


def gather_sizes(rows: int, device: torch.device) -> list[int]:
    """Every rank's ``rows`` (one small all_gather on ``device``: NCCL reduces no CPU tensor)."""
    if not is_distributed():
        return [rows]
    local = torch.tensor([rows], dtype=torch.long, device=device)
    parts = [torch.empty_like(local) for _ in range(world_size())]
    dist.all_gather(parts, local)
    return [int(p.item()) for p in parts]


def _padded(tensor: torch.Tensor, rows: int) -> torch.Tensor:
    if tensor.shape[0] == rows:
        return tensor.contiguous()
    return torch.cat([tensor, tensor.new_zeros((rows - tensor.shape[0], *tensor.shape[1:]))]).contiguous()


def _unpadded(gathered: torch.Tensor, sizes: list[int]) -> torch.Tensor:
    """The rows of [W·max, ...] that are real: rank r's first sizes[r] of its max."""
    most = max(sizes)
    if all(s == most for s in sizes):
        return gathered
    index = torch.cat([torch.arange(r * most, r * most + s, device=gathered.device) for r, s in enumerate(sizes)])
    return gathered.index_select(0, index)


class _GatherWithGrad(torch.autograd.Function):
    """all_gather (padded to the largest rank's rows) whose backward sums every rank's gradient for the local slice.

    Ours rather than ``torch.distributed.nn.functional.all_gather``: in the torch we pin (2.13) that function is
    deprecated (a FutureWarning) in favour of ``torch.distributed._functional_collectives.all_gather_single``,
    a private module whose name is new in 2.13. This one uses only the stable ``all_gather`` / ``all_reduce``
    and is checked against one process (tests/training/test_distributed.py). Its backward all-reduces the
    [W·T, D] embedding gradient instead of reduce-scattering it: a few hundred KB per step, next to nothing.
    """

    @staticmethod
    def forward(ctx, tensor: torch.Tensor) -> torch.Tensor:  # type: ignore[override]
        ctx.local_rows = tensor.shape[0]
        parts = [torch.empty_like(tensor) for _ in range(world_size())]
        dist.all_gather(parts, tensor.contiguous())
        return torch.cat(parts, dim=0)

    @staticmethod
    def backward(ctx, grad: torch.Tensor) -> torch.Tensor:  # type: ignore[override]
        grad = grad.contiguous()
        dist.all_reduce(grad, op=dist.ReduceOp.SUM)
        start = rank() * ctx.local_rows
        return grad[start : start + ctx.local_rows]


def gather_with_grad(tensor: torch.Tensor, sizes: list[int] | None = None) -> torch.Tensor:
    """Concatenate ``tensor`` [n, ...] of every rank, keeping the autograd graph to the local part.

    ``sizes``: every rank's n (``gather_sizes``; None: asked here). Ranks may differ in n (e.g. hard negatives
    in one rank's batch only): each pads to the largest n, and the padding is dropped after the gather.
    """
    if not is_distributed():
        return tensor
    sizes = sizes if sizes is not None else gather_sizes(tensor.shape[0], tensor.device)
    return _unpadded(_GatherWithGrad.apply(_padded(tensor, max(sizes))), sizes)


def gather_no_grad(tensor: torch.Tensor, sizes: list[int] | None = None) -> torch.Tensor:
    """``gather_with_grad`` without a graph."""
    if not is_distributed():
        return tensor
    sizes = sizes if sizes is not None else gather_sizes(tensor.shape[0], tensor.device)
    padded = _padded(tensor, max(sizes))
    parts = [torch.empty_like(padded) for _ in range(world_size())]
    dist.all_gather(parts, padded)
    return _unpadded(torch.cat(parts, dim=0), sizes)


def all_reduce_sum(tensor: torch.Tensor) -> torch.Tensor:
    if is_distributed():
        tensor = tensor.clone()
        dist.all_reduce(tensor, op=dist.ReduceOp.SUM)
    return tensor


def all_reduce_max(tensor: torch.Tensor) -> torch.Tensor:
    if is_distributed():
        tensor = tensor.clone()
        dist.all_reduce(tensor, op=dist.ReduceOp.MAX)
    return tensor

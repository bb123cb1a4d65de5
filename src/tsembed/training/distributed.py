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


class _GatherWithGrad(torch.autograd.Function):
    """all_gather whose backward sums every rank's gradient for the local slice.

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


def gather_with_grad(tensor: torch.Tensor) -> torch.Tensor:
    """Concatenate ``tensor`` [n, ...] of every rank (equal n), keeping the autograd graph to the local part."""
    return _GatherWithGrad.apply(tensor) if is_distributed() else tensor


def gather_no_grad(tensor: torch.Tensor) -> torch.Tensor:
    if not is_distributed():
        return tensor
    parts = [torch.empty_like(tensor) for _ in range(world_size())]
    dist.all_gather(parts, tensor.contiguous())
    return torch.cat(parts, dim=0)


def all_reduce_sum(tensor: torch.Tensor) -> torch.Tensor:
    if is_distributed():
        tensor = tensor.clone()
        dist.all_reduce(tensor, op=dist.ReduceOp.SUM)
    return tensor

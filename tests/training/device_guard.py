"""A CPU stand-in for NCCL's device rule: collectives must see only tensors on the training device.

Gloo reduces CPU tensors, NCCL refuses them ("No backend type associated with device type cpu"), and on a
CPU-only machine the training device *is* the CPU, so a tensor built without ``device=`` looks like any other.
``VirtualDevice`` tells them apart: while it is active every tensor remembers whether it would live on the
host on a GPU run (a factory call without ``device``, ``.cpu()``, or an op whose tensor inputs all live on the
host) or on the training device (an explicit ``device``, ``.to(device)``, or an op with an input on the device;
tensors made before it started count as on the device). The collectives of ``torch.distributed`` are patched
to raise on any host tensor, or on a tensor whose real device is not the training device.

    with VirtualDevice(torch.device("cpu")):
        ...  # training code; a CPU tensor in a collective raises HostTensorInCollective
"""

from __future__ import annotations

import torch
import torch.distributed as dist
from torch.overrides import TorchFunctionMode
from torch.utils._pytree import tree_flatten

COLLECTIVES = ("all_reduce", "all_gather", "all_gather_into_tensor", "broadcast", "reduce", "reduce_scatter",
               "reduce_scatter_tensor", "gather", "scatter", "all_to_all", "all_to_all_single", "send", "recv")
_ATTR = "_tsembed_on_host"


class HostTensorInCollective(RuntimeError):
    """A collective was given a tensor that is not on the training device (NCCL would refuse it)."""


def on_host(tensor: torch.Tensor) -> bool:
    return bool(getattr(tensor, _ATTR, False))


def _tensors(tree) -> list[torch.Tensor]:
    return [t for t in tree_flatten(tree)[0] if isinstance(t, torch.Tensor)]


def _explicit_device(func, args, kwargs) -> bool:
    if kwargs.get("device") is not None:
        return True
    if func in (torch.Tensor.to, torch.Tensor.cuda):
        rest = list(args[1:]) + [kwargs.get("other")]
        return func is torch.Tensor.cuda or any(isinstance(a, torch.device | str | torch.Tensor) for a in rest)
    return False


class VirtualDevice(TorchFunctionMode):
    def __init__(self, device: torch.device) -> None:
        super().__init__()
        self.device = torch.device(device)
        self._saved: dict[str, object] = {}

    def __torch_function__(self, func, types, args=(), kwargs=None):
        kwargs = kwargs or {}
        out = func(*args, **kwargs)
        if not isinstance(out, torch.Tensor | tuple | list):
            return out
        name = getattr(func, "__name__", "")
        if name.endswith("_") and not name.endswith("__") and args and isinstance(args[0], torch.Tensor):
            return out  # in place: the tensor stays where it was
        if func is torch.Tensor.cpu:
            host = True
            if out is args[0]:  # on a CPU "device" .cpu() returns its input, which must stay on the device
                out = out.view_as(out)
        elif _explicit_device(func, args, kwargs):
            host = False
        else:
            inputs = _tensors((args, kwargs))
            host = all(on_host(t) for t in inputs)  # a factory (no tensor input) makes a host tensor
        for t in _tensors(out):
            try:
                setattr(t, _ATTR, host)
            except (AttributeError, RuntimeError):  # some views / wrapper tensors take no attributes
                pass
        return out

    def _check(self, name: str, tree) -> None:
        for t in _tensors(tree):
            if on_host(t) or t.device != self.device:
                raise HostTensorInCollective(
                    f"torch.distributed.{name} got a tensor {tuple(t.shape)} {t.dtype} "
                    f"{'made on the host' if on_host(t) else f'on {t.device}'}, not on the training device "
                    f"{self.device}: gloo accepts it, NCCL refuses it")

    def __enter__(self):
        for name in COLLECTIVES:
            original = getattr(dist, name, None)
            if original is None:
                continue
            self._saved[name] = original

            def guarded(*args, _name=name, _original=original, **kwargs):
                self._check(_name, (args, kwargs))
                return _original(*args, **kwargs)

            setattr(dist, name, guarded)
        return super().__enter__()

    def __exit__(self, *exc):
        for name, original in self._saved.items():
            setattr(dist, name, original)
        self._saved.clear()
        return super().__exit__(*exc)

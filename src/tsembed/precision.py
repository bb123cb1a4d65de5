"""Mixed precision: fp32 master weights for what trains, autocast for the compute (docs/design.md §2, Precision).

A frozen base may hold bf16/fp16 weights, but everything that trains (adapters, routers, task hints, a
backbone's projector) keeps fp32 parameters: AdamW's update of a bf16 weight is rounded to the weight's
8-bit mantissa, so steps smaller than half a unit in the last place vanish (one step at lr 5e-5 leaves
~39% of a 1536×1536 bf16 ``lora_A`` unchanged). Under ``torch.autocast`` the GEMMs still run in bf16/fp16
while parameters and gradients stay fp32. Without autocast (e.g. ``encode`` on a bf16 base) a module with
fp32 parameters casts its input up and its output back down, so the same model also runs there.
"""

from __future__ import annotations

import contextlib
from collections.abc import Iterator
from typing import Any

import torch
from torch import nn

from tsembed.errors import ConfigError

#: Parameter dtypes by config name (``MoELoRAConfig.adapter_dtype``, backbone ``dtype`` options).
DTYPES = {"float32": torch.float32, "bfloat16": torch.bfloat16, "float16": torch.float16}
#: ``run.precision``: the autocast dtype of the forward passes (None: no autocast).
PRECISIONS: dict[str, torch.dtype | None] = {"fp32": None, "bf16": torch.bfloat16, "fp16": torch.float16}


def autocast_on(device_type: str) -> bool:
    """Whether an autocast region is active for ``device_type`` (``"cuda"``, ``"cpu"``)."""
    return torch.is_autocast_enabled(device_type)


def compute_input(x: torch.Tensor, dtype: torch.dtype) -> torch.Tensor:
    """``x`` ready for a GEMM with ``dtype`` weights: unchanged under autocast (autocast picks the compute
    dtype for both operands), otherwise cast to ``dtype`` (bf16 activations meet fp32 adapters)."""
    return x if autocast_on(x.device.type) else x.to(dtype)


def keep_in_float32(module: nn.Module) -> nn.Module:
    """Make a trainable module of a low-precision base fp32, still taking and giving the base's dtype.

    Its floating-point parameters become fp32 master weights. Outside autocast, floating-point tensor inputs
    are cast to fp32 on the way in and the output back to the module's former dtype on the way out, so the
    surrounding bf16/fp16 layers see their own dtype; under autocast nothing is cast. A module already all
    fp32 is left as it is (no hooks).
    """
    dtypes = {p.dtype for p in module.parameters() if p.is_floating_point()}
    if dtypes <= {torch.float32}:
        return module
    if len(dtypes) > 1:
        raise ConfigError(f"{type(module).__name__} mixes parameter dtypes {sorted(map(str, dtypes))}; "
                          "a trainable module must have one dtype to be kept in float32")
    module._tsembed_base_dtype = dtypes.pop()  # what its output goes back to outside autocast
    module.float()
    module.register_forward_pre_hook(_cast_inputs_up)
    module.register_forward_hook(_cast_output_back)
    return module


def _cast_inputs_up(module: nn.Module, args: tuple) -> tuple | None:
    if any(isinstance(a, torch.Tensor) and autocast_on(a.device.type) for a in args):
        return None
    return tuple(a.float() if isinstance(a, torch.Tensor) and a.is_floating_point() else a for a in args)


def _cast_output_back(module: nn.Module, args: tuple, output: Any) -> Any:
    if not isinstance(output, torch.Tensor) or not output.is_floating_point() or autocast_on(output.device.type):
        return None
    return output.to(module._tsembed_base_dtype)


def check_precision(precision: str, device: torch.device) -> None:
    """Raise a ConfigError naming ``run.precision`` when ``device`` cannot train in it.

    fp16 needs CUDA: autocast's fp16 kernels and the gradient scaler are what make fp16 train, and CPUs have
    neither in a useful form. bf16 runs on CPUs (slowly, for tests) and on GPUs that support it.
    """
    if precision not in PRECISIONS:
        raise ConfigError(f"run.precision must be one of {sorted(PRECISIONS)}, got {precision!r}")
    if precision == "fp16" and device.type != "cuda":
        raise ConfigError(f"run.precision='fp16' needs a CUDA device, but this run is on {device.type!r}; "
                          "use 'bf16' or 'fp32'")
    if precision == "bf16" and device.type == "cuda" and not torch.cuda.is_bf16_supported():
        raise ConfigError(f"run.precision='bf16': {torch.cuda.get_device_name(device)} does not support bfloat16; "
                          "use 'fp16' or 'fp32'")


@contextlib.contextmanager
def autocast(device: torch.device, precision: str) -> Iterator[None]:
    """``torch.autocast`` on ``device``'s type in ``precision``'s dtype; fp32 runs without autocast."""
    dtype = PRECISIONS[precision]
    if dtype is None:
        yield
        return
    with torch.autocast(device_type=device.type, dtype=dtype):
        yield


def grad_scaler(precision: str, device: torch.device) -> torch.amp.GradScaler | None:
    """A gradient scaler for fp16 (its small exponent range underflows small gradients); None otherwise."""
    return torch.amp.GradScaler(device.type) if precision == "fp16" else None

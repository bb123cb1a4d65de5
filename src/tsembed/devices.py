"""Device strings checked before anything moves: one clear error for CUDA on a CPU-only build."""

from __future__ import annotations

import torch

from tsembed.errors import ConfigError


def check_device(device: str | torch.device) -> torch.device:
    """``device`` as a ``torch.device``, checked before anything moves there.

    Raises:
        ConfigError: an unknown device string, or a CUDA device on a build or machine without CUDA (torch
            itself would raise a bare ``AssertionError: Torch not compiled with CUDA enabled``).
    """
    try:
        resolved = torch.device(device)
    except (RuntimeError, TypeError) as exc:
        raise ConfigError(f"device {device!r} is not a torch device (use cpu, cuda or cuda:N): {exc}") from None
    if resolved.type == "cuda":
        if not torch.cuda.is_available():
            build = "this torch build has no CUDA support" if torch.version.cuda is None else "no CUDA GPU is visible"
            raise ConfigError(f"device {str(device)!r} asked for, but {build}; use --device cpu (or auto)")
        if resolved.index is not None and resolved.index >= torch.cuda.device_count():
            raise ConfigError(f"device {str(device)!r}: only {torch.cuda.device_count()} CUDA device(s) visible")
    return resolved

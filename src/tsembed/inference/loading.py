"""Load a saved model for inference, including directories written by ``tsembed export --expert``.

An exported expert has no adapters: its merged linears are stored in ``backbone_weights.safetensors``
(only the tensors that differ from the pretrained backbone). ``load_model`` applies them strictly, so an
exported model never silently runs with the un-merged base weights.
"""

from __future__ import annotations

from pathlib import Path

import torch
from torch import nn

from tsembed.model import MERGED_WEIGHTS_NAME, TSEmbedModel

BACKBONE_WEIGHTS_NAME = MERGED_WEIGHTS_NAME


def check_device(device: str | torch.device) -> torch.device:
    """``device`` as a ``torch.device``, checked before anything moves there.

    Raises:
        ConfigError: an unknown device string, or a CUDA device on a build or machine without CUDA (torch
            itself would raise a bare ``AssertionError: Torch not compiled with CUDA enabled``).
    """
    from tsembed.errors import ConfigError

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


def load_model(directory: str | Path, device: str | torch.device | None = None, strict: bool = True,
               backbone_path: str | Path | None = None) -> nn.Module:
    """``TSEmbedModel.from_pretrained`` (which applies merged backbone weights), in eval mode on ``device``.

    ``backbone_path`` overrides the saved backbone reference (a local directory or a cached Hub id).
    """
    if device is not None:
        device = check_device(device)
    model = TSEmbedModel.from_pretrained(directory, strict=strict, backbone_path=backbone_path)
    if device is not None:
        model.to(device)
    return model.eval()

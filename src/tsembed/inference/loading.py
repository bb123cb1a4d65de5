"""Load a saved model for inference, including directories written by ``tsembed export --expert``.

An exported expert has no adapters: its merged linears are stored in ``backbone_weights.safetensors``
(only the tensors that differ from the pretrained backbone). ``load_model`` applies them strictly, so an
exported model never silently runs with the un-merged base weights.
"""

from __future__ import annotations

from pathlib import Path

import torch
from safetensors.torch import load_file
from torch import nn

from tsembed.errors import AdapterError

BACKBONE_WEIGHTS_NAME = "backbone_weights.safetensors"


def load_backbone_weights(backbone: nn.Module, path: str | Path) -> None:
    """Overwrite backbone tensors from a safetensors file keyed by backbone state-dict names.

    Raises:
        AdapterError: a key the backbone lacks, or a shape mismatch (all listed, nothing copied).
    """
    tensors = load_file(str(path))
    state = backbone.state_dict()
    unknown = sorted(k for k in tensors if k not in state)
    shapes = sorted(
        f"{k}: file {tuple(v.shape)} vs model {tuple(state[k].shape)}"
        for k, v in tensors.items()
        if k in state and tuple(v.shape) != tuple(state[k].shape)
    )
    if unknown or shapes:
        raise AdapterError(f"{path}: keys not in the backbone {unknown}; shape mismatches {shapes}")
    with torch.no_grad():
        for key, value in tensors.items():
            state[key].copy_(value.to(state[key].dtype))


def load_model(directory: str | Path, device: str | torch.device | None = None, strict: bool = True) -> nn.Module:
    """``TSEmbedModel.from_pretrained`` plus merged backbone weights, in eval mode on ``device``."""
    from tsembed.model import TSEmbedModel

    directory = Path(directory)
    model = TSEmbedModel.from_pretrained(directory, strict=strict)
    weights = directory / BACKBONE_WEIGHTS_NAME
    if weights.is_file():
        load_backbone_weights(model.backbone, weights)
    if device is not None:
        model.to(device)
    return model.eval()

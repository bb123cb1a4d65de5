"""Load a saved model for inference, including directories written by ``tsembed export --expert``.

An exported expert has no adapters: its merged linears are stored in ``backbone_weights.safetensors``
(only the tensors that differ from the pretrained backbone). ``load_model`` applies them strictly, so an
exported model never silently runs with the un-merged base weights.
"""

from __future__ import annotations

from pathlib import Path

import torch
from torch import nn

from tsembed.model import load_backbone_weights  # noqa: F401 (re-exported)

BACKBONE_WEIGHTS_NAME = "backbone_weights.safetensors"


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

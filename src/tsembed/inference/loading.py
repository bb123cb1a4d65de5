"""Load a saved model for inference, including directories written by ``tsembed export --expert``.

An exported expert has no adapters: its merged linears are stored in ``backbone_weights.safetensors``
(only the tensors that differ from the pretrained backbone). ``load_model`` applies them strictly, so an
exported model never silently runs with the un-merged base weights.
"""

from __future__ import annotations

from pathlib import Path

import torch
from torch import nn

from tsembed.devices import check_device
from tsembed.model import MERGED_WEIGHTS_NAME, TSEmbedModel

BACKBONE_WEIGHTS_NAME = MERGED_WEIGHTS_NAME


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

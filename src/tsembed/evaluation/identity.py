"""Content hashes that key the embedding cache: which model, and which input.

A cached embedding may be reused only by the same model on the same input, so both keys hash content,
not names: the model key covers its config and every weight (a retrained adapter, a re-initialised
projector or a changed pooling all give a new key), the input key covers the text and the image bytes
(moving a suite keeps its cache; editing an image invalidates it).
"""

from __future__ import annotations

import hashlib
import io
import json
from pathlib import Path
from typing import Any

import torch
from torch import nn

from tsembed.errors import DataError
from tsembed.inputs import EmbedInput, input_key

#: Bumped when what a cached vector means changes (e.g. a new pooling convention).
CACHE_FORMAT = "tsembed-embeddings-v1"


def _tensor_bytes(tensor: torch.Tensor) -> bytes:
    flat = tensor.detach().reshape(-1).contiguous().cpu()
    return flat.view(torch.uint8).numpy().tobytes() if flat.numel() else b""


def model_identity(model: nn.Module) -> str:
    """Hash of the model's config and all its weights and buffers (32 hex characters).

    Hashing the frozen backbone too costs about a second per GB of weights, once per run; it makes the
    key right even for backbones whose config does not pin their weights (random-init test models).
    """
    h = hashlib.blake2b(digest_size=16)
    h.update(CACHE_FORMAT.encode())
    config = getattr(model, "config", None)
    to_dict = getattr(config, "to_dict", None)
    h.update(json.dumps(to_dict() if callable(to_dict) else repr(config), sort_keys=True, default=str).encode())
    for name, tensor in sorted(model.state_dict().items()):
        h.update(f"{name}|{tensor.dtype}|{tuple(tensor.shape)}".encode())
        h.update(_tensor_bytes(tensor))
    return h.hexdigest()


class InputHasher:
    """Content key of an ``EmbedInput``; each image file is read and hashed once per hasher."""

    def __init__(self) -> None:
        self._files: dict[str, str] = {}

    def image_digest(self, image: Any) -> str:
        if isinstance(image, str | Path):
            key = str(image)
            if key not in self._files:
                try:
                    self._files[key] = hashlib.blake2b(Path(image).read_bytes(), digest_size=16).hexdigest()
                except OSError as exc:
                    raise DataError(f"cannot read image '{image}' to key the embedding cache: {exc}") from None
            return self._files[key]
        buf = io.BytesIO()  # an in-memory PIL image: hash its pixels, mode and size
        buf.write(f"{image.mode}|{image.size}".encode())
        buf.write(image.tobytes())
        return hashlib.blake2b(buf.getvalue(), digest_size=16).hexdigest()

    def key(self, item: EmbedInput) -> str:
        """32 hex characters hashing ``input_key`` of ``item``, its image named by content."""
        text, image, task = input_key(item, self.image_digest)
        # a task-less input hashes [text, image], as before tasks existed: existing caches stay valid
        fields = [text, image] + ([task] if task is not None else [])
        h = hashlib.blake2b(digest_size=16)
        h.update(json.dumps(fields).encode())
        return h.hexdigest()

"""``encode``: the sentence-transformers-shaped inference API over the one model object.

Inputs go through ``tsembed.encoding.embed_items``: length-sorted batches through ``TSEmbedModel.forward``
(the forward training uses, so serve-time routing is trained routing) in inference and eval mode, returned
in the caller's order.

>>> model = load_model("runs/tsembed/final")
>>> q = encode_query(model, ["a red apple", {"text": "same but green", "image": "apple.png"}])
>>> d = encode_document(model, ["apple.png", "a banana"])
>>> similarity(q, d)  # [2, 2] cosine scores
"""

from __future__ import annotations

import logging
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import numpy as np
import torch
import torch.nn.functional as F
from torch import nn

from tsembed.encoding import embed_items
from tsembed.errors import ConfigError
from tsembed.inference.inputs import apply_instruction, to_embed_inputs
from tsembed.inputs import with_task

logger = logging.getLogger(__name__)


@dataclass
class Routing:
    """The router's decision per input: signature [N, L·E] and per-layer probabilities {layer: [N, E]}."""

    signature: Any
    layer_probs: dict[str, Any]

    def top1(self) -> dict[str, Any]:
        """Per layer, the top-1 expert of each input [N]."""
        return {name: probs.argmax(-1) for name, probs in self.layer_probs.items()}


def truncate_embeddings(embeddings: torch.Tensor, dim: int | None, normalize: bool) -> torch.Tensor:
    """Keep the first ``dim`` dimensions (Matryoshka-style) and L2-normalise again if asked."""
    if dim is not None:
        if not 1 <= dim <= embeddings.shape[-1]:
            raise ConfigError(f"truncate_dim must be in [1, {embeddings.shape[-1]}], got {dim}")
        embeddings = embeddings[..., :dim]
    return F.normalize(embeddings, dim=-1) if normalize else embeddings


def _show_progress(flag: bool | None, num_batches: int) -> bool:
    if flag is not None:
        return flag
    return num_batches > 1 and logging.getLogger("tsembed").getEffectiveLevel() <= logging.INFO


def encode(
    model: nn.Module,
    inputs: Any,
    instruction: str | None = None,
    batch_size: int = 32,
    normalize: bool = True,
    convert_to_numpy: bool = True,
    show_progress_bar: bool | None = None,
    return_routing: bool = False,
    truncate_dim: int | None = None,
    task: str | None = None,
) -> Any:
    """Embed texts, images and text+image inputs.

    Args:
        model: a ``TSEmbedModel`` (e.g. from ``load_model``).
        inputs: one input or a list of them: ``str``, PIL image, image path, ``{"text", "image"}`` dict
            or ``EmbedInput`` (see ``tsembed.inference.inputs``).
        instruction: prepended to each input (``"{text}"`` marks the content's slot); None: none.
        batch_size: inputs per forward pass.
        normalize: L2-normalise the output (again after ``truncate_dim``).
        convert_to_numpy: numpy arrays (float32) instead of CPU torch tensors.
        show_progress_bar: tqdm bar; None shows it for multi-batch calls when logging is at INFO.
        return_routing: also return a ``Routing`` (signature and per-layer router probabilities).
        truncate_dim: keep only the first dimensions.
        task: the task every input is embedded for (models trained with ``moe.task_hints``; e.g.
            ``"retrieval"`` for both the queries and the documents of a search); an ``EmbedInput`` that
            declares its own task keeps it (``tsembed.inputs.with_task``, the rule evaluation follows too).

    Returns:
        [N, D] embeddings for a list, [D] for a single input; with ``return_routing`` a tuple
        ``(embeddings, routing)`` (routing None for a model without adapters).

    Raises:
        DataError: an input cannot be read (names its position).
    """
    single = not isinstance(inputs, list | tuple)
    items = [apply_instruction(instruction, x) for x in to_embed_inputs([inputs] if single else list(inputs))]
    items = with_task(items, task)
    num_batches = -(-len(items) // max(batch_size, 1))
    bar = None
    if _show_progress(show_progress_bar, num_batches):
        from tqdm.auto import tqdm

        bar = tqdm(total=len(items), desc="Encoding", unit="input")
    try:
        out = embed_items(model, items, batch_size, return_routing, on_batch=None if bar is None else bar.update)
    finally:
        if bar is not None:
            bar.close()
    embeddings = truncate_embeddings(out.embeddings, truncate_dim, normalize)
    routing = None
    if out.signature is not None:
        routing = Routing(out.signature, dict(out.layer_probs))
    if convert_to_numpy:
        embeddings = embeddings.numpy().astype(np.float32, copy=False)
        if routing is not None:
            routing = Routing(routing.signature.numpy(), {k: v.numpy() for k, v in routing.layer_probs.items()})
    if single:
        embeddings = embeddings[0]
        if routing is not None:
            routing = Routing(routing.signature[0], {k: v[0] for k, v in routing.layer_probs.items()})
    return (embeddings, routing) if return_routing else embeddings


def _config_instruction(model: nn.Module, name: str) -> str:
    config = getattr(model, "config", None)
    return getattr(config, name, "") or ""


def encode_query(model: nn.Module, inputs: Any, **kwargs: Any) -> Any:
    """``encode`` with the model's ``query_instruction`` (unless ``instruction=`` is given)."""
    kwargs.setdefault("instruction", _config_instruction(model, "query_instruction"))
    return encode(model, inputs, **kwargs)


def encode_document(model: nn.Module, inputs: Any, **kwargs: Any) -> Any:
    """``encode`` with the model's ``document_instruction`` (unless ``instruction=`` is given)."""
    kwargs.setdefault("instruction", _config_instruction(model, "document_instruction"))
    return encode(model, inputs, **kwargs)


def similarity(a: Any, b: Any) -> Any:
    """Cosine similarity matrix [N, M] of two sets of embeddings ([D] vectors count as one row).

    Returns numpy when both inputs are numpy, else a torch tensor.
    """
    as_numpy = isinstance(a, np.ndarray) and isinstance(b, np.ndarray)
    ta = torch.as_tensor(np.asarray(a) if isinstance(a, np.ndarray) else a).float()
    tb = torch.as_tensor(np.asarray(b) if isinstance(b, np.ndarray) else b).float()
    ta, tb = ta.reshape(-1, ta.shape[-1]), tb.reshape(-1, tb.shape[-1])
    scores = F.normalize(ta, dim=-1) @ F.normalize(tb, dim=-1).T  # [N, M]
    return scores.numpy() if as_numpy else scores


class Encoder:
    """A loaded model with the ``encode`` family as methods (sentence-transformers shape).

    >>> encoder = Encoder.from_pretrained("runs/tsembed/final")
    >>> encoder.encode_query("a red apple").shape
    (384,)
    """

    def __init__(self, model: nn.Module) -> None:
        self.model = model.eval()

    @classmethod
    def from_pretrained(cls, directory: str | Path, device: str | torch.device | None = None,
                        backbone_path: str | Path | None = None) -> Encoder:
        """Load a saved model; ``backbone_path`` overrides its backbone reference (directory or cached Hub id)."""
        from tsembed.inference.loading import load_model

        return cls(load_model(directory, device=device, backbone_path=backbone_path))

    def encode(self, inputs: Any, **kwargs: Any) -> Any:
        return encode(self.model, inputs, **kwargs)

    def encode_query(self, inputs: Any, **kwargs: Any) -> Any:
        return encode_query(self.model, inputs, **kwargs)

    def encode_document(self, inputs: Any, **kwargs: Any) -> Any:
        return encode_document(self.model, inputs, **kwargs)

    @staticmethod
    def similarity(a: Any, b: Any) -> Any:
        return similarity(a, b)

    def save_pretrained(self, directory: str | Path, eval_results: Any = None) -> Path:
        """The model directory plus its README model card; ``eval_results`` (``EvalResults``, dict or JSON path)
        become the card's model-index."""
        return Path(self.model.save_pretrained(directory, eval_results=eval_results))

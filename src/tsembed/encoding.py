"""The one batched encode: length-sorted batches through the model's one forward, in inference mode.

``encode``, the evaluation cache, the server, corpus embedding, pruning and routing analysis all embed
through ``encode_batches`` (directly, or through ``embed_items`` when they want every result at once), so
batching, the eval-mode guard and what comes back are decided here once. Inputs are sorted longest
first by ``tsembed.inputs.length_key``: each batch pads little, and an out-of-memory error shows up in
the first batch rather than the last. The training step runs the same forward with gradients and
shares the input preparation (``TSEmbedModel.prepare`` + ``move_batch``), not this loop.
"""

from __future__ import annotations

from collections.abc import Callable, Iterator, Sequence
from contextlib import contextmanager
from dataclasses import dataclass, field
from typing import Any

import torch
from torch import nn

from tsembed.errors import ConfigError
from tsembed.inputs import EmbedInput, length_key
from tsembed.model import move_batch


@dataclass
class EncodedBatch:
    """One forward's results on the CPU, rows in batch order.

    indices: position of each row in the caller's input list; embeddings [b, D] float32; token_counts [b]
    (real tokens incl. visual ones; 0 when the backbone does not say); layer_probs {layer: [b, E]} float32
    and signature [b, L·E] when routing was asked for and the model has adapters, else None.
    """

    indices: list[int]
    embeddings: torch.Tensor
    token_counts: list[int]
    layer_probs: dict[str, torch.Tensor] | None = None
    signature: torch.Tensor | None = None


@dataclass
class EncodeBatchOutput:
    """Everything one pass over a list of inputs produced, in input order.

    embeddings [N, D]; token_counts [N]; signature [N, L·E] and layer_probs {layer: [N, E]} when routing
    was asked for and the model has adapters (else None and empty).
    """

    embeddings: torch.Tensor
    token_counts: list[int]
    signature: torch.Tensor | None = None
    layer_probs: dict[str, torch.Tensor] = field(default_factory=dict)


@contextmanager
def eval_mode(model: nn.Module) -> Iterator[nn.Module]:
    """Run a block with ``model`` in eval mode (no dropout, no router jitter), restoring train mode after."""
    was_training = model.training
    if was_training:  # eval() walks every module: skip it when the model is already in eval mode
        model.eval()
    try:
        yield model
    finally:
        if was_training:
            model.train()


def model_device(model: nn.Module) -> torch.device:
    return next(model.parameters()).device


def length_sorted_batches(items: Sequence[EmbedInput], batch_size: int) -> list[list[int]]:
    """Positions of ``items`` in batches of ``batch_size``, longest inputs first (ties keep input order)."""
    if batch_size < 1:
        raise ConfigError(f"batch_size must be >= 1, got {batch_size}")
    order = sorted(range(len(items)), key=lambda i: -length_key(items[i]))
    return [order[start : start + batch_size] for start in range(0, len(order), batch_size)]


def _token_counts(prepared: dict[str, Any], n: int) -> list[int]:
    mask = prepared.get("attention_mask")
    if isinstance(mask, torch.Tensor) and mask.dim() == 2 and mask.shape[0] == n:
        return [int(c) for c in mask.sum(dim=1).tolist()]
    return [0] * n


def encode_batches(
    model: nn.Module,
    items: Sequence[EmbedInput],
    consume: Callable[[EncodedBatch], None],
    batch_size: int = 32,
    with_routing: bool = False,
    pilot: bool = False,
) -> None:
    """Embed ``items`` in length-sorted batches and hand each batch's results to ``consume``.

    The model runs in eval mode under ``torch.inference_mode`` (its train mode is restored after, also
    when a batch or ``consume`` raises). ``consume`` sees each batch as soon as it is done, so a caller
    can cache or report partial results of a run that fails half-way.

    Args:
        model: A ``TSEmbedModel`` (any device).
        items: The inputs.
        consume: Called once per batch, longest inputs first.
        batch_size: Inputs per forward.
        with_routing: Also return router probabilities and signatures (models with adapters).
        pilot: Return what a pilot router reads instead (``TSEmbedModel.pilot_embeddings``: the base model's
            embedding, adapters bypassed).

    Raises:
        ConfigError: ``batch_size`` < 1.
    """
    batches = length_sorted_batches(items, batch_size)
    device = model_device(model)
    with eval_mode(model), torch.inference_mode():
        for idx in batches:
            prepared = model.prepare([items[i] for i in idx])
            counts = _token_counts(prepared, len(idx))
            if pilot:
                consume(EncodedBatch(idx, model.pilot_embeddings(**move_batch(prepared, device)).float().cpu(), counts))
                continue
            out = model(**move_batch(prepared, device))
            batch = EncodedBatch(idx, out.embeddings.float().cpu(), counts)
            if with_routing and out.routing is not None:
                batch.layer_probs = {name: p.float().cpu() for name, p in out.routing.layer_probs.items()}
                batch.signature = out.routing.signature.float().cpu()
            consume(batch)


def embed_items(
    model: nn.Module,
    items: Sequence[EmbedInput],
    batch_size: int = 32,
    with_routing: bool = False,
    on_batch: Callable[[int], None] | None = None,
    pilot: bool = False,
) -> EncodeBatchOutput:
    """``encode_batches`` with every result gathered back into input order.

    ``on_batch(n)`` is called after each forward with its batch size (progress bars, server metrics).
    """
    done: list[EncodedBatch] = []

    def keep(batch: EncodedBatch) -> None:
        done.append(batch)
        if on_batch is not None:
            on_batch(len(batch.indices))

    encode_batches(model, items, keep, batch_size, with_routing, pilot=pilot)
    # gathered outside inference mode: callers get ordinary tensors they may modify in place
    order = torch.tensor([i for b in done for i in b.indices], dtype=torch.long)
    inverse = torch.empty_like(order)
    inverse[order] = torch.arange(len(order))
    tokens = [0] * len(items)
    for b in done:
        for i, count in zip(b.indices, b.token_counts, strict=True):
            tokens[i] = count
    if done:
        embeddings = torch.cat([b.embeddings for b in done])[inverse]
    else:
        embeddings = torch.empty(0, getattr(model.backbone, "hidden_size", 0))
    routed = [b for b in done if b.layer_probs is not None]
    if not routed:
        return EncodeBatchOutput(embeddings, tokens)
    return EncodeBatchOutput(
        embeddings,
        tokens,
        signature=torch.cat([b.signature for b in routed])[inverse],
        layer_probs={name: torch.cat([b.layer_probs[name] for b in routed])[inverse] for name in routed[0].layer_probs},
    )

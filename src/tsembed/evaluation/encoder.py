"""Encode inputs through the model's one forward, reusing cached results and caching new ones.

Only inputs missing from the cache reach the model, through the one batched encode
(``tsembed.encoding.encode_batches``). Each batch is cached as soon as it is done and the cache is flushed
even when a batch fails or the run is interrupted, so the next run resumes where this one stopped.
"""

from __future__ import annotations

import time
from collections.abc import Sequence
from dataclasses import dataclass
from pathlib import Path

import numpy as np
import torch
from torch import nn

from tsembed.encoding import EncodedBatch, encode_batches
from tsembed.evaluation.cache import EmbeddingCache
from tsembed.evaluation.identity import InputHasher, model_identity
from tsembed.inputs import EmbedInput, with_task


@dataclass
class Encoded:
    """Results in input order: embeddings [n, D]; routing [n, L, E] and its layer names when asked for
    and the model has adapters (else None)."""

    embeddings: np.ndarray
    routing: np.ndarray | None = None
    layers: list[str] | None = None


@dataclass
class EncodeStats:
    """What the encoder did, for throughput reports and cache-reuse checks."""

    requested: int = 0
    from_cache: int = 0
    encoded: int = 0
    seconds: float = 0.0

    @property
    def inputs_per_second(self) -> float:
        return self.encoded / self.seconds if self.seconds > 0 else float("nan")

    def to_dict(self) -> dict[str, float]:
        return {
            "requested": self.requested,
            "from_cache": self.from_cache,
            "encoded": self.encoded,
            "encode_seconds": round(self.seconds, 3),
            "inputs_per_second": round(self.inputs_per_second, 2),
        }


class CachedEncoder:
    """Embeds ``EmbedInput``s with a ``TSEmbedModel``, each distinct input at most once per cache.

    Args:
        model: The model (any device); put in eval mode while encoding, its mode restored after.
        cache_dir: Root of the on-disk cache (a sub-folder per model identity); None: memory only.
        batch_size: Inputs per forward.
        progress: Show a tqdm bar.
        model_id: Override the model identity hash (e.g. when the caller already knows it).
        shard_size: Inputs per cache shard (the most an interruption can lose).
    """

    def __init__(
        self,
        model: nn.Module,
        cache_dir: str | Path | None = None,
        *,
        batch_size: int = 32,
        progress: bool = True,
        model_id: str | None = None,
        shard_size: int = 2048,
    ) -> None:
        if batch_size < 1:
            raise ValueError(f"batch_size must be >= 1, got {batch_size}")
        self.model = model
        self.model_id = model_id or model_identity(model)
        directory = None if cache_dir is None else Path(cache_dir).expanduser() / self.model_id
        self.cache = EmbeddingCache(directory, shard_size)
        self.batch_size = batch_size
        self.progress = progress
        self.hasher = InputHasher()
        self.stats = EncodeStats()

    @property
    def has_routing(self) -> bool:
        """A router with a choice to make: MoE adapters with two or more routes (routed or null experts), not a
        base model or one LoRA."""
        if not getattr(self.model, "has_adapters", False):
            return False
        moe = getattr(getattr(self.model, "config", None), "moe", None)
        return moe is None or getattr(moe, "num_experts", 2) + getattr(moe, "num_null_experts", 0) > 1

    def keys(self, inputs: Sequence[EmbedInput]) -> list[str]:
        return [self.hasher.key(x) for x in inputs]

    def encode(self, inputs: Sequence[EmbedInput], *, need_routing: bool = False, desc: str = "encoding",
               task: str | None = None) -> Encoded:
        """Embeddings (and, if asked and available, routing) of ``inputs`` in their order.

        ``task`` (an eval set's meta-task) is declared by every input that declares none, as ``encode`` does
        (``tsembed.inputs.with_task``), when the model routes on task hints; other models ignore it, so a
        candidate shared by datasets of different tasks stays one cache entry.
        """
        if getattr(self.model, "task_hints", None):
            inputs = with_task(inputs, task)
        need_routing = need_routing and self.has_routing
        keys = self.keys(inputs)
        todo: dict[str, EmbedInput] = {}
        for key, item in zip(keys, inputs, strict=True):
            if key not in todo and not self.cache.has(key, need_routing):
                todo[key] = item
        self.stats.requested += len(keys)
        self.stats.from_cache += len(set(keys)) - len(todo)
        if todo:
            self._run(todo, desc)
        embeddings = self.cache.embeddings(keys)
        if not need_routing:
            return Encoded(embeddings)
        return Encoded(embeddings, self.cache.routing(keys), list(self.cache.layers or []))

    def _run(self, todo: dict[str, EmbedInput], desc: str) -> None:
        from tqdm.auto import tqdm

        keys, items = list(todo), list(todo.values())
        start = time.perf_counter()
        bar = tqdm(total=len(items), desc=desc, unit="input", disable=not self.progress, leave=False)

        def store(batch: EncodedBatch) -> None:
            routing, layers = None, None
            if batch.layer_probs is not None:
                layers = list(batch.layer_probs)
                routing = torch.stack(list(batch.layer_probs.values()), dim=1).numpy()  # [b, L, E]
            self.cache.add([keys[i] for i in batch.indices], batch.embeddings.numpy(), routing, layers)
            self.stats.encoded += len(batch.indices)
            bar.update(len(batch.indices))

        try:  # routing is cached whenever the model has it, so a later routing analysis re-encodes nothing
            encode_batches(self.model, items, store, self.batch_size, with_routing=True)
        finally:
            bar.close()
            self.cache.flush()
            self.stats.seconds += time.perf_counter() - start


def encoder_for(
    model: nn.Module, encoder: CachedEncoder | None, cache_dir: str | Path | None, **kwargs
) -> CachedEncoder:
    """``encoder`` if given (it must wrap this very model), else a new one."""
    if encoder is None:
        return CachedEncoder(model, cache_dir, **kwargs)
    if encoder.model is not model:
        raise ValueError("the encoder passed in wraps another model; build it with CachedEncoder(model, ...)")
    return encoder

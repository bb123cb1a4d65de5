"""On-disk embedding cache: one folder per model identity, append-only shards written atomically.

Layout: ``<cache_dir>/<model identity>/<shard>.npz`` with arrays ``keys`` [n] (input content keys),
``embeddings`` [n, D] float32 and, for models with adapters, ``routing`` [n, L, E] float32 (per-input
router probabilities) and ``layers`` [L] (layer names). Every shard appears whole or not at all, so an
interrupted run loses at most the inputs encoded since its last flush, and a rerun encodes only those.
Shards never change once written; concurrent runs write distinct shard names. A model's shards are read
into memory when the cache opens (about 4·D bytes per input, plus 4·L·E with routing).
"""

from __future__ import annotations

import logging
import os
import secrets
import time
import zipfile
from pathlib import Path

import numpy as np

from tsembed.fileio import atomic_write

logger = logging.getLogger(__name__)


class EmbeddingCache:
    """Embeddings (and routing) of one model by input key, backed by shards in ``directory``.

    Args:
        directory: Folder of this model's shards (``<cache_dir>/<model identity>``); None keeps
            everything in memory only.
        shard_size: Inputs buffered before a shard is written.
    """

    def __init__(self, directory: str | Path | None, shard_size: int = 2048) -> None:
        self.directory = None if directory is None else Path(directory)
        self.shard_size = shard_size
        self.layers: list[str] | None = None
        self._embeddings: dict[str, np.ndarray] = {}
        self._routing: dict[str, np.ndarray] = {}
        self._pending: list[str] = []
        if self.directory is not None and self.directory.is_dir():
            self._load(self.directory)

    def _load(self, directory: Path) -> None:
        for path in sorted(directory.glob("*.npz")):
            try:
                with np.load(path, allow_pickle=False) as data:
                    keys, emb = data["keys"], data["embeddings"]
                    routing = data["routing"] if "routing" in data.files else None
                    layers = [str(x) for x in data["layers"]] if "layers" in data.files else None
            except (OSError, ValueError, KeyError, zipfile.BadZipFile) as exc:
                # Only a foreign or damaged file can get here (ours land atomically): skip, never die.
                logger.warning("ignoring unreadable embedding-cache shard %s (%s)", path, exc)
                continue
            if layers is not None:
                self.layers = self.layers or layers
            for i, key in enumerate(keys.tolist()):
                self._embeddings[key] = emb[i]
                if routing is not None:
                    self._routing[key] = routing[i]
        if self._embeddings:
            logger.info("embedding cache %s: %d inputs cached", directory, len(self._embeddings))

    def __len__(self) -> int:
        return len(self._embeddings)

    def __contains__(self, key: str) -> bool:
        return key in self._embeddings

    def has(self, key: str, need_routing: bool = False) -> bool:
        return key in self._embeddings and (not need_routing or key in self._routing)

    def embeddings(self, keys: list[str]) -> np.ndarray:
        """[len(keys), D] float32 in the order of ``keys`` (all must be cached)."""
        return np.stack([self._embeddings[k] for k in keys]) if keys else np.zeros((0, 0), np.float32)

    def routing(self, keys: list[str]) -> np.ndarray:
        """[len(keys), L, E] float32 router probabilities (all must be cached with routing)."""
        return np.stack([self._routing[k] for k in keys])

    def add(
        self,
        keys: list[str],
        embeddings: np.ndarray,
        routing: np.ndarray | None = None,
        layers: list[str] | None = None,
    ) -> None:
        """Record new results; a shard is written once ``shard_size`` inputs are pending."""
        if layers is not None:
            self.layers = self.layers or list(layers)
        for i, key in enumerate(keys):
            self._embeddings[key] = np.asarray(embeddings[i], dtype=np.float32)
            if routing is not None:
                self._routing[key] = np.asarray(routing[i], dtype=np.float32)
            self._pending.append(key)
        if len(self._pending) >= self.shard_size:
            self.flush()

    def flush(self) -> None:
        """Write the pending inputs as one shard (atomically); no-op in memory-only mode."""
        if not self._pending or self.directory is None:
            self._pending = []
            return
        keys = list(dict.fromkeys(self._pending))
        arrays: dict[str, np.ndarray] = {"keys": np.array(keys), "embeddings": self.embeddings(keys)}
        if all(k in self._routing for k in keys) and self.layers is not None:
            arrays["routing"] = self.routing(keys)
            arrays["layers"] = np.array(self.layers)
        name = f"{time.time_ns():020d}-{os.getpid()}-{secrets.token_hex(3)}.npz"

        def write(tmp: Path) -> None:
            with tmp.open("wb") as fh:  # a file object: np.savez would append ".npz" to a bare path
                np.savez(fh, **arrays)

        atomic_write(self.directory / name, write)
        self._pending = []

"""Disk cache of frozen vision features, keyed by image content, with an in-memory LRU on top.

A frozen vision tower maps the same image to the same features, so an epoch after the first (and
every evaluation after training) skips it. Entries live under
``<cache dir>/<namespace>/<digest[:2]>/<digest>.bin``; the namespace hashes everything the features
depend on (weights, image size, token grid, normalisation), so changing any of them never reads
stale features. Each file carries the sha256 of its payload: a truncated or garbled entry is
detected, reported with a ``VisionCacheWarning``, deleted and recomputed by the caller.
Writes go to a temporary file and are renamed into place, so concurrent processes never see half
an entry.
"""

from __future__ import annotations

import hashlib
import json
import os
import struct
import tempfile
import warnings
from collections import OrderedDict
from dataclasses import dataclass
from pathlib import Path

import numpy as np
import torch

MAGIC = b"TSVF1\n"
_HEADER_LEN = struct.Struct("<I")


class VisionCacheWarning(UserWarning):
    """A cache entry was unreadable and will be recomputed."""


def default_cache_dir() -> Path:
    """``$TSEMBED_CACHE_DIR/vision`` if set, else ``~/.cache/tsembed/vision``."""
    root = os.environ.get("TSEMBED_CACHE_DIR")
    base = Path(root).expanduser() if root else Path.home() / ".cache" / "tsembed"
    return base / "vision"


def namespace_for(identity: dict) -> str:
    """Short stable hash of everything the cached features depend on."""
    blob = json.dumps(identity, sort_keys=True, default=str).encode()
    return hashlib.sha256(blob).hexdigest()[:16]


@dataclass
class CacheStats:
    memory_hits: int = 0
    disk_hits: int = 0
    misses: int = 0
    writes: int = 0
    corrupted: int = 0


class VisionFeatureCache:
    """Features [T, C] per image digest: memory LRU first, then disk.

    Args:
        directory: cache root; None means ``default_cache_dir()``.
        namespace: subdirectory for one feature configuration (see ``namespace_for``).
        memory_items: LRU capacity in entries (0 turns the memory layer off).
        disk: False keeps the cache in memory only.
    """

    def __init__(
        self, directory: str | Path | None, namespace: str, memory_items: int = 1024, disk: bool = True
    ) -> None:
        self.root = (Path(directory).expanduser() if directory else default_cache_dir()) / namespace
        self.memory_items = memory_items
        self.disk = disk
        self.stats = CacheStats()
        self._memory: OrderedDict[str, torch.Tensor] = OrderedDict()

    def path_for(self, digest: str) -> Path:
        return self.root / digest[:2] / f"{digest}.bin"

    def get_memory(self, digest: str) -> torch.Tensor | None:
        features = self._memory.get(digest)
        if features is not None:
            self._memory.move_to_end(digest)
            self.stats.memory_hits += 1
        return features

    def get(self, digest: str) -> torch.Tensor | None:
        """Cached features or None (a miss, or a corrupted entry that was removed)."""
        features = self.get_memory(digest)
        if features is not None:
            return features
        if self.disk:
            features = self._read(self.path_for(digest))
            if features is not None:
                self.stats.disk_hits += 1
                self._remember(digest, features)
                return features
        self.stats.misses += 1
        return None

    def put(self, digest: str, features: torch.Tensor) -> None:
        features = features.detach().to("cpu", torch.float32).contiguous()
        self._remember(digest, features)
        if self.disk:
            self._write(self.path_for(digest), features)
            self.stats.writes += 1

    def clear_memory(self) -> None:
        self._memory.clear()

    def _remember(self, digest: str, features: torch.Tensor) -> None:
        if self.memory_items <= 0:
            return
        self._memory[digest] = features
        self._memory.move_to_end(digest)
        while len(self._memory) > self.memory_items:
            self._memory.popitem(last=False)

    def _write(self, path: Path, features: torch.Tensor) -> None:
        payload = features.numpy().tobytes()
        header = json.dumps(
            {"shape": list(features.shape), "dtype": "float32", "sha256": hashlib.sha256(payload).hexdigest()}
        ).encode()
        path.parent.mkdir(parents=True, exist_ok=True)
        handle, tmp = tempfile.mkstemp(dir=path.parent, prefix=".tmp-", suffix=".bin")
        try:
            with os.fdopen(handle, "wb") as out:
                out.write(MAGIC + _HEADER_LEN.pack(len(header)) + header + payload)
            os.replace(tmp, path)
        except BaseException:
            Path(tmp).unlink(missing_ok=True)
            raise

    def _read(self, path: Path) -> torch.Tensor | None:
        try:
            blob = path.read_bytes()
        except FileNotFoundError:
            return None
        problem = _check_entry(blob)
        if isinstance(problem, str):
            self.stats.corrupted += 1
            warnings.warn(
                f"vision cache entry {path} is corrupted ({problem}); recomputing it", VisionCacheWarning, stacklevel=3
            )
            path.unlink(missing_ok=True)
            return None
        return problem


def _check_entry(blob: bytes) -> torch.Tensor | str:
    """The entry's features, or a string saying why the bytes are not a valid entry."""
    if not blob.startswith(MAGIC) or len(blob) < len(MAGIC) + _HEADER_LEN.size:
        return "bad magic or truncated header"
    start = len(MAGIC) + _HEADER_LEN.size
    (header_len,) = _HEADER_LEN.unpack(blob[len(MAGIC) : start])
    try:
        header = json.loads(blob[start : start + header_len])
        shape = [int(n) for n in header["shape"]]
        checksum = str(header["sha256"])
    except (ValueError, KeyError, TypeError):
        return "unreadable header"
    payload = blob[start + header_len :]
    if len(payload) != 4 * int(np.prod(shape)):
        return f"payload has {len(payload)} bytes, expected {4 * int(np.prod(shape))}"
    if hashlib.sha256(payload).hexdigest() != checksum:
        return "checksum mismatch"
    return torch.from_numpy(np.frombuffer(payload, dtype=np.float32).copy()).view(shape)

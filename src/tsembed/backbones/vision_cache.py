"""Disk cache of frozen vision features, keyed by image content, with an in-memory LRU on top.

A frozen vision tower maps the same image to the same features, so an epoch after the first (and
every evaluation after training) skips it. Entries live under
``<cache dir>/<namespace>/<digest[:2]>/<digest>.bin``; the namespace hashes everything the features
depend on (weights, image size, token grid, normalisation), so changing any of them never reads
stale features. Each file carries the sha256 of its payload: a truncated or garbled entry is
detected, reported with a ``VisionCacheWarning``, deleted and recomputed by the caller.
Writes go to a temporary file and are renamed into place, so concurrent processes never see half
an entry. Entries are private to the user (0600, folders 0700): they are derived from the user's images.
Both layers are bounded: the memory LRU by entries and bytes, the disk by bytes (the least recently
used files are deleted past the cap).
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

from tsembed.fileio import cache_root

MAGIC = b"TSVF1\n"
DEFAULT_DISK_MAX_BYTES = 8 * 2**30
DEFAULT_MEMORY_MAX_BYTES = 512 * 2**20
_HEADER_LEN = struct.Struct("<I")


class VisionCacheWarning(UserWarning):
    """A cache entry was unreadable and will be recomputed."""


def default_cache_dir() -> Path:
    """``$TSEMBED_CACHE_DIR/vision`` if set, else ``~/.cache/tsembed/vision``."""
    return cache_root() / "vision"


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
    evicted: int = 0


class VisionFeatureCache:
    """Features [T, C] per image digest: memory LRU first, then disk.

    Args:
        directory: cache root; None means ``default_cache_dir()``.
        namespace: subdirectory for one feature configuration (see ``namespace_for``).
        memory_items: LRU capacity in entries (0 turns the memory layer off).
        disk: False keeps the cache in memory only.
        memory_max_bytes: LRU capacity in bytes of features.
        disk_max_bytes: size of the namespace's folder past which the least recently used entries are deleted.
    """

    def __init__(
        self, directory: str | Path | None, namespace: str, memory_items: int = 1024, disk: bool = True,
        memory_max_bytes: int = DEFAULT_MEMORY_MAX_BYTES, disk_max_bytes: int = DEFAULT_DISK_MAX_BYTES,
    ) -> None:
        self.root = (Path(directory).expanduser() if directory else default_cache_dir()) / namespace
        self.memory_items = memory_items
        self.disk = disk
        self.memory_max_bytes, self.disk_max_bytes = memory_max_bytes, disk_max_bytes
        self.stats = CacheStats()
        self._memory: OrderedDict[str, torch.Tensor] = OrderedDict()
        self._memory_bytes = 0
        self._disk_bytes: int | None = None  # measured on the first write

    def configure(self, disk: bool | None = None, memory_max_bytes: int | None = None) -> None:
        """Change where entries live (the server keeps them in memory only); shrinks the LRU at once."""
        if disk is not None:
            self.disk = disk
        if memory_max_bytes is not None:
            self.memory_max_bytes = memory_max_bytes
            self._shrink_memory()

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
        self._memory_bytes = 0

    def _remember(self, digest: str, features: torch.Tensor) -> None:
        size = features.numel() * features.element_size()
        if self.memory_items <= 0 or size > self.memory_max_bytes:
            return
        old = self._memory.pop(digest, None)
        if old is not None:
            self._memory_bytes -= old.numel() * old.element_size()
        self._memory[digest] = features
        self._memory_bytes += size
        self._shrink_memory()

    def _shrink_memory(self) -> None:
        while self._memory and (len(self._memory) > self.memory_items or self._memory_bytes > self.memory_max_bytes):
            _, dropped = self._memory.popitem(last=False)
            self._memory_bytes -= dropped.numel() * dropped.element_size()

    def _write(self, path: Path, features: torch.Tensor) -> None:
        payload = features.numpy().tobytes()
        header = json.dumps(
            {"shape": list(features.shape), "dtype": "float32", "sha256": hashlib.sha256(payload).hexdigest()}
        ).encode()
        blob = MAGIC + _HEADER_LEN.pack(len(header)) + header + payload
        self._make_room(len(blob))
        path.parent.mkdir(mode=0o700, parents=True, exist_ok=True)
        handle, tmp = tempfile.mkstemp(dir=path.parent, prefix=".tmp-", suffix=".bin")  # created 0600
        try:
            with os.fdopen(handle, "wb") as out:
                out.write(blob)
            os.replace(tmp, path)
        except BaseException:
            Path(tmp).unlink(missing_ok=True)
            raise
        self._disk_bytes = (self._disk_bytes or 0) + len(blob)

    def _entries(self) -> list[tuple[float, int, Path]]:
        """(last use, size, path) of every entry on disk."""
        out = []
        for path in self.root.glob("*/*.bin"):
            try:
                st = path.stat()
            except FileNotFoundError:  # another process evicted it meanwhile
                continue
            out.append((st.st_mtime, st.st_size, path))
        return out

    def _make_room(self, incoming: int) -> None:
        """Delete least recently used entries until ``incoming`` more bytes fit under ``disk_max_bytes``
        (to 90% of it, so eviction runs once per many writes, not on every one)."""
        if self._disk_bytes is None:
            self._disk_bytes = sum(size for _, size, _ in self._entries())
        if self._disk_bytes + incoming <= self.disk_max_bytes:
            return
        entries = sorted(self._entries())
        total = sum(size for _, size, _ in entries)
        target = int(self.disk_max_bytes * 0.9) - incoming
        for _, size, path in entries:
            if total <= target:
                break
            path.unlink(missing_ok=True)
            total -= size
            self.stats.evicted += 1
        self._disk_bytes = total

    def _read(self, path: Path) -> torch.Tensor | None:
        try:
            blob = path.read_bytes()
        except FileNotFoundError:
            return None
        try:
            os.utime(path)  # a read is a use: eviction deletes the least recently used entries
        except OSError:  # a read-only shared cache still serves hits
            pass
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

"""Per-query hits: ``hits.json`` beside ``results.json``, the input of paired bootstrap intervals.

For each dataset it keeps the hit@1 (0 or 1) of every query row, in file order, and a cluster id per row
when rows carry one (``null`` otherwise: each row is its own cluster). This module is the only one that
writes or parses the file::

    {"format": "tsembed-hits", "version": 1, "metric": "hit@1",
     "datasets": {NAME: {"hits": [1, 0, ...], "clusters": ["e17", "e17", ...] | null}}}
"""

from __future__ import annotations

import json
from collections.abc import Mapping, Sequence
from dataclasses import dataclass
from pathlib import Path

import numpy as np

from tsembed.errors import DataError
from tsembed.fileio import atomic_write

HITS = "hits.json"
FORMAT, VERSION = "tsembed-hits", 1


@dataclass(frozen=True)
class DatasetHits:
    """hit@1 of each query row of one dataset (file order) and, where rows carry one, each row's cluster."""

    hits: np.ndarray  # [N] uint8, 0 or 1
    clusters: tuple[str, ...] | None = None  # [N], or None: every row is its own cluster

    def __post_init__(self) -> None:
        hits = np.asarray(self.hits)
        if hits.ndim != 1 or not np.isin(hits, (0, 1)).all():
            raise DataError("per-query hits must be a flat list of 0 and 1")
        object.__setattr__(self, "hits", hits.astype(np.uint8))
        if self.clusters is not None:
            if len(self.clusters) != len(hits):
                raise DataError(f"{len(self.clusters)} cluster ids for {len(hits)} query rows")
            object.__setattr__(self, "clusters", tuple(str(c) for c in self.clusters))

    def __len__(self) -> int:
        return len(self.hits)


def hits_path(directory: str | Path) -> Path:
    """Where the hits of the results in ``directory`` are kept."""
    return Path(directory) / HITS


def write_hits(directory: str | Path, datasets: Mapping[str, DatasetHits | Sequence[int]]) -> Path:
    """Write ``directory/hits.json`` atomically; values are ``DatasetHits`` or plain 0/1 sequences."""
    body = {}
    for name, value in datasets.items():
        hits = value if isinstance(value, DatasetHits) else DatasetHits(np.asarray(value))
        body[name] = {"hits": [int(x) for x in hits.hits],
                      "clusters": None if hits.clusters is None else list(hits.clusters)}
    text = json.dumps({"format": FORMAT, "version": VERSION, "metric": "hit@1", "datasets": body}) + "\n"
    return atomic_write(hits_path(directory), lambda p: p.write_text(text, encoding="utf-8"))


def load_hits(path: str | Path) -> dict[str, DatasetHits]:
    """Dataset -> hits from a ``hits.json`` file or the directory holding one.

    Raises:
        DataError: the file is missing, is not JSON, or is not a hits file of this version.
    """
    path = Path(path)
    if path.is_dir():
        path = hits_path(path)
    try:
        data = json.loads(path.read_text(encoding="utf-8"))
    except (OSError, json.JSONDecodeError) as exc:
        raise DataError(f"cannot read per-query hits '{path}': {exc}") from None
    if not isinstance(data, dict) or data.get("format") != FORMAT or data.get("version") != VERSION:
        raise DataError(f"'{path}' is not a {FORMAT} file of version {VERSION}")
    try:
        return {name: DatasetHits(np.asarray(d["hits"], dtype=np.int64), d.get("clusters"))
                for name, d in data["datasets"].items()}
    except (KeyError, TypeError, ValueError, DataError) as exc:
        raise DataError(f"'{path}': malformed per-query hits ({exc})") from None

"""Vector indexes on FAISS: build from an embeddings table, save beside its metadata, search with hits.

Embeddings are L2-normalised, so every index uses inner product (= cosine). Kinds:

* ``flat``: exact search, the reference;
* ``hnsw``: graph index, no training, fast and accurate in memory;
* ``ivfpq``: inverted lists + product quantisation, compact for large corpora (needs training data).

An index directory holds ``index.faiss``, ``meta.parquet`` (one row per vector: id, text, image, ...)
and ``index.json`` (kind, dimension, parameters, and the model that embedded the corpus).
"""

from __future__ import annotations

import json
import math
from dataclasses import asdict, dataclass
from pathlib import Path
from typing import Any

import numpy as np

from tsembed.errors import ConfigError, DataError
from tsembed.extras import require
from tsembed.fileio import atomic_write

INDEX_KINDS = ("flat", "hnsw", "ivfpq")
INDEX_FILE = "index.faiss"
META_FILE = "meta.parquet"
INFO_FILE = "index.json"


def _faiss() -> Any:
    return require("faiss", "vector search")


@dataclass
class IndexConfig:
    """Index kind and parameters; None picks a default from the corpus size and dimension.

    Args:
        kind: ``flat`` | ``hnsw`` | ``ivfpq``.
        hnsw_m: graph degree of HNSW.
        ef_construction, ef_search: HNSW beam widths at build and query time.
        nlist: IVF lists (default ~4·sqrt(N)).
        nprobe: lists probed per query.
        pq_m: PQ sub-quantisers (must divide the dimension; default: D/4 or the nearest divisor).
        pq_bits: bits per sub-quantiser code (needs at least 2**pq_bits training vectors).
        refine: re-rank ``refine·k`` IVF-PQ candidates with the exact vectors (0: off). Raises recall
            to near-exact at the cost of keeping the full vectors in memory.
    """

    kind: str = "flat"
    hnsw_m: int = 32
    ef_construction: int = 200
    ef_search: int = 128
    nlist: int | None = None
    nprobe: int = 32
    pq_m: int | None = None
    pq_bits: int = 8
    refine: int = 0

    def __post_init__(self) -> None:
        if self.refine < 0:
            raise ConfigError(f"index refine must be >= 0, got {self.refine}")
        if self.kind not in INDEX_KINDS:
            raise ConfigError(f"index kind must be one of {INDEX_KINDS}, got {self.kind!r}")
        for name in ("hnsw_m", "ef_construction", "ef_search", "nprobe", "pq_bits"):
            if getattr(self, name) < 1:
                raise ConfigError(f"index {name} must be >= 1, got {getattr(self, name)}")


def _pq_m(dim: int, wanted: int | None) -> int:
    if wanted is not None:
        if dim % wanted:
            raise ConfigError(f"pq_m={wanted} must divide the embedding dimension {dim}")
        return wanted
    target = max(1, dim // 4)
    return min((m for m in range(1, dim + 1) if dim % m == 0), key=lambda m: (abs(m - target), -m))


def create_index(vectors: np.ndarray, config: IndexConfig) -> tuple[Any, dict[str, Any]]:
    """Build (and train) an index over ``vectors`` [N, D]; returns it and the parameters used.

    Raises:
        ConfigError: too few vectors to train ``ivfpq`` (the message says how many it needs).
    """
    faiss = _faiss()
    vectors = np.ascontiguousarray(vectors, dtype=np.float32)
    n, dim = vectors.shape
    params: dict[str, Any] = {}
    if config.kind == "flat":
        index = faiss.IndexFlatIP(dim)
    elif config.kind == "hnsw":
        index = faiss.IndexHNSWFlat(dim, config.hnsw_m, faiss.METRIC_INNER_PRODUCT)
        index.hnsw.efConstruction = config.ef_construction
        params = {"hnsw_m": config.hnsw_m, "ef_construction": config.ef_construction, "ef_search": config.ef_search}
    else:
        nlist = config.nlist or max(1, min(int(4 * math.sqrt(n)), n // 39 or 1))
        pq_m = _pq_m(dim, config.pq_m)
        needed = max(nlist, 2**config.pq_bits)
        if n < needed:
            raise ConfigError(
                f"ivfpq needs at least {needed} vectors to train (nlist={nlist}, pq_bits={config.pq_bits}); "
                f"the corpus has {n}: use --kind flat or hnsw, or lower --pq-bits/--nlist"
            )
        quantizer = faiss.IndexFlatIP(dim)
        index = faiss.IndexIVFPQ(quantizer, dim, nlist, pq_m, config.pq_bits, faiss.METRIC_INNER_PRODUCT)
        index.do_polysemous_training = False  # only used by Hamming-filtered search, which we never run
        if config.refine:
            index = faiss.IndexRefineFlat(index)
        index.train(vectors)
        params = {"nlist": nlist, "nprobe": config.nprobe, "pq_m": pq_m, "pq_bits": config.pq_bits,
                  "refine": config.refine}
    index.add(vectors)
    _set_search_params(index, config.kind, params)
    return index, params


def _set_search_params(index: Any, kind: str, params: dict[str, Any]) -> None:
    """Query-time knobs are not all stored in the FAISS file: set them after build and after load."""
    faiss = _faiss()
    if kind == "hnsw":
        faiss.downcast_index(index).hnsw.efSearch = int(params["ef_search"])
    elif kind == "ivfpq":
        faiss.extract_index_ivf(index).nprobe = int(params["nprobe"])
        if params.get("refine"):
            faiss.downcast_index(index).k_factor = float(params["refine"])


@dataclass
class SearchHit:
    """One result: rank (0-based), score (cosine), the row position and its metadata columns."""

    rank: int
    score: float
    position: int
    meta: dict[str, Any]

    def to_dict(self) -> dict[str, Any]:
        return asdict(self)


class VectorIndex:
    """A FAISS index plus its metadata rows; ``search`` returns hits with metadata."""

    def __init__(self, index: Any, meta: Any, info: dict[str, Any]) -> None:
        self.index = index
        self.meta = meta  # pyarrow table, one row per vector
        self.info = info

    @property
    def dim(self) -> int:
        return int(self.info["dim"])

    def __len__(self) -> int:
        return int(self.index.ntotal)

    @classmethod
    def build(cls, vectors: np.ndarray, meta: Any, config: IndexConfig, source: dict[str, Any]) -> VectorIndex:
        if vectors.ndim != 2 or len(vectors) == 0:
            raise DataError(f"need a non-empty [N, D] matrix of embeddings, got shape {vectors.shape}")
        if meta.num_rows != len(vectors):
            raise DataError(f"{meta.num_rows} metadata rows for {len(vectors)} vectors")
        index, params = create_index(vectors, config)
        info = {"kind": config.kind, "dim": int(vectors.shape[1]), "count": int(len(vectors)), "params": params,
                "metric": "inner_product", **source}
        return cls(index, meta, info)

    def save(self, directory: str | Path) -> Path:
        import pyarrow.parquet as pq

        faiss = _faiss()
        directory = Path(directory)
        directory.mkdir(parents=True, exist_ok=True)
        atomic_write(directory / INDEX_FILE, lambda p: faiss.write_index(self.index, str(p)))
        atomic_write(directory / META_FILE, lambda p: pq.write_table(self.meta, p))
        text = json.dumps(self.info, indent=2) + "\n"
        atomic_write(directory / INFO_FILE, lambda p: p.write_text(text))  # written last: marks a complete index
        return directory

    @classmethod
    def load(cls, directory: str | Path) -> VectorIndex:
        import pyarrow.parquet as pq

        faiss = _faiss()
        directory = Path(directory)
        info_path = directory / INFO_FILE
        if not info_path.is_file():
            raise DataError(f"'{directory}' is not an index directory ({INFO_FILE} not found)")
        info = json.loads(info_path.read_text())
        index = faiss.read_index(str(directory / INDEX_FILE))
        _set_search_params(index, info["kind"], info.get("params", {}))
        return cls(index, pq.read_table(directory / META_FILE), info)

    def search(self, queries: np.ndarray, k: int = 10) -> list[list[SearchHit]]:
        """Top-``k`` hits for each query vector (queries [Q, D] or [D])."""
        queries = np.ascontiguousarray(np.atleast_2d(queries), dtype=np.float32)
        if queries.shape[1] != self.dim:
            raise DataError(f"query dimension {queries.shape[1]} does not match the index dimension {self.dim}")
        scores, positions = self.index.search(queries, min(k, len(self)))
        results = []
        for row_scores, row_pos in zip(scores, positions, strict=True):
            hits = []
            for score, pos in zip(row_scores, row_pos, strict=True):
                if pos < 0:  # fewer than k results (e.g. ivf lists too few)
                    continue
                meta = {name: self.meta.column(name)[int(pos)].as_py() for name in self.meta.column_names}
                hits.append(SearchHit(len(hits), float(score), int(pos), meta))
            results.append(hits)
        return results


def build_index_from_file(
    embeddings: str | Path, out: str | Path, config: IndexConfig
) -> VectorIndex:
    """``tsembed index build``: read an embeddings parquet, build, save."""
    from tsembed.inference.vectors import read_embeddings

    vectors, meta, source = read_embeddings(embeddings)
    source = {"embeddings": str(embeddings), **{k: v for k, v in source.items() if k != "dim"}}
    index = VectorIndex.build(vectors, meta, config, source)
    index.save(out)
    return index

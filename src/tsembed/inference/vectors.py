"""Embeddings on disk: one parquet table, metadata columns plus a fixed-size float32 ``embedding`` column.

The schema metadata key ``tsembed`` (JSON) records the model directory, instruction and dimension, so
``tsembed search`` can embed queries with the model that embedded the corpus.
"""

from __future__ import annotations

import json
from pathlib import Path
from typing import Any

import numpy as np

from tsembed.errors import DataError
from tsembed.fileio import atomic_write

EMBEDDING_COLUMN = "embedding"
META_KEY = b"tsembed"


def embeddings_table(columns: dict[str, list[Any]], embeddings: np.ndarray, meta: dict[str, Any]) -> Any:
    """A pyarrow table of ``columns`` plus ``embedding`` (fixed_size_list<float32>[D])."""
    import pyarrow as pa

    vectors = np.ascontiguousarray(embeddings, dtype=np.float32)
    dim = vectors.shape[1] if vectors.ndim == 2 else 0
    flat = pa.array(vectors.reshape(-1), type=pa.float32())
    arrays = {name: pa.array(values) for name, values in columns.items()}
    arrays[EMBEDDING_COLUMN] = pa.FixedSizeListArray.from_arrays(flat, dim)
    table = pa.table(arrays)
    return table.replace_schema_metadata({META_KEY: json.dumps({**meta, "dim": dim}).encode()})


def nonfinite_rows(vectors: np.ndarray) -> list[int]:
    """Rows [N, D] holding NaN or Inf: never handed out or stored as embeddings (they poison every score)."""
    return np.flatnonzero(~np.isfinite(vectors).all(axis=1)).tolist()


def write_table(path: str | Path, table: Any) -> Path:
    import pyarrow.parquet as pq

    return atomic_write(path, lambda p: pq.write_table(table, p))


def read_embeddings(path: str | Path) -> tuple[np.ndarray, Any, dict[str, Any]]:
    """(embeddings [N, D] float32, metadata table without the embedding column, tsembed metadata).

    Raises:
        DataError: the file is missing, unreadable or has no ``embedding`` column of equal-length vectors.
    """
    import pyarrow as pa
    import pyarrow.parquet as pq

    path = Path(path)
    if not path.is_file():
        raise DataError(f"embeddings file '{path}' does not exist")
    try:
        table = pq.read_table(path)
    except Exception as exc:  # pyarrow raises several unrelated types for a corrupt file
        raise DataError(f"'{path}': cannot read parquet ({exc})") from None
    if EMBEDDING_COLUMN not in table.column_names:
        raise DataError(f"'{path}': no `{EMBEDDING_COLUMN}` column (columns: {table.column_names})")
    column = table.column(EMBEDDING_COLUMN).combine_chunks()
    if pa.types.is_fixed_size_list(column.type):
        dim = column.type.list_size
        vectors = column.flatten().to_numpy(zero_copy_only=False).astype(np.float32).reshape(-1, dim)
    else:  # a plain list column written by another tool
        try:
            vectors = np.asarray(column.to_pylist(), dtype=np.float32)
        except ValueError:
            raise DataError(f"'{path}': `{EMBEDDING_COLUMN}` rows have different lengths") from None
        if vectors.ndim != 2:
            raise DataError(f"'{path}': `{EMBEDDING_COLUMN}` must hold one vector per row")
    raw = (table.schema.metadata or {}).get(META_KEY)
    meta = json.loads(raw) if raw else {}
    return vectors, table.drop_columns([EMBEDDING_COLUMN]), meta

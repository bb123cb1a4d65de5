"""Inputs to measure routing on, from whatever the user points at: a suite, MMEB rows or corpus rows.

The format is recognised from the content, not the file name: a directory with ``suite.json`` is a
suite (its train splits), rows with ``qry`` are MMEB train rows, rows with ``qry_text`` MMEB eval rows,
anything else corpus rows (``tsembed.inference.corpus``).
"""

from __future__ import annotations

from pathlib import Path
from typing import Any

from tsembed.inputs import EmbedInput


def pair_inputs(split: Any, limit: int | None = None, queries_only: bool = False) -> list[EmbedInput]:
    """Each row's query and positive (``queries_only``: its query), for the first ``limit`` rows (None: all)."""
    rows = split.rows if limit is None else split.rows[:limit]
    if queries_only:
        return [row.query_input(split.image_root) for row in rows]
    return [x for row in rows for x in (row.query_input(split.image_root), row.positive_input(split.image_root))]


def calibration_inputs(
    path: str | Path, image_root: str | Path | None = None, per_dataset: int = 64, queries_only: bool = False
) -> list[EmbedInput]:
    """Inputs to measure routing on: a suite directory (``per_dataset`` train rows of each dataset), MMEB
    train or eval rows (every row's query and positive; ``queries_only``: its query), or corpus rows (every row).

    Raises:
        ConfigError: ``queries_only`` for corpus rows (they have no queries).
    """
    from tsembed.data.formats import read_records
    from tsembed.data.mmeb import read_eval, read_train

    path = Path(path)
    if (path / "suite.json").is_file():
        from tsembed.data.suite import load_suite

        suite = load_suite(path)
        return [x for name in suite.names(split="train")
                for x in pair_inputs(suite.train(name), per_dataset, queries_only)]
    records, _ = read_records(path)
    first = next((r.value for r in records if isinstance(r.value, dict)), {})
    if "qry" in first:
        return pair_inputs(read_train(path, image_root), queries_only=queries_only)
    if "qry_text" in first:
        return pair_inputs(read_eval(path, image_root), queries_only=queries_only)
    if queries_only:
        from tsembed.errors import ConfigError

        raise ConfigError(f"{path}: corpus rows have no queries; give MMEB rows (qry, pos) or a suite")
    from tsembed.inference.corpus import read_corpus

    return read_corpus(path, image_root).inputs

"""Inputs to measure routing on, from whatever the user points at: a suite, MMEB rows or corpus rows.

The format is recognised from the content, not the file name: a directory with ``suite.json`` is a
suite (its train splits), rows with ``qry`` are MMEB train rows, rows with ``qry_text`` MMEB eval rows,
anything else corpus rows (``tsembed.inference.corpus``).
"""

from __future__ import annotations

from pathlib import Path
from typing import Any

from tsembed.inputs import EmbedInput


def pair_inputs(split: Any, limit: int | None = None) -> list[EmbedInput]:
    """Each row's query and positive, for the first ``limit`` rows (None: all)."""
    rows = split.rows if limit is None else split.rows[:limit]
    return [x for row in rows for x in (row.query_input(split.image_root), row.positive_input(split.image_root))]


def calibration_inputs(
    path: str | Path, image_root: str | Path | None = None, per_dataset: int = 64
) -> list[EmbedInput]:
    """Inputs to measure routing on: a suite directory (``per_dataset`` train rows of each dataset), MMEB
    train or eval rows (every row's query and positive), or corpus rows (every row)."""
    from tsembed.data.formats import read_records
    from tsembed.data.mmeb import read_eval, read_train

    path = Path(path)
    if (path / "suite.json").is_file():
        from tsembed.data.suite import load_suite

        suite = load_suite(path)
        return [x for name in suite.names(split="train") for x in pair_inputs(suite.train(name), per_dataset)]
    records, _ = read_records(path)
    first = next((r.value for r in records if isinstance(r.value, dict)), {})
    if "qry" in first:
        return pair_inputs(read_train(path, image_root))
    if "qry_text" in first:
        return pair_inputs(read_eval(path, image_root))
    from tsembed.inference.corpus import read_corpus

    return read_corpus(path, image_root).inputs

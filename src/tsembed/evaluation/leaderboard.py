"""Results in the files the MMEB leaderboard is built from (``tsembed eval --format mmeb``).

VLM2Vec's evaluation writes one ``<Dataset>_score.json`` per dataset: MMEB-V1 with ``acc``, ``num_correct`` and
``num_pred``; MMEB-V2 with ``hit@1``/``precision@1`` and ``num_pred``/``num_data``. Its report script
(``experiments/report_score_v2.py``) reads either, and gathers them into ``<model_name>.json``:
``{"metadata": {...}, "metrics": {"image": {dataset: score_dict}}}``, the file submitted to the leaderboard.
We write both, so either script or the leaderboard can take them. ``acc`` is hit@1 over the rows that were scored;
when rows were skipped (``--skip-invalid``) ``num_pred`` < ``num_data`` says so, and a warning is logged, because
such a score is not comparable with the leaderboard's.
"""

from __future__ import annotations

import json
import logging
from datetime import UTC, datetime
from pathlib import Path
from typing import Any

from tsembed.evaluation.results import HIT1, DatasetResult, EvalResults
from tsembed.fileio import atomic_write

logger = logging.getLogger(__name__)

#: The MMEB leaderboard's modality key for the 36 image datasets of MMEB-V1 (MMEB-V2 adds "video" and "visdoc").
MODALITY = "image"


def score_dict(result: DatasetResult) -> dict[str, Any]:
    """One dataset's ``<Dataset>_score.json``: the MMEB-V1 keys and the MMEB-V2 keys, from the same hit@1."""
    acc = result.metrics.get(HIT1)
    num_data = result.num_rows + result.num_skipped
    return {
        "acc": acc,
        "num_correct": None if acc is None else round(acc * result.num_rows),
        "hit@1": acc,
        "precision@1": acc,
        "num_pred": result.num_rows,
        "num_data": num_data,
    }


def leaderboard_report(results: EvalResults, model_name: str, metadata: dict[str, Any] | None = None) -> dict[str, Any]:
    """The leaderboard file: metadata plus every dataset's score dict under ``metrics.image``."""
    meta = {"model_name": model_name, **(metadata or {}),
            "report_generated_date": datetime.now(UTC).isoformat(timespec="seconds")}
    return {"metadata": meta, "metrics": {MODALITY: {d.name: score_dict(d) for d in results.datasets}}}


def _dump(path: Path, data: dict[str, Any]) -> Path:
    text = json.dumps(data, indent=4) + "\n"
    atomic_write(path, lambda p: p.write_text(text, encoding="utf-8"))
    return path


def write_mmeb(results: EvalResults, out_dir: str | Path, model_name: str,
               metadata: dict[str, Any] | None = None) -> list[Path]:
    """Write ``<Dataset>_score.json`` for every dataset and ``<model_name>.json`` into ``out_dir``.

    Args:
        results: One evaluation run.
        out_dir: Target folder (created).
        model_name: The leaderboard's model name; its last path part names the report file.
        metadata: Extra leaderboard metadata (``model_size``, ``url``, ...).

    Returns:
        The files written, the report last.
    """
    out_dir = Path(out_dir)
    written = []
    for d in results.datasets:
        if d.num_skipped:
            logger.warning("%s: %d of %d rows were skipped; its MMEB score is not comparable with the leaderboard's",
                           d.name, d.num_skipped, d.num_rows + d.num_skipped)
        written.append(_dump(out_dir / f"{d.name}_score.json", score_dict(d)))
    report = leaderboard_report(results, model_name, metadata)
    written.append(_dump(out_dir / f"{Path(model_name).name or 'model'}.json", report))
    return written

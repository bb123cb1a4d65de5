"""Results in the files the MMEB leaderboard is built from (``tsembed eval --format mmeb``), laid out as VLM2Vec's
evaluation writes them, so its report script reads them as they are.

VLM2Vec-V2's ``eval.py`` writes, per modality folder of an experiment (``<exp>/image/`` for MMEB's 36 image datasets):

* ``<Dataset>_score.json``: ``hit``, ``ndcg_linear``, ``ndcg_exponential``, ``precision``, ``recall``, ``f1``,
  ``map`` and ``mrr``, each ``@1``, ``@5`` and ``@10``, plus ``num_pred`` and ``num_data``;
* ``<Dataset>_pred.jsonl``: one line per query, ``{"prediction": [candidate names, best first], "label": [the
  positive's name], "rel_scores": null}``.

Its report script (``experiments/report_score_v2.py``) reads ``<exp>/<modality>/<Dataset>_score.json`` and writes
``<exp>/<model_name>.json``: ``{"metadata": {...}, "metrics": {"image": {dataset: score_dict}}}``, the file submitted
to the leaderboard. We write all three, with ``<exp>`` = ``OUT/mmeb``, and add MMEB-V1's keys (``acc``,
``num_correct``) to each score file: ``acc`` is ``num_correct / num_pred`` as a Python float, exactly as V1's
``eval.py`` computes it. The metrics follow V2's definitions over candidate *names* (so a positive repeated in the
list counts wherever it ranks). When rows were skipped (``--skip-invalid``), ``num_pred`` < ``num_data`` says so, and
a warning is logged, because such a score is not comparable with the leaderboard's. The pred files are written while
each dataset is scored (``evaluate(predictions_dir=...)``), and V2's metrics kept in ``DatasetResult.ranking``; a run
without them gets score files with hit@1 only.
"""

from __future__ import annotations

import json
import logging
import math
from datetime import UTC, datetime
from pathlib import Path
from typing import Any

from tsembed.evaluation.results import HIT1, DatasetResult, EvalResults
from tsembed.fileio import atomic_write

logger = logging.getLogger(__name__)

#: The MMEB leaderboard's modality key for the 36 image datasets of MMEB-V1 (MMEB-V2 adds "video" and "visdoc").
MODALITY = "image"
#: Cut-offs of VLM2Vec-V2's score files.
V2_KS: tuple[int, ...] = (1, 5, 10)
#: Metadata keys of V2's report template, in its order (``model_name`` first, ``report_generated_date`` added last).
METADATA_KEYS: tuple[str, ...] = ("model_name", "model_backbone", "model_size", "embedding_dimension",
                                  "max_length_tokens", "model_release_date", "data_source", "url")
#: Folder names that say nothing about the model (``runs/x/model``): the report is named after the folder above.
GENERIC_DIR_NAMES = frozenset({"model", "models", "final", "best", "latest", "output", "outputs", "merged", "export"})


def default_model_name(model_dir: str | Path) -> str:
    """The leaderboard name of a model directory: its folder's name, or, for a generic folder such as
    ``runs/x/model`` or ``runs/x/checkpoint-500``, the run's (``x``, ``x-checkpoint-500``)."""
    path = Path(model_dir).resolve()
    name, parent = path.name, path.parent.name
    if not parent:
        return name or "model"
    if name.lower() in GENERIC_DIR_NAMES:
        return parent
    if name.lower().startswith(("checkpoint", "step")):
        return f"{parent}-{name}"
    return name


def _v2_row(prediction: list[str], label: list[str], ks: tuple[int, ...]) -> dict[str, float]:
    """V2's per-query numbers: binary relevance of each ranked name; the label names as a set."""
    labels = set(label)
    out: dict[str, float] = {}
    for k in ks:
        top = prediction[:k]
        found = len(set(top) & labels)
        relevance = [1.0 if name in labels else 0.0 for name in top]
        dcg = sum(rel / math.log2(i + 2) for i, rel in enumerate(relevance))
        ideal = sum(1.0 / math.log2(i + 2) for i in range(min(len(labels), k)))
        ndcg = dcg / ideal if ideal > 0 else 0.0
        precision = found / k if labels else 0.0
        recall = found / len(labels) if labels else 1.0
        hits, ap = 0, 0.0
        for i, name in enumerate(top):
            if name in labels:
                hits += 1
                ap += hits / (i + 1.0)
        first = next((i for i, name in enumerate(top) if name in labels), None)
        out[f"hit@{k}"] = 1.0 if labels and found else 0.0
        out[f"ndcg_linear@{k}"] = ndcg
        out[f"ndcg_exponential@{k}"] = ndcg  # binary gains: 2^1 - 1 = 1, the same as linear
        out[f"precision@{k}"] = precision
        out[f"recall@{k}"] = recall
        out[f"f1@{k}"] = 2 * precision * recall / (precision + recall) if precision + recall else 0.0
        out[f"map@{k}"] = ap / min(len(labels), k) if labels and hits else 0.0
        out[f"mrr@{k}"] = 1.0 / (first + 1) if labels and first is not None else 0.0
    return out


def v2_metrics(predictions: list[dict[str, Any]], ks: tuple[int, ...] = V2_KS) -> dict[str, float]:
    """VLM2Vec-V2's score dict (without ``num_pred``/``num_data``) from pred-file lines: every metric the mean over
    queries, keyed as V2 keys them (``hit@1``, ``ndcg_linear@5``, ``map@10``, ...)."""
    rows = [_v2_row(p["prediction"], p["label"], ks) for p in predictions]
    keys = [f"{m}@{k}" for m in ("hit", "ndcg_linear", "ndcg_exponential", "precision", "recall", "f1") for k in ks]
    keys += [f"{m}@{k}" for m in ("map", "mrr") for k in ks]
    return {key: (sum(r[key] for r in rows) / len(rows) if rows else 0.0) for key in keys}


def score_dict(result: DatasetResult) -> dict[str, Any]:
    """One dataset's ``<Dataset>_score.json``: MMEB-V1's ``acc``/``num_correct`` and MMEB-V2's metrics (all of them
    when the run ranked every row in full, ``result.ranking``; else ``hit@1``/``precision@1``), then
    ``num_pred``/``num_data``."""
    hit1 = result.metrics.get(HIT1)
    num_correct = None if hit1 is None else round(hit1 * result.num_rows)
    acc = None if num_correct is None or not result.num_rows else num_correct / result.num_rows
    out: dict[str, Any] = {"acc": acc, "num_correct": num_correct}
    v2 = getattr(result, "ranking", None)
    if v2:
        if round(v2["hit@1"] * result.num_rows) != num_correct:  # candidates that share a name with the positive
            logger.warning("%s: hit@1 over candidate names is %.4f, over candidates %.4f; the score file keeps the "
                           "latter", result.name, v2["hit@1"], acc or 0.0)
        out.update(v2)
        out["hit@1"] = acc  # the same number; this spelling is exactly V1's n_correct / n
    else:
        out.update({"hit@1": acc, "precision@1": acc})
    out.update({"num_pred": result.num_rows, "num_data": result.num_rows + result.num_skipped})
    return out


def leaderboard_report(results: EvalResults, model_name: str, metadata: dict[str, Any] | None = None) -> dict[str, Any]:
    """The leaderboard file: V2's metadata keys (None where unknown) plus every dataset's score dict under
    ``metrics.image``."""
    given = {k: v for k, v in (metadata or {}).items() if v is not None}
    meta = {key: None for key in METADATA_KEYS}
    meta.update({"model_name": model_name, "data_source": "Self-Reported", **given})
    meta["report_generated_date"] = datetime.now(UTC).isoformat(timespec="seconds")
    scores = {d.name: score_dict(d) for d in results.datasets}
    return {"metadata": meta, "metrics": {MODALITY: scores}}


def _dump(path: Path, data: dict[str, Any]) -> Path:
    text = json.dumps(data, indent=4) + "\n"
    atomic_write(path, lambda p: p.write_text(text, encoding="utf-8"))
    return path


def write_pred_file(path: str | Path, lines: list[dict[str, Any]]) -> Path:
    """``<Dataset>_pred.jsonl`` (atomically): one JSON object per query, as VLM2Vec-V2 writes them."""

    def write(p: Path) -> None:
        with p.open("w", encoding="utf-8") as fh:
            for line in lines:
                fh.write(json.dumps(line) + "\n")

    return atomic_write(path, write)


def write_mmeb(results: EvalResults, out_dir: str | Path, model_name: str,
               metadata: dict[str, Any] | None = None) -> list[Path]:
    """Write an experiment folder as VLM2Vec-V2 lays it out: ``out_dir/image/<Dataset>_score.json`` for every dataset
    and ``out_dir/<model_name>.json``, beside the ``<Dataset>_pred.jsonl`` files ``evaluate`` wrote there.

    Args:
        results: One evaluation run (``evaluate(..., predictions_dir=out_dir / "image")`` for V2's full metrics and
            pred files).
        out_dir: The experiment folder (created).
        model_name: The leaderboard's model name; its last path part names the report file.
        metadata: Leaderboard metadata (``model_backbone``, ``model_size``, ``embedding_dimension``,
            ``max_length_tokens``, ``model_release_date``, ``data_source``, ``url``).

    Returns:
        The files written, the report last.
    """
    out_dir = Path(out_dir)
    report = leaderboard_report(results, model_name, metadata)
    written = []
    for d in results.datasets:
        if d.num_skipped:
            logger.warning("%s: %d of %d rows were skipped; its MMEB score is not comparable with the leaderboard's",
                           d.name, d.num_skipped, d.num_rows + d.num_skipped)
        written.append(_dump(out_dir / MODALITY / f"{d.name}_score.json", report["metrics"][MODALITY][d.name]))
        if (pred := out_dir / MODALITY / f"{d.name}_pred.jsonl").is_file():
            written.append(pred)
    written.append(_dump(out_dir / f"{Path(model_name).name or 'model'}.json", report))
    return written

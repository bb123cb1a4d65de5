"""Evaluation results: per-dataset numbers, MMEB-style averages, and their JSON / markdown forms.

Metric values are fractions in [0, 1] in JSON and in Python; the markdown tables show percentages with
one decimal (MMEB's convention). Averages are unweighted means over datasets (MMEB's "overall" is the mean over
datasets, not over queries): per meta-task, over IND datasets, over OOD datasets, and over all.
"""

from __future__ import annotations

import json
import math
from dataclasses import asdict, dataclass, field
from pathlib import Path
from typing import Any

from tsembed.data.registry import META_TASKS
from tsembed.fileio import atomic_write
from tsembed.health import COLLAPSE_COSINE, DAGGER, collapsed_datasets, mark

HIT1 = "hit@1"
#: Column order of the markdown tables; metrics not in a run are left out.
METRIC_ORDER: tuple[str, ...] = (HIT1, "recall@1", "recall@5", "recall@10", "mrr", "ndcg@10")
GLOBAL_PREFIX = "global_"
IND, OOD, OVERALL = "IND", "OOD", "overall"
#: The groups every summary reports, in table order: the meta-tasks, then the splits and all datasets.
GROUPS: tuple[str, ...] = (*META_TASKS, IND, OOD, OVERALL)


@dataclass
class DatasetResult:
    """Scores of one eval dataset.

    metrics: ``hit@1`` over each row's own candidates (the MMEB protocol); with a global pool also
        ``global_recall@k``, ``global_mrr``, ``global_ndcg@10`` against the union of the dataset's candidates.
    query_cosine: mean pairwise cosine of the dataset's distinct query embeddings (``tsembed.health``; at or
        above ``COLLAPSE_COSINE`` the dataset has collapsed); None in results written before it was recorded.
    notes: rows read as VLM2Vec reads them rather than refused (``ValidationReport.notes``): what -> how many.
    ranking: VLM2Vec-V2's metrics over each row's full ranking of its own candidates (``hit@1`` ... ``mrr@10``,
        ``tsembed.evaluation.leaderboard.v2_metrics``), when the run wrote pred files; else None.
    """

    name: str
    meta_task: str | None
    ood: bool | None
    file: str
    num_rows: int
    num_skipped: int
    mean_candidates: float
    metrics: dict[str, float]
    pool_size: int | None = None
    query_cosine: float | None = None
    notes: dict[str, int] = field(default_factory=dict)
    ranking: dict[str, float] | None = None


def _mean(values: list[float]) -> float | None:
    values = [v for v in values if v is not None and math.isfinite(v)]
    return sum(values) / len(values) if values else None


def aggregate(datasets: list[DatasetResult]) -> dict[str, dict[str, Any]]:
    """Group -> {"num_datasets", metric: mean over the group's datasets}; groups are meta-tasks, IND,
    OOD and overall (datasets without a meta-task or split count only in overall)."""
    groups: dict[str, list[DatasetResult]] = {}
    for d in datasets:
        if d.meta_task:
            groups.setdefault(d.meta_task, []).append(d)
    ordered = {g: groups[g] for g in (*META_TASKS, *sorted(set(groups) - set(META_TASKS))) if g in groups}
    ordered[IND] = [d for d in datasets if d.ood is False]
    ordered[OOD] = [d for d in datasets if d.ood is True]
    ordered[OVERALL] = list(datasets)
    keys = list(dict.fromkeys(k for d in datasets for k in d.metrics))
    out: dict[str, dict[str, Any]] = {}
    for group, members in ordered.items():
        if not members:
            continue
        out[group] = {"num_datasets": len(members)}
        out[group].update({k: _mean([d.metrics.get(k) for d in members]) for k in keys})
    return out


@dataclass
class EvalResults:
    """Everything one evaluation run measured; ``to_json`` / ``from_json`` round-trip."""

    model_id: str
    datasets: list[DatasetResult]
    aggregates: dict[str, dict[str, Any]] = field(default_factory=dict)
    settings: dict[str, Any] = field(default_factory=dict)
    timing: dict[str, float] = field(default_factory=dict)
    #: Per-query hit@1 of each dataset (``tsembed.evaluation.hits``); saved to ``hits.json``, not ``results.json``.
    hits: dict[str, Any] = field(default_factory=dict, repr=False, compare=False)

    def __post_init__(self) -> None:
        if not self.aggregates:
            self.aggregates = aggregate(self.datasets)

    @property
    def collapsed_datasets(self) -> list[str]:
        """The datasets whose query embeddings collapsed onto one point (``tsembed.health``)."""
        return collapsed_datasets({d.name: d.query_cosine for d in self.datasets})

    @property
    def collapsed(self) -> bool:
        """True when any dataset collapsed: the run's numbers must not be averaged with healthy runs."""
        return bool(self.collapsed_datasets)

    @property
    def overall(self) -> float | None:
        """Mean hit@1 over datasets (MMEB overall)."""
        return self.aggregates.get(OVERALL, {}).get(HIT1)

    def dataset(self, name: str) -> DatasetResult:
        for d in self.datasets:
            if d.name == name:
                return d
        raise KeyError(f"no dataset {name!r} in these results; have {[d.name for d in self.datasets]}")

    def to_dict(self) -> dict[str, Any]:
        return {
            "model_id": self.model_id,
            "datasets": [asdict(d) for d in self.datasets],
            "aggregates": self.aggregates,
            "settings": self.settings,
            "timing": self.timing,
            "collapsed": self.collapsed,  # derived from the datasets' query_cosine; from_dict recomputes it
            "collapsed_datasets": self.collapsed_datasets,
            "collapse_cosine": COLLAPSE_COSINE,
        }

    def to_json(self, path: str | Path | None = None) -> str:
        """JSON text; also written atomically to ``path`` when given."""
        text = json.dumps(self.to_dict(), indent=2) + "\n"
        if path is not None:
            atomic_write(path, lambda p: p.write_text(text, encoding="utf-8"))
        return text

    @classmethod
    def from_dict(cls, data: dict[str, Any]) -> EvalResults:
        return cls(
            model_id=data["model_id"],
            datasets=[DatasetResult(**d) for d in data["datasets"]],
            aggregates=data.get("aggregates") or {},
            settings=data.get("settings") or {},
            timing=data.get("timing") or {},
        )

    @classmethod
    def from_json(cls, path: str | Path) -> EvalResults:
        return cls.from_dict(json.loads(Path(path).read_text(encoding="utf-8")))

    def to_markdown(self) -> str:
        return results_markdown(self)

    def save(self, out_dir: str | Path) -> tuple[Path, Path]:
        """Write ``results.json`` and ``results.md`` into ``out_dir`` (atomically); returns both paths.

        The per-query hits, when the evaluation kept them, go to ``hits.json`` beside them.
        """
        out_dir = Path(out_dir)
        if self.hits:
            from tsembed.evaluation.hits import write_hits

            write_hits(out_dir, self.hits)
        json_path, md_path = out_dir / "results.json", out_dir / "results.md"
        self.to_json(json_path)
        text = self.to_markdown()
        atomic_write(md_path, lambda p: p.write_text(text, encoding="utf-8"))
        return json_path, md_path


# ----- markdown (percentages, one decimal, MMEB-style) ------------------------------------------------
def _pct(value: float | None) -> str:
    return "–" if value is None else f"{100 * value:.1f}"


def _columns(results: EvalResults) -> list[tuple[str, str]]:
    """(metric key, header) in display order, for the metrics present in this run."""
    present = {k for d in results.datasets for k in d.metrics}
    cols = [(m, m) for m in METRIC_ORDER if m in present]
    cols += [(GLOBAL_PREFIX + m, f"pool {m}") for m in METRIC_ORDER if GLOBAL_PREFIX + m in present]
    return cols


def _table(header: list[str], rows: list[list[str]]) -> list[str]:
    lines = ["| " + " | ".join(header) + " |", "|" + "|".join("---" for _ in header) + "|"]
    return lines + ["| " + " | ".join(r) + " |" for r in rows]


def results_markdown(results: EvalResults) -> str:
    """Summary table (meta-tasks, IND, OOD, overall) then one row per dataset."""
    cols = _columns(results)
    split = results.settings.get("split", "eval")
    lines = [f"# Evaluation of model `{results.model_id}`" + ("" if split == "eval" else f" on the {split} split"), ""]
    pool = (
        " Pool metrics rank each query against the union of its dataset's candidates."
        if any(c.startswith(GLOBAL_PREFIX) for c, _ in cols)
        else ""
    )
    ties = ("a tie goes to the candidate listed first, the positive, as VLM2Vec's argmax does"
            if results.settings.get("tie_rule") == "vlm2vec" else "a tie with the positive counts against it")
    lines += [
        f"hit@1 ranks each query against its own candidates (MMEB protocol; {ties}); averages are means over "
        f"datasets; numbers are %.{pool}",
        "",
    ]
    summary = [
        [group, str(agg["num_datasets"]), *(_pct(agg.get(c)) for c, _ in cols)]
        for group, agg in results.aggregates.items()
    ]
    lines += _table(["Group", "Datasets", *(h for _, h in cols)], summary)
    lines.append("")
    rows = []
    for d in results.datasets:
        split = "" if d.ood is None else (OOD if d.ood else IND)
        rows.append(
            [
                mark(d.name, d.name in results.collapsed_datasets),
                d.meta_task or "",
                split,
                str(d.num_rows),
                f"{d.mean_candidates:.0f}",
                *(_pct(d.metrics.get(c)) for c, _ in cols),
            ]
        )
    lines += _table(["Dataset", "Meta-task", "Split", "Queries", "Candidates", *(h for _, h in cols)], rows)
    skipped = [(d.name, d.num_skipped) for d in results.datasets if d.num_skipped]
    if skipped:
        lines += ["", "Skipped invalid rows: " + ", ".join(f"{n} {c}" for n, c in skipped) + "."]
    notes = [f"{d.name}: {count} row(s) with {what}." for d in results.datasets
             for what, count in (d.notes or {}).items()]
    if notes:
        lines += ["", *notes]
    if results.collapsed:
        lines += ["", f"**{DAGGER} Collapsed run**: the query embeddings of "
                  + ", ".join(results.collapsed_datasets) + f" fell onto one point (mean pairwise cosine ≥ "
                  f"{COLLAPSE_COSINE}); summaries leave this run out of their means."]
    if results.timing:
        t = results.timing
        lines += [
            "",
            f"Encoded {t.get('encoded', 0):.0f} inputs ({t.get('from_cache', 0):.0f} from cache) "
            f"in {t.get('total_seconds', 0):.1f} s.",
        ]
    return "\n".join(lines) + "\n"

"""Markdown tables of evaluation results (percentages, one decimal, MMEB-style)."""

from __future__ import annotations

from typing import TYPE_CHECKING

from tsembed.evaluation.results import GLOBAL_PREFIX, METRIC_ORDER

if TYPE_CHECKING:
    from tsembed.evaluation.results import EvalResults


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
    lines += [
        f"hit@1 ranks each query against its own candidates (MMEB protocol; a tie with the positive "
        f"counts against it); averages are means over datasets; numbers are %.{pool}",
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
        split = "" if d.ood is None else ("OOD" if d.ood else "IND")
        rows.append(
            [
                d.name,
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
    if results.timing:
        t = results.timing
        lines += [
            "",
            f"Encoded {t.get('encoded', 0):.0f} inputs ({t.get('from_cache', 0):.0f} from cache) "
            f"in {t.get('total_seconds', 0):.1f} s.",
        ]
    return "\n".join(lines) + "\n"

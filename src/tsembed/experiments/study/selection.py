"""The selection rule of a study: of the candidates, the highest mean ``metric`` among those with no condition
more than ``max_drop`` points below the reference (means over the selection stage's suites and seeds);
the fallback when no candidate qualifies."""

from __future__ import annotations

import statistics
from collections.abc import Mapping
from dataclasses import dataclass
from typing import Any

from tsembed.data.registry import DATASETS
from tsembed.errors import ConfigError
from tsembed.evaluation.results import HIT1
from tsembed.experiments.study.spec import SelectionSpec

#: (variant, suite, seed) -> the run's record (results.json: "aggregates" and "datasets")
Records = Mapping[tuple[str, str, int], Mapping[str, Any]]


def condition_of(dataset: str) -> str | None:
    """The condition a dataset tests (the conflict suite's), else the dataset itself; None for OOD datasets."""
    info = DATASETS.get(dataset)
    if info is not None and info.ood:
        return None
    return info.condition if info is not None and info.condition else dataset


def conditions(record: Mapping[str, Any]) -> dict[str, float]:
    """Condition -> hit@1 in points (mean over its in-distribution datasets)."""
    groups: dict[str, list[float]] = {}
    for name, metrics in record["datasets"].items():
        cond = condition_of(name)
        if cond is not None and metrics.get(HIT1) is not None:
            groups.setdefault(cond, []).append(100 * metrics[HIT1])
    return {cond: statistics.fmean(values) for cond, values in groups.items()}


@dataclass(frozen=True)
class Selection:
    winner: str
    fallback_used: bool
    table: dict[str, dict[str, Any]]  # candidate -> {metric, worst_condition, worst_drop, eligible, runs}
    rule: str

    def to_dict(self) -> dict[str, Any]:
        return {"winner": self.winner, "fallback_used": self.fallback_used, "rule": self.rule,
                "candidates": self.table}


def select(spec: SelectionSpec, records: Records) -> Selection:
    """Apply the rule to the selection stage's records (paired over the runs reference and candidate share).

    Raises:
        ConfigError: the reference or a candidate has no finished run.
    """
    by_variant: dict[str, dict[tuple[str, int], Mapping[str, Any]]] = {}
    for (variant, suite, seed), record in records.items():
        by_variant.setdefault(variant, {})[(suite, seed)] = record
    reference = by_variant.get(spec.reference)
    if not reference:
        raise ConfigError(f"selection: the reference {spec.reference!r} has no finished run in stage {spec.stage!r}")
    table: dict[str, dict[str, Any]] = {}
    for name in spec.candidates:
        runs = by_variant.get(name, {})
        shared = sorted(set(runs) & set(reference))
        if not shared:
            raise ConfigError(f"selection: candidate {name!r} shares no finished run with {spec.reference!r} "
                              f"in stage {spec.stage!r}")
        metric = statistics.fmean(100 * runs[k]["aggregates"][spec.metric][HIT1] for k in shared)
        drops: dict[str, list[float]] = {}
        for key in shared:
            ref = conditions(reference[key])
            for cond, value in conditions(runs[key]).items():
                if cond in ref:
                    drops.setdefault(cond, []).append(value - ref[cond])
        mean_drops = {cond: statistics.fmean(v) for cond, v in drops.items()}
        worst = min(mean_drops, key=mean_drops.get) if mean_drops else None
        worst_drop = mean_drops[worst] if worst is not None else 0.0
        table[name] = {"metric": round(metric, 3), "worst_condition": worst, "worst_diff": round(worst_drop, 3),
                       "eligible": worst_drop >= -spec.max_drop, "runs": len(shared),
                       "condition_diffs": {k: round(v, 3) for k, v in mean_drops.items()}}
    eligible = [n for n in spec.candidates if table[n]["eligible"]]
    if eligible:
        winner = max(eligible, key=lambda n: table[n]["metric"])  # ties: the first listed
        return Selection(winner, False, table, spec.rule)
    return Selection(spec.fallback, True, table, spec.rule)

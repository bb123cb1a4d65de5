"""A study's suite gate, read from its stage's finished runs: does joint training make specialists win?

Three studies wrote the same rule in prose (specialist − joint hit@1 on the specialist's own dataset, ≥ 10 points
on ≥ 2 conditions) and read it by hand; as data it is read the same way every time, and the stages it guards do
not run until it has passed.
"""

from __future__ import annotations

import statistics
from dataclasses import dataclass
from typing import Any

from tsembed.errors import ConfigError
from tsembed.evaluation.results import HIT1
from tsembed.experiments.study.selection import Records, condition_of
from tsembed.experiments.study.spec import GateSpec


@dataclass(frozen=True)
class GateReading:
    passed: bool
    margins: dict[str, dict[str, Any]]  # specialist -> {dataset, condition, specialist, joint, margin, runs}
    spec: GateSpec

    def to_dict(self) -> dict[str, Any]:
        s = self.spec
        return {"stage": s.stage, "joint": s.joint, "min_margin": s.min_margin, "min_conditions": s.min_conditions,
                "passed": self.passed, "rule": s.rule, "guards": list(s.guards),
                "conditions_over_margin": sum(m["margin"] >= s.min_margin for m in self.margins.values()),
                "margins": self.margins}

    def markdown(self) -> list[str]:
        s = self.spec
        lines = [f"## Gate (stage {s.stage}): specialist − {s.joint} on the specialist's dataset", "",
                 "| specialist | dataset (condition) | specialist | joint | margin |", "|---|---|---:|---:|---:|"]
        for name, m in self.margins.items():
            lines.append(f"| {name} | {m['dataset']} ({m['condition']}) | {m['specialist']:.1f} | {m['joint']:.1f} | "
                         f"{m['margin']:+.1f} |")
        over = sum(m["margin"] >= s.min_margin for m in self.margins.values())
        verdict = "passed" if self.passed else "failed"
        return [*lines, "", f"**Gate {verdict}**: {over} of {len(self.margins)} conditions trail by ≥ "
                f"{s.min_margin:g} points (needed: {s.min_conditions})."
                + (f" Guarded stages: {', '.join(s.guards)}." if s.guards else ""), ""]


def read_gate(spec: GateSpec, records: Records) -> GateReading:
    """Margins as means over the (suite, seed) runs the specialist and the joint model share.

    Raises:
        ConfigError: the joint model or a specialist has no finished run, or they share none.
    """
    joint = {(suite, seed): r for (variant, suite, seed), r in records.items() if variant == spec.joint}
    if not joint:
        raise ConfigError(f"gate: the joint model {spec.joint!r} has no finished run in stage {spec.stage!r}")
    margins: dict[str, dict[str, Any]] = {}
    for name, dataset in spec.specialists.items():
        own = {(suite, seed): r for (variant, suite, seed), r in records.items() if variant == name}
        shared = sorted(set(own) & set(joint))
        if not shared:
            raise ConfigError(f"gate: specialist {name!r} shares no finished run with {spec.joint!r} in stage "
                              f"{spec.stage!r}")
        mine = [_hit(own[k], dataset, name) for k in shared]
        theirs = [_hit(joint[k], dataset, spec.joint) for k in shared]
        margins[name] = {"dataset": dataset, "condition": condition_of(dataset) or dataset,
                         "specialist": round(statistics.fmean(mine), 3), "joint": round(statistics.fmean(theirs), 3),
                         "margin": round(statistics.fmean(a - b for a, b in zip(mine, theirs, strict=True)), 3),
                         "runs": len(shared)}
    over = sum(m["margin"] >= spec.min_margin for m in margins.values())
    return GateReading(over >= spec.min_conditions, margins, spec)


def _hit(record: Any, dataset: str, variant: str) -> float:
    value = record.get("datasets", {}).get(dataset, {}).get(HIT1)
    if value is None:
        raise ConfigError(f"gate: {variant!r} has no hit@1 on {dataset!r} (was it evaluated on that dataset?)")
    return 100 * value

"""The headline numbers of the conflict study, from an ablation summary and a task-conflict report.

Kept as code (not hand-copied numbers) so `docs/results/conflict/summary.json` can be regenerated from the
runs it describes: `tsembed conflict-summary --ablation DIR/ablation.json --conflict DIR/conflict.json`.
A seed where either of the two runs collapsed (``tsembed.health``) is left out of every number, named under
``collapsed`` and counted in ``collapsed_runs``: a comparison against a collapsed model means nothing.
"""

from __future__ import annotations

from typing import Any

from tsembed.data.registry import DATASETS
from tsembed.errors import ConfigError
from tsembed.evaluation.results import HIT1, OVERALL
from tsembed.experiments.ablation import mean_std
from tsembed.health import DAGGER, run_checked, run_collapsed


def _overall(record: dict[str, Any]) -> float:
    return 100 * record["aggregates"][OVERALL][HIT1]


def conflict_summary(ablation: dict[str, Any], conflict: dict[str, Any] | None, tsembed: str, lora: str,
                     commit: str | None = None) -> dict[str, Any]:
    """Paired TSEmbed − LoRA differences over the seeds both ran, overall and per condition (IND datasets).

    Seeds where either run collapsed are left out (``collapsed_runs`` counts those runs, ``collapsed`` names them).

    Raises:
        ConfigError: One of the two variants has no run in the ablation summary, they share no seed, or every
            shared seed has a collapsed run.
    """
    runs = {(r["variant"], r["seed"]): r for r in ablation["per_seed"]}
    shared = sorted(s for (v, s) in runs if v == tsembed and (lora, s) in runs)
    if not shared:
        present = sorted({v for v, _ in runs})
        raise ConfigError(f"no seed with both {tsembed!r} and {lora!r} in the ablation summary; it has {present}")
    collapsed = [f"{v}/seed{s}" for s in shared for v in (tsembed, lora) if run_collapsed(runs[(v, s)])]
    seeds = [s for s in shared if not any(run_collapsed(runs[(v, s)]) for v in (tsembed, lora))]
    if not seeds:
        raise ConfigError(f"every seed shared by {tsembed!r} and {lora!r} has a collapsed run ({', '.join(collapsed)}"
                          f"; marked {DAGGER}): there is nothing to compare")
    pairs = [(runs[(tsembed, s)], runs[(lora, s)]) for s in seeds]
    diffs = [_overall(t) - _overall(b) for t, b in pairs]
    per_dataset: dict[str, list[float]] = {}
    for t, b in pairs:
        for name, metrics in t["datasets"].items():
            if name in b["datasets"]:
                per_dataset.setdefault(name, []).append(100 * (metrics[HIT1] - b["datasets"][name][HIT1]))
    per_condition: dict[str, float] = {}
    for name, values in per_dataset.items():
        info = DATASETS.get(name)
        if info is not None and info.condition and not info.ood:
            per_condition[info.condition] = mean_std(values)[0]

    def cell(values: list[float]) -> dict[str, float]:
        mean, std = mean_std(values)
        return {"mean": round(mean, 2), "std": round(std, 2)}

    cosines = (conflict or {}).get("pair_cosine_min")
    return {
        "split": ablation.get("split", "eval"), "seeds": seeds, "tsembed_variant": tsembed, "lora_variant": lora,
        "paired_diff_overall": cell(diffs),
        "lora_overall": cell([_overall(b) for _, b in pairs]),
        "tsembed_overall": cell([_overall(t) for t, _ in pairs]),
        "per_condition_diff": {k: round(v, 2) for k, v in per_condition.items()},
        "per_dataset_diff": {k: cell(v) for k, v in per_dataset.items()},
        "conflict_cosine_min": None if cosines is None else round(cosines, 4),
        "conflict_pair_cosines": (conflict or {}).get("pairs"),
        "collapsed_runs": len(collapsed), "collapsed": collapsed,
        "unchecked_runs": sum(not runs[(v, s)].get("collapse_checked", run_checked(runs[(v, s)]))
                              for s in seeds for v in (tsembed, lora)),
        "commit": commit or (ablation.get("environment") or {}).get("commit"),
    }

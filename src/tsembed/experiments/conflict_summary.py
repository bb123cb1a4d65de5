"""The headline numbers of the conflict study, from an ablation summary and a task-conflict report.

Kept as code (not hand-copied numbers) so `docs/results/conflict/summary.json` can be regenerated from the
runs it describes: `tsembed conflict-summary --ablation DIR/ablation.json --conflict DIR/conflict.json`.
A seed where either of the two runs collapsed (``tsembed.health``) is left out of every number, named under
``collapsed`` and counted in ``collapsed_runs``: a comparison against a collapsed model means nothing.
"""

from __future__ import annotations

from typing import TYPE_CHECKING, Any

from tsembed.data.registry import DATASETS
from tsembed.errors import ConfigError
from tsembed.evaluation.results import HIT1, OVERALL
from tsembed.experiments.ablation import mean_std
from tsembed.health import DAGGER, run_checked, run_collapsed

if TYPE_CHECKING:
    from tsembed.experiments.study.spec import Study


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


def _suite_seed(build: tuple[str, ...], name: str) -> int | str:
    """The ``--seed`` a suite was built with (its name where the build arguments do not say)."""
    args = list(build)
    return int(args[args.index("--seed") + 1]) if "--seed" in args[:-1] else name


def _entry(summary: dict[str, Any], stage: str, family: str | None = None) -> dict[str, Any] | None:
    found = [e for e in summary["compare"] if e["stage"] == stage and (family is None or e["family"] == family)]
    if len(found) > 1:
        raise ConfigError(f"the study compares {len(found)} pairs in stage {stage!r}; name the family")
    return found[0] if found else None


def _diff_cell(entry: dict[str, Any] | None) -> dict[str, Any] | None:
    """{mean, ci95, runs, missing} of a secondary endpoint; None when the study never compared it."""
    if entry is None:
        return None
    if "overall" not in entry:
        return {"mean": None, "ci95": None, "runs": 0, "missing": len(entry["missing"])}
    return {"mean": entry["overall"]["mean"], "ci95": entry["overall"]["ci"], "runs": entry["runs"],
            "missing": len(entry["missing"])}


def study_conflict_summary(study: Study, summary: dict[str, Any], conflict: dict[str, Any] | None = None,
                           primary: str = "eval", generic: str = "eval-generic",
                           breadth: str = "breadth") -> dict[str, Any]:
    """The headline numbers of a study (``tsembed study summarize``'s summary) in the conflict summary's schema.

    The primary endpoint is the ``conflict``-family comparison of stage ``primary``; its paired differences have
    hierarchical bootstrap intervals over suite seeds, training seeds and query episodes. ``generic`` and
    ``breadth`` are secondary endpoints (None where the study has no such comparison; a comparison with runs
    still missing counts them). Collapsed runs are left out of every comparison by the study's summary and
    counted here over all stages.

    Raises:
        ConfigError: the study has no comparison in the primary stage, or none of its runs has finished.
    """
    main = _entry(summary, primary, "conflict")
    if main is None or "overall" not in main:
        raise ConfigError(f"study {summary.get('name')!r}: no finished {primary!r} comparison of the conflict "
                          "suite; run that stage first")
    a, b = main["a"], main["b"]
    per_run = main["per_run"]

    def cell(values: list[float]) -> dict[str, float]:
        mean, std = mean_std(values)
        return {"mean": round(mean, 2), "std": round(std, 2)}

    cosines = (conflict or {}).get("pair_cosine_min")
    collapsed = sum(row.get("collapsed_runs", 0) for block in summary["stages"].values()
                    for fam in block.get("families", {}).values() for row in fam["variants"].values())
    return {
        "split": study.stage(primary).split, "seeds": sorted({r["seed"] for r in per_run}),
        "suite_seeds": [_suite_seed(study.suites[s].build, s) for s in main["suites"]],
        "tsembed_variant": b, "lora_variant": a,
        "paired_diff_overall": cell([r[b] - r[a] for r in per_run]),
        "ci95_overall": main["overall"]["ci"],
        "lora_overall": cell([r[a] for r in per_run]),
        "tsembed_overall": cell([r[b] for r in per_run]),
        "per_condition_diff": {c: v["mean"] for c, v in main["per_condition"].items()},
        "per_condition_ci95": {c: v["ci"] for c, v in main["per_condition"].items()},
        "generic_diff": _diff_cell(_entry(summary, generic)),
        "breadth_diff": _diff_cell(_entry(summary, breadth)),
        "conflict_cosine_min": None if cosines is None else round(cosines, 4),
        "conflict_pair_cosines": (conflict or {}).get("pairs"),
        "runs": main["runs"], "missing_runs": len(main["missing"]),
        "collapsed_runs": collapsed, "collapsed": main.get("collapsed", []),
        "study": summary["study"], "commit": summary.get("commit"),
    }

"""`tsembed task-scaling`: train on nested task sets of growing size and compare every task with its specialist.

The paper's "task scaling" claim as a curve: one shared adapter trained on more tasks should fall further
behind per-task specialists (interference), routed experts much less. For each seed the suite's training
datasets are put in a seeded order; models train on the first 1, 2, 4, … of them (all at the end) with the
same number of steps per task, and each task's hit@1 is divided by its specialist's (a single LoRA trained
on that task alone with the same budget). Runs are kept on disk like ``ablate``'s, so a rerun resumes.
A collapsed run (``tsembed.health``) is left out of the ratios (a collapsed specialist leaves its task out, like
one that scored 0), its cell is marked †, and ``collapsed_runs`` counts such runs.
"""

from __future__ import annotations

import json
import logging
import random
import statistics
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from tsembed.errors import ConfigError
from tsembed.evaluation.results import HIT1
from tsembed.experiments.ablation import environment, mean_std
from tsembed.experiments.runner import load_base_config, run_variant
from tsembed.experiments.variants import Variant, derive, pick, variants_for
from tsembed.fileio import atomic_write
from tsembed.health import DAGGER_NOTE, mark, run_collapsed

logger = logging.getLogger(__name__)

DEFAULT_VARIANTS = ("lora", "moe", "tsembed_weight", "tsembed_equal_active")
SPECIALIST = "lora"  # the specialist of a task is the single LoRA trained on it alone


def task_order(tasks: list[str], seed: int) -> list[str]:
    """The seed's order in which tasks join the training set."""
    order = sorted(tasks)
    random.Random(f"task-scaling:{seed}").shuffle(order)
    return order


def nested_sizes(count: int) -> list[int]:
    """1, 2, 4, … and ``count`` itself."""
    sizes, k = [], 1
    while k < count:
        sizes.append(k)
        k *= 2
    return [*sizes, count]


@dataclass(frozen=True)
class Budget:
    """Steps for a task set: ``steps_per_task`` per task, at least ``min_steps``; stage 1 takes half."""

    steps_per_task: int = 50
    min_steps: int = 150

    def __post_init__(self) -> None:
        if self.steps_per_task < 1 or self.min_steps < 1:
            raise ConfigError(f"steps per task and minimum steps must be >= 1, got {self.steps_per_task}, "
                              f"{self.min_steps}")

    def overrides(self, tasks: list[str]) -> list[str]:
        steps = max(self.min_steps, self.steps_per_task * len(tasks))
        return [f"data.datasets=[{','.join(tasks)}]", f"schedule.steps={steps}", f"schedule.stage1_steps={steps // 2}"]


def _hit(record: dict[str, Any], task: str) -> float | None:
    value = record["datasets"].get(task, {}).get(HIT1)
    return None if value is None else 100 * value


def relative_table(records: list[dict[str, Any]], specialists: dict[tuple[int, str], float | None]) -> dict[str, Any]:
    """variant -> size -> {mean, std, values (one per seed), per_task, collapsed_runs} of the mean relative hit@1
    (task / specialist) over the tasks in the set; tasks whose specialist scored 0 (or collapsed: None) are left
    out of the ratio, and collapsed runs are left out of the cell and counted."""
    table: dict[str, Any] = {}
    for rec in records:
        if run_collapsed(rec):
            cell = table.setdefault(rec["variant"], {}).setdefault(str(rec["size"]), {"values": [], "per_task": {}})
            cell["collapsed_runs"] = cell.get("collapsed_runs", 0) + 1
            continue
        ratios, per_task = [], {}
        for task in rec["tasks"]:
            spec, hit = specialists.get((rec["seed"], task)), _hit(rec, task)
            if spec and hit is not None:
                ratios.append(hit / spec)
                per_task[task] = hit / spec
        cell = table.setdefault(rec["variant"], {}).setdefault(str(rec["size"]), {"values": [], "per_task": {}})
        if ratios:
            cell["values"].append(statistics.fmean(ratios))
        for task, ratio in per_task.items():
            cell["per_task"].setdefault(task, []).append(ratio)
    for sizes in table.values():
        for cell in sizes.values():
            if cell["values"]:
                cell["mean"], cell["std"] = mean_std(cell["values"])
            cell["per_task"] = {t: statistics.fmean(v) for t, v in cell["per_task"].items()}
    return table


def drop_from_first_to_last(table: dict[str, Any]) -> dict[str, float | None]:
    """Per variant: mean relative hit@1 at one task minus at all tasks (the interference the curve shows)."""
    out: dict[str, float | None] = {}
    for variant, sizes in table.items():
        ordered = sorted(sizes, key=int)
        first, last = sizes[ordered[0]].get("mean"), sizes[ordered[-1]].get("mean")
        out[variant] = None if first is None or last is None else first - last
    return out


def plot_scaling(table: dict[str, Any], path: Path, split: str) -> Path:
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    fig, ax = plt.subplots(figsize=(6.5, 4.2))
    for variant, sizes in table.items():
        xs = sorted(int(k) for k in sizes if "mean" in sizes[k])
        if not xs:
            continue
        ys = [sizes[str(x)]["mean"] for x in xs]
        errs = [sizes[str(x)]["std"] for x in xs]
        ax.errorbar(xs, ys, yerr=errs, marker="o", capsize=3, label=variant)
    ax.axhline(1.0, color="grey", lw=0.8, ls="--")
    ax.set_xlabel("tasks trained together")
    ax.set_ylabel("hit@1 relative to the specialist")
    ax.set_title(f"Task scaling ({split} split; mean over tasks in the set, ± std over seeds)")
    ax.legend(fontsize=8)
    fig.tight_layout()
    fig.savefig(path, dpi=110)
    plt.close(fig)
    return path


def markdown(table: dict[str, Any], drops: dict[str, float | None]) -> str:
    sizes = sorted({int(k) for v in table.values() for k in v})
    lines = ["| model | " + " | ".join(f"{k} task{'s' if k > 1 else ''}" for k in sizes) + " | drop 1 → all |",
             "|---|" + "---:|" * (len(sizes) + 1)]
    for variant, row in table.items():
        cells = []
        for k in sizes:
            cell = row.get(str(k), {})
            cells.append(mark(f"{cell['mean']:.2f} ± {cell['std']:.2f}" if "mean" in cell else "–",
                              bool(cell.get("collapsed_runs"))))
        drop = drops.get(variant)
        lines.append(f"| {variant} | " + " | ".join(cells) + f" | {'–' if drop is None else f'{drop:+.2f}'} |")
    if any(cell.get("collapsed_runs") for row in table.values() for cell in row.values()):
        lines += ["", DAGGER_NOTE]
    return "\n".join(lines) + "\n"


def run_task_scaling(config: Path | None, overrides: list[str], suite: Path, out_dir: Path, seeds: list[int],
                     variant_names: list[str] | None = None, sizes: list[int] | None = None,
                     budget: Budget | None = None, split: str = "eval",
                     cache_dir: Path | None = None, derived: list[str] | None = None) -> dict[str, Any]:
    """Train and evaluate what is missing; write ``task-scaling.{json,md,png}`` to ``out_dir``."""
    from tsembed.data.suite import load_suite

    base = load_base_config(config, overrides)
    variants = pick(derive(variants_for(base, extra=True), derived or []), list(variant_names or DEFAULT_VARIANTS))
    specialist = pick(variants_for(base), [SPECIALIST])[0]
    tasks = load_suite(suite).names(split="train")
    if not tasks:
        raise ConfigError(f"suite '{suite}' has no training datasets")
    sizes = sorted(set(sizes or nested_sizes(len(tasks))))
    bad = [k for k in sizes if not 1 <= k <= len(tasks)]
    if bad:
        raise ConfigError(f"task-set sizes {bad} are outside 1..{len(tasks)} (the suite's training datasets)")
    budget = budget or Budget()
    cache_dir = cache_dir or out_dir / "eval-cache"

    def train(variant: Variant, seed: int, run_dir: Path, chosen: list[str]) -> dict[str, Any]:
        return run_variant(base, variant, seed, run_dir, suite, cache_dir, extra=budget.overrides(chosen), split=split)

    records, specialists, collapsed = [], {}, []
    for seed in seeds:
        order = task_order(tasks, seed)
        for task in order:
            rec = train(specialist, seed, out_dir / f"seed{seed}" / "specialist" / task, [task])
            if run_collapsed(rec):
                collapsed.append(f"seed{seed}/specialist/{task}")
            specialists[(seed, task)] = None if run_collapsed(rec) else _hit(rec, task)
        for size in sizes:
            chosen = order[:size]
            for variant in variants:
                if size == 1 and variant.name == SPECIALIST:  # the specialist of the first task, already trained
                    rec = train(specialist, seed, out_dir / f"seed{seed}" / "specialist" / chosen[0], chosen)
                else:
                    logger.info("task scaling: %s on %d task(s), seed %d", variant.name, size, seed)
                    rec = train(variant, seed, out_dir / f"seed{seed}" / f"tasks{size}" / variant.name, chosen)
                    if run_collapsed(rec):
                        collapsed.append(f"seed{seed}/tasks{size}/{variant.name}")
                records.append({"variant": variant.name, "seed": seed, "size": size, "tasks": chosen,
                                "datasets": rec["datasets"], "collapsed": run_collapsed(rec)})
    table = relative_table(records, specialists)
    drops = drop_from_first_to_last(table)
    summary = {"split": split, "seeds": seeds, "sizes": sizes, "budget": vars(budget),
               "orders": {seed: task_order(tasks, seed) for seed in seeds},
               "specialists": {f"{seed}/{task}": value for (seed, task), value in specialists.items()},
               "relative_hit1": table, "drop_first_to_all": drops, "runs": records,
               "collapsed_runs": len(collapsed), "collapsed": collapsed, "environment": environment(),
               "base_config": base}
    out_dir.mkdir(parents=True, exist_ok=True)
    atomic_write(out_dir / "task-scaling.json", lambda p: p.write_text(json.dumps(summary, indent=2) + "\n"))
    atomic_write(out_dir / "task-scaling.md", lambda p: p.write_text(markdown(table, drops)))
    plot_scaling(table, out_dir / "task-scaling.png", split)
    return summary

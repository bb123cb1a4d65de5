"""`tsembed ablate`: every variant × every seed, then mean ± std per meta-task, IND, OOD and overall.

A collapsed run (``tsembed.health``) is kept in ``per_seed`` but left out of every mean and paired difference;
its variant is marked † in the tables, with the number of such runs (``collapsed_runs``) beside it.
"""

from __future__ import annotations

import json
import logging
import platform
import statistics
import subprocess
from pathlib import Path
from typing import Any

import torch

from tsembed.evaluation.results import GROUPS, HIT1
from tsembed.evaluation.routing_report import ROUTING_FILE
from tsembed.experiments.runner import load_base_config, results_path, run_variant
from tsembed.experiments.variants import derive, pick, variants_for
from tsembed.fileio import atomic_write
from tsembed.health import DAGGER, DAGGER_NOTE, mark, run_checked, run_collapsed
from tsembed.training.checkpoint import METRICS_NAME, MODEL_DIR

logger = logging.getLogger(__name__)

TRAIN_LOSS = "train_infonce"  # plain InfoNCE over the last steps of training: a training-side fit measure
NMI_TASK, NMI_DATASET = "routing_nmi_meta_task", "routing_nmi_dataset"  # best layer, top-1 expert, queries of the split
ENTROPY = "routing_entropy"  # per-input router entropy / log E, mean over datasets and layers (1 = uniform)
PAIR_AGREEMENT = "routing_pair_agreement"  # query and positive share the top-1 expert, mean over layers
EXTRAS = {TRAIN_LOSS: ("train InfoNCE (last 100 steps)", ".3f"), NMI_TASK: ("NMI meta-task (best layer)", ".2f"),
          NMI_DATASET: ("NMI dataset (best layer)", ".2f"), ENTROPY: ("router entropy (per input)", ".3f"),
          PAIR_AGREEMENT: ("query–positive same expert", ".2f")}


def summary_stem(split: str) -> str:
    """File stem of the summary (``ablation.md``, ``ablation-dev.md``, ...)."""
    return "ablation" if split == "eval" else f"ablation-{split}"


def mean_std(values: list[float]) -> tuple[float, float]:
    """Mean and sample standard deviation (0 for one value)."""
    return statistics.fmean(values), statistics.stdev(values) if len(values) > 1 else 0.0


def summarize(records: list[dict[str, Any]]) -> dict[str, dict[str, Any]]:
    """variant -> group -> {mean, std, values} of hit@1 in points (0–100), over the variant's healthy runs.

    Each row also has ``seeds`` (those in the means), ``collapsed_runs`` and ``collapsed_seeds`` (left out).
    """
    table: dict[str, dict[str, Any]] = {}
    for rec in records:
        row = table.setdefault(rec["variant"], {"description": rec["description"], "seeds": [], "collapsed_runs": 0,
                                                "collapsed_seeds": []})
        if run_collapsed(rec):
            row["collapsed_runs"] += 1
            row["collapsed_seeds"].append(rec["seed"])
            continue
        row["seeds"].append(rec["seed"])
        for group in GROUPS:
            value = rec["aggregates"].get(group, {}).get(HIT1)
            if value is not None:
                row.setdefault(group, {"values": []})["values"].append(100 * value)
        for key in EXTRAS:
            if rec.get(key) is not None:
                row.setdefault(key, {"values": []})["values"].append(rec[key])
    for row in table.values():
        for group in (*GROUPS, *EXTRAS):
            if group in row:
                row[group]["mean"], row[group]["std"] = mean_std(row[group]["values"])
    return table


def paired_differences(records: list[dict[str, Any]], baseline: str = "lora", key: str = "aggregates",
                       groups: tuple[str, ...] = GROUPS) -> dict[str, dict[str, Any]]:
    """variant -> group -> {mean, std, values} of (variant − baseline) hit@1 points over the shared seeds.

    ``key="datasets"`` with the dataset names as ``groups`` gives the same per dataset. A seed where either run
    collapsed pairs nothing.
    """
    by_key = {(r["variant"], r["seed"]): r for r in records}
    table: dict[str, dict[str, Any]] = {}
    for (variant, seed), rec in by_key.items():
        base = by_key.get((baseline, seed))
        if variant == baseline or base is None or run_collapsed(rec) or run_collapsed(base):
            continue
        for group in groups:
            a, b = rec[key].get(group, {}).get(HIT1), base[key].get(group, {}).get(HIT1)
            if a is not None and b is not None:
                table.setdefault(variant, {}).setdefault(group, {"values": []})["values"].append(100 * (a - b))
    for row in table.values():
        for cell in row.values():
            cell["mean"], cell["std"] = mean_std(cell["values"])
    return table


def final_train_loss(metrics_path: Path, window: int = 100) -> float | None:
    """Mean unweighted InfoNCE of the last ``window`` steps (``contrastive`` where EANS was off)."""
    if not metrics_path.is_file():
        return None
    rows = [json.loads(line) for line in metrics_path.read_text().splitlines() if line.strip()]
    values = [r.get("infonce", r["contrastive"]) for r in rows[-window:] if r.get("contrastive") is not None]
    return statistics.fmean(values) if values else None


def routing_columns(run_dir: Path, suite: Path, cache_dir: Path | None, split: str = "eval") -> dict[str, float]:
    """Best-layer NMI of meta-task and of dataset with the top-1 expert, router entropy and query–positive
    expert agreement; {} for models without a router.

    Computed once on every query of ``split`` and kept in ``<run>/routing/`` (``routing-dev/`` for dev, plots
    included), so summaries re-read it; a report written before a column existed is recomputed (from the
    eval cache: no re-encoding).
    """
    out = run_dir / ("routing" if split == "eval" else f"routing-{split}")
    path = out / ROUTING_FILE
    report = json.loads(path.read_text()) if path.is_file() else None
    if report is None or (report.get("has_routing") and not report.get("pair_agreement")):
        if not (run_dir / MODEL_DIR).is_dir() or not Path(suite).exists():
            return {}
        from tsembed.evaluation import analyze_routing
        from tsembed.model import TSEmbedModel

        model = TSEmbedModel.from_pretrained(run_dir / MODEL_DIR)
        report = analyze_routing(model, suite, out, cache_dir=cache_dir, progress=False, split=split).to_dict()
    if not report.get("has_routing"):
        return {}
    nmi = report["nmi"]
    columns = {key: nmi[f"{name}_max"] for key, name in ((NMI_TASK, "meta_task"), (NMI_DATASET, "dataset"))
               if nmi.get(f"{name}_max") is not None}
    entropies = [e["per_input"] for e in report["entropy"].values()]
    if entropies:
        columns[ENTROPY] = float(sum(entropies) / len(entropies))
    columns[PAIR_AGREEMENT] = report["pair_agreement"]["mean"]
    return columns


def _cell(cell: dict[str, Any] | None, fmt: str) -> str:
    return "–" if cell is None else f"{cell['mean']:{fmt}} ± {cell['std']:{fmt}}"


def collapsed_label(name: str, row: dict[str, Any]) -> str:
    """The variant's name, marked † with the count of its collapsed runs when it has any."""
    count = row.get("collapsed_runs", 0)
    runs = count + len(row.get("seeds", []))
    return mark(name, bool(count)) + (f" ({count}/{runs} runs collapsed, left out)" if count else "")


def markdown_table(table: dict[str, dict[str, Any]]) -> str:
    """hit@1 mean ± std per group, then the training InfoNCE of the last 100 steps and the routing NMI."""
    header = ("| variant | " + " | ".join([*GROUPS, *(title for title, _ in EXTRAS.values())]) + " |\n|---|"
              + "---:|" * (len(GROUPS) + len(EXTRAS)) + "\n")
    rows = [f"| {collapsed_label(name, row)} | " + " | ".join([*(_cell(row.get(g), ".1f") for g in GROUPS),
                                         *(_cell(row.get(key), fmt) for key, (_, fmt) in EXTRAS.items())]) + " |"
            for name, row in table.items()]
    note = ("\n" + DAGGER_NOTE + "\n") if any(row.get("collapsed_runs") for row in table.values()) else ""
    return header + "\n".join(rows) + "\n" + note


def differences_table(table: dict[str, dict[str, Any]], baseline: str = "lora",
                      groups: tuple[str, ...] = GROUPS, collapsed: set[str] | frozenset[str] = frozenset()) -> str:
    """Paired differences; ``collapsed`` names the variants (baseline included) that lost runs to a collapse:
    they are marked †, their collapsed seeds being absent from the pairs."""
    header = (f"| variant − {mark(baseline, baseline in collapsed)} | " + " | ".join(groups) + " |\n|---|"
              + "---:|" * len(groups) + "\n")
    rows = [f"| {mark(name, name in collapsed)} | " + " | ".join(
        "–" if g not in row else f"{row[g]['mean']:+.1f} ± {row[g]['std']:.1f}" for g in groups) + " |"
        for name, row in table.items()]
    return header + "\n".join(rows) + "\n" + (("\n" + DAGGER_NOTE + "\n") if collapsed else "")


def plot_summary(table: dict[str, dict[str, Any]], path: Path, split: str = "eval") -> Path:
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    fig, ax = plt.subplots(figsize=(11, 4.5))
    width = 0.8 / max(len(table), 1)
    for i, (name, row) in enumerate(table.items()):
        means = [row[g]["mean"] if g in row else 0 for g in GROUPS]
        stds = [row[g]["std"] if g in row else 0 for g in GROUPS]
        ax.bar([x + i * width for x in range(len(GROUPS))], means, width, yerr=stds,
               label=mark(name, bool(row.get("collapsed_runs"))), capsize=2)
    ax.set_xticks([x + width * (len(table) - 1) / 2 for x in range(len(GROUPS))], GROUPS)
    ax.set_ylabel("hit@1 (%)")
    ax.set_title(f"Ablation on the offline suite, {split} split (mean ± std over seeds)")
    ax.legend(fontsize=8, ncol=3)
    fig.tight_layout()
    fig.savefig(path, dpi=110)
    plt.close(fig)
    return path


def environment() -> dict[str, Any]:
    try:
        git = subprocess.run(["git", "rev-parse", "HEAD"], capture_output=True, text=True, check=False)
        commit = git.stdout.strip()
    except OSError:
        commit = ""
    return {"commit": commit or None, "python": platform.python_version(), "torch": torch.__version__,
            "machine": platform.machine(), "processor": platform.processor() or None,
            "threads": torch.get_num_threads(), "cuda": torch.cuda.get_device_name(0) if torch.cuda.is_available()
            else None}


def run_ablation(config: Path | None, overrides: list[str], seeds: list[int], variant_names: list[str] | None,
                 modes: tuple[str, ...], suite: Path, out_dir: Path, cache_dir: Path | None,
                 summary_only: bool = False, split: str = "eval", derived: list[str] | None = None) -> dict[str, Any]:
    """Train and evaluate what is missing (or, ``summary_only``, just summarise the finished runs).

    ``split="dev"`` evaluates on the suite's dev split (where configs are compared) and writes
    ``ablation-dev.*``; the trained models are shared with an eval-split summary of the same directory.
    """
    base = load_base_config(config, overrides)
    variants = pick(derive(variants_for(base, modes, extra=bool(variant_names)), derived or []), variant_names)
    records = []
    for seed in seeds:
        for variant in variants:
            logger.info("ablation: %s, seed %d", variant.name, seed)
            run_dir = out_dir / f"seed{seed}" / variant.name
            path = results_path(run_dir, split)
            if summary_only:
                if not path.is_file():
                    logger.warning("%s seed %d: no %s, left out of the summary", variant.name, seed, path)
                    continue
                record = json.loads(path.read_text())
                if record.get("variant") != variant.name:  # e.g. a run trained under another name, linked here
                    logger.warning("%s holds a record of variant %r; summarised as %r (its directory's name)",
                                   path, record.get("variant"), variant.name)
                    record["variant"] = variant.name
            else:
                record = run_variant(base, variant, seed, run_dir, suite, cache_dir, split=split)
            records.append({**record, TRAIN_LOSS: final_train_loss(run_dir / METRICS_NAME),
                            **routing_columns(run_dir, suite, cache_dir, split)})
    table = summarize(records)
    differences = paired_differences(records)
    datasets = tuple(dict.fromkeys(name for r in records for name in r.get("datasets", {})))
    per_dataset = paired_differences(records, key="datasets", groups=datasets)
    collapsed = [f"{r['variant']}/seed{r['seed']}" for r in records if run_collapsed(r)]
    for run in collapsed:
        logger.warning("%s %s collapsed: left out of every mean and paired difference", DAGGER, run)
    unchecked = [f"{r['variant']}/seed{r['seed']}" for r in records if not run_checked(r)]
    if unchecked:
        logger.warning("%d run record(s) predate the collapse check (no query_cosine), so whether they collapsed is "
                       "unknown: %s", len(unchecked), ", ".join(unchecked))
    summary = {"split": split, "seeds": seeds, "variants": table, "differences_vs_lora": differences,
               "collapsed_runs": len(collapsed), "collapsed": collapsed, "unchecked_runs": len(unchecked),
               "dataset_differences_vs_lora": per_dataset,
               "environment": environment(), "base_config": base,
               "per_seed": [{k: r[k] for k in ("variant", "seed", "train_seconds", "trainable_parameters",
                                                "aggregates", "datasets")}
                            | {k: r.get(k) for k in (*EXTRAS, "query_cosine", "train_collapsed_datasets")}
                            | {"collapsed": run_collapsed(r), "collapsed_datasets": r.get("collapsed_datasets", []),
                               "collapse_checked": run_checked(r)}
                            for r in records]}
    stem = summary_stem(split)
    atomic_write(out_dir / f"{stem}.json", lambda p: p.write_text(json.dumps(summary, indent=2) + "\n"))
    lost = {name for name, row in table.items() if row.get("collapsed_runs")}
    text = markdown_table(table) + ("\n" + differences_table(differences, collapsed=lost) if differences else "")
    if per_dataset:
        text += "\nPer dataset:\n\n" + differences_table(per_dataset, groups=datasets, collapsed=lost)
    if unchecked:
        text += (f"\n{len(unchecked)} run(s) predate the collapse check (no `query_cosine` in their record): "
                 + ", ".join(unchecked) + ".\n")
    atomic_write(out_dir / f"{stem}.md", lambda p: p.write_text(text))
    plot_summary(table, out_dir / f"{stem}.png", split)
    return summary

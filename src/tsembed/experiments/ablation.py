"""`tsembed ablate`: every variant × every seed, then mean ± std per meta-task, IND, OOD and overall."""

from __future__ import annotations

import json
import logging
import platform
import statistics
import subprocess
from pathlib import Path
from typing import Any

import torch

from tsembed.evaluation.results import HIT1
from tsembed.experiments.runner import load_base_config, run_variant
from tsembed.experiments.variants import ablation_variants, pick
from tsembed.fileio import atomic_write

logger = logging.getLogger(__name__)

GROUPS = ("classification", "vqa", "retrieval", "grounding", "IND", "OOD", "overall")


def mean_std(values: list[float]) -> tuple[float, float]:
    """Mean and sample standard deviation (0 for one value)."""
    return statistics.fmean(values), statistics.stdev(values) if len(values) > 1 else 0.0


def summarize(records: list[dict[str, Any]]) -> dict[str, dict[str, Any]]:
    """variant -> group -> {mean, std, values} of hit@1 in points (0–100)."""
    table: dict[str, dict[str, Any]] = {}
    for rec in records:
        row = table.setdefault(rec["variant"], {"description": rec["description"], "seeds": []})
        row["seeds"].append(rec["seed"])
        for group in GROUPS:
            value = rec["aggregates"].get(group, {}).get(HIT1)
            if value is not None:
                row.setdefault(group, {"values": []})["values"].append(100 * value)
    for row in table.values():
        for group in GROUPS:
            if group in row:
                row[group]["mean"], row[group]["std"] = mean_std(row[group]["values"])
    return table


def markdown_table(table: dict[str, dict[str, Any]]) -> str:
    header = "| variant | " + " | ".join(GROUPS) + " |\n|---|" + "---:|" * len(GROUPS) + "\n"
    rows = []
    for name, row in table.items():
        cells = [f"{row[g]['mean']:.1f} ± {row[g]['std']:.1f}" if g in row else "–" for g in GROUPS]
        rows.append(f"| {name} | " + " | ".join(cells) + " |")
    return header + "\n".join(rows) + "\n"


def plot_summary(table: dict[str, dict[str, Any]], path: Path) -> Path:
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    fig, ax = plt.subplots(figsize=(11, 4.5))
    width = 0.8 / max(len(table), 1)
    for i, (name, row) in enumerate(table.items()):
        means = [row[g]["mean"] if g in row else 0 for g in GROUPS]
        stds = [row[g]["std"] if g in row else 0 for g in GROUPS]
        ax.bar([x + i * width for x in range(len(GROUPS))], means, width, yerr=stds, label=name, capsize=2)
    ax.set_xticks([x + width * (len(table) - 1) / 2 for x in range(len(GROUPS))], GROUPS)
    ax.set_ylabel("hit@1 (%)")
    ax.set_title("Ablation on the offline suite (mean ± std over seeds)")
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
                 modes: tuple[str, ...], suite: Path, out_dir: Path, cache_dir: Path | None) -> dict[str, Any]:
    base = load_base_config(config, overrides)
    moe = base.get("model", {}).get("moe") or {}
    variants = pick(ablation_variants(int(moe.get("num_experts", 4)), int(moe.get("rank", 8)), modes), variant_names)
    records = []
    for seed in seeds:
        for variant in variants:
            logger.info("ablation: %s, seed %d", variant.name, seed)
            records.append(run_variant(base, variant, seed, out_dir / f"seed{seed}" / variant.name, suite, cache_dir))
    table = summarize(records)
    summary = {"seeds": seeds, "variants": table, "environment": environment(), "base_config": base,
               "per_seed": [{k: r[k] for k in ("variant", "seed", "train_seconds", "trainable_parameters",
                                                "aggregates", "datasets")} for r in records]}
    atomic_write(out_dir / "ablation.json", lambda p: p.write_text(json.dumps(summary, indent=2) + "\n"))
    atomic_write(out_dir / "ablation.md", lambda p: p.write_text(markdown_table(table)))
    plot_summary(table, out_dir / "ablation.png")
    return summary

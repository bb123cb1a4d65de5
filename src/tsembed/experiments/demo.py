"""`tsembed demo`: build the suite, train TSEmbed and the single-LoRA baseline, evaluate, report."""

from __future__ import annotations

import json
import logging
import shutil
import time
from pathlib import Path
from typing import Any

from tsembed.evaluation.results import GROUPS, HIT1
from tsembed.experiments.ablation import environment
from tsembed.experiments.runner import evaluation_dir, load_base_config, run_variant
from tsembed.experiments.variants import variants_for
from tsembed.fileio import atomic_write
from tsembed.health import DAGGER_NOTE, mark, run_collapsed
from tsembed.training.checkpoint import METRICS_NAME, MODEL_DIR

logger = logging.getLogger(__name__)

# 40 steps per model keep the whole quick demo (two trainings, two evaluations with a cold image cache, routing)
# under 5 minutes on 2 CPU cores (timings in docs/results/demo-quick/README.md).
QUICK = ["schedule.steps=40", "schedule.stage1_steps=20", "optim.warmup_steps=4", "run.checkpoint_every=20",
         "align.steps=100"]  # a shorter bridge alignment: the quick demo shows the pipeline, not its best numbers


def ensure_suite(suite: Path, seed: int) -> Path:
    if (suite / "suite.json").is_file():
        logger.info("using the suite at %s", suite)
        return suite
    from tsembed.data.suite import build_suite

    logger.info("building the offline suite at %s", suite)
    build_suite(suite, seed=seed)
    return suite


def run_demo(out: Path, suite: Path, work: Path, quick: bool, seed: int, overrides: list[str]) -> Path:
    """Returns the report path (``<out>/README.md``)."""
    from tsembed.evaluation import analyze_routing, plot_training_curves
    from tsembed.model import TSEmbedModel

    start = time.perf_counter()
    ensure_suite(suite, seed)
    extra = [*(QUICK if quick else []), *overrides]
    base = load_base_config(None, extra)
    variants = variants_for(base)
    cache = work / "eval-cache"
    records = {}
    for name in ("tsembed_weight", "lora"):
        records[name] = run_variant(base, variants[name], seed, work / name, suite, cache)
    out.mkdir(parents=True, exist_ok=True)
    for name in records:
        plot_training_curves(work / name / METRICS_NAME, out / f"training_{name}.png")
        shutil.copy(evaluation_dir(work / name) / "results.md", out / f"results_{name}.md")
    model = TSEmbedModel.from_pretrained(work / "tsembed_weight" / MODEL_DIR)
    routing = analyze_routing(model, suite, out / "routing", cache_dir=cache, max_per_dataset=100)
    report = render_report(records, routing.to_dict(), out, quick, seed, extra, time.perf_counter() - start)
    atomic_write(out / "README.md", lambda p: p.write_text(report))
    summary = {name: r["aggregates"] for name, r in records.items()}
    summary["collapsed_runs"] = sum(run_collapsed(r) for r in records.values())  # tsembed.health
    atomic_write(out / "summary.json", lambda p: p.write_text(json.dumps(summary, indent=2) + "\n"))
    return out / "README.md"


def _cell(aggregates: dict[str, Any], group: str) -> str:
    value = aggregates.get(group, {}).get(HIT1)
    return "–" if value is None else f"{100 * value:.1f}"


def render_report(records: dict[str, dict[str, Any]], routing: dict[str, Any], out: Path, quick: bool, seed: int,
                  overrides: list[str], seconds: float) -> str:
    t, b = records["tsembed_weight"]["aggregates"], records["lora"]["aggregates"]
    t_bad, b_bad = run_collapsed(records["tsembed_weight"]), run_collapsed(records["lora"])
    collapsed = ([f"{DAGGER_NOTE} Collapsed here: "
                  + ", ".join(f"{name} ({', '.join(r.get('collapsed_datasets') or [])})"
                              for name, r in records.items() if run_collapsed(r))
                  + ". No difference is computed against a collapsed run.", ""] if t_bad or b_bad else [])
    lines = [
        "# tsembed demo report", "",
        f"TSEmbed (MoE-LoRA + two stages + EANS `weight`) against a single LoRA with the same trainable budget, "
        f"same data, steps and seed ({seed}), on the offline OpenMoji suite. {'Quick mode. ' if quick else ''}"
        f"Took {seconds / 60:.1f} min on {environment()['threads']} CPU threads.", "",
        "## hit@1 (%) per meta-task, IND, OOD and overall", "",
        "| model | " + " | ".join(GROUPS) + " |", "|---|" + "---:|" * len(GROUPS),
        f"| {mark('TSEmbed', t_bad)} | " + " | ".join(_cell(t, g) for g in GROUPS) + " |",
        f"| {mark('single LoRA', b_bad)} | " + " | ".join(_cell(b, g) for g in GROUPS) + " |",
        "| difference | " + " | ".join("–" if t_bad or b_bad else _diff(t, b, g) for g in GROUPS) + " |", "",
        *collapsed,
        "One seed only: differences of a point or two are within seed noise; `tsembed ablate` reports mean ± std "
        "over seeds (see `docs/results/`).", "",
        "Per-dataset tables: [TSEmbed](results_tsembed_weight.md), [single LoRA](results_lora.md).", "",
        "## Routing", "",
    ]
    nmi = routing.get("nmi") or {}
    if nmi:
        best = max(((k, v) for k, v in nmi.items() if isinstance(v, float) and k.endswith("_max")), default=None,
                   key=lambda kv: kv[1])
        if best:
            lines += [f"Normalised mutual information between dataset/meta-task and the top-1 expert: "
                      f"`{best[0]}` = {best[1]:.3f} (see `routing/routing.json`).", ""]
    pairs = routing.get("pair_agreement") or {}
    if pairs:
        lines += [f"A query and its positive target take the same top-1 expert in {100 * pairs['mean']:.0f} % of pairs "
                  f"(mean over layers; {100 * pairs['chance_mean']:.0f} % expected by chance from expert usage).", ""]
    for png in sorted((out / "routing").glob("*.png")):
        lines.append(f"![{png.stem}](routing/{png.name})")
    lines += ["", "## Training curves", "", "![TSEmbed](training_tsembed_weight.png)", "",
              "![single LoRA](training_lora.png)", "", "## Reproduce", "", "```bash",
              "tsembed demo" + (" --quick" if quick else "") + f" --seed {seed}"
              + "".join(f" --set {o}" for o in overrides if o not in QUICK), "```", ""]
    return "\n".join(lines)


def _diff(a: dict[str, Any], b: dict[str, Any], group: str) -> str:
    x, y = a.get(group, {}).get(HIT1), b.get(group, {}).get(HIT1)
    return "–" if x is None or y is None else f"{100 * (x - y):+.1f}"

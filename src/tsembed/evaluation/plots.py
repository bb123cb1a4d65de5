"""PNG plots of routing reports and training curves.

Figures are built with matplotlib's object API (``Figure``, Agg canvas): no pyplot global state, no
display needed, safe inside servers and tests. Every PNG is written atomically.
"""

from __future__ import annotations

import json
import logging
import os
from pathlib import Path
from typing import TYPE_CHECKING, Any

import numpy as np

from tsembed.errors import DataError
from tsembed.evaluation.routing_report import RoutingReport
from tsembed.fileio import atomic_write

if TYPE_CHECKING:
    from matplotlib.figure import Figure

logger = logging.getLogger(__name__)


def _figure(width: float, height: float) -> Figure:
    os.environ.setdefault("MPLBACKEND", "Agg")
    from matplotlib.figure import Figure

    return Figure(figsize=(width, height), layout="constrained")


def _save(fig: Figure, path: Path) -> Path:
    atomic_write(path, lambda p: fig.savefig(p, format="png", dpi=110))
    return path


def short_names(names: list[str]) -> list[str]:
    """Drop the dotted prefix all names share ("bert.encoder.layer.0.attention.self.query" -> "0.attention...")."""
    if len(names) < 2:
        return [".".join(n.split(".")[-3:]) for n in names]
    prefix = os.path.commonprefix(names)
    cut = prefix.rfind(".") + 1
    return [n[cut:] or n for n in names]


def _heatmap(
    fig: Figure, ax: Any, values: np.ndarray, rows: list[str], cols: list[str], title: str, label: str
) -> None:
    image = ax.imshow(values, aspect="auto", cmap="viridis", vmin=0.0, vmax=max(float(values.max()), 1e-6))
    ax.set_xticks(range(len(cols)), cols, fontsize=8)
    ax.set_yticks(range(len(rows)), rows, fontsize=8)
    ax.set_title(title, fontsize=9)
    if values.size <= 240:
        for (i, j), v in np.ndenumerate(values):
            ax.text(
                j,
                i,
                f"{v:.2f}",
                ha="center",
                va="center",
                fontsize=6,
                color="white" if v < 0.6 * values.max() else "black",
            )
    fig.colorbar(image, ax=ax, shrink=0.8, label=label)


def plot_expert_usage(report: RoutingReport, path: Path) -> Path:
    """Dataset × expert heat map of mean router probability, one panel per heat-map layer."""
    layers, datasets = report.heatmap_layers, list(report.usage)
    experts = report.route_labels()
    fig = _figure(3.2 * len(layers) + 1.5, 0.32 * len(datasets) + 1.8)
    axes = np.atleast_1d(fig.subplots(1, len(layers)))
    for ax, layer, short in zip(axes, layers, short_names(layers), strict=True):
        values = np.array([report.usage[d][layer] for d in datasets])  # [datasets, E]
        _heatmap(fig, ax, values, datasets if ax is axes[0] else [""] * len(datasets), experts, short, "mean prob")
    fig.suptitle("Expert usage per dataset (mean router probability)", fontsize=10)
    return _save(fig, path)


def plot_layer_load(report: RoutingReport, path: Path) -> Path:
    """Layer × expert heat map of top-1 share over all inputs, and the balance score per layer."""
    layers = report.layers
    share = np.array([report.layer_load[layer]["top1_share"] for layer in layers])  # [L, E]
    balance = [report.layer_load[layer]["load_balance"] for layer in layers]
    fig = _figure(9.0, min(0.22 * len(layers) + 1.8, 40.0))
    ax_heat, ax_bal = fig.subplots(1, 2, width_ratios=[3, 1], sharey=True)
    _heatmap(
        fig,
        ax_heat,
        share,
        short_names(layers),
        report.route_labels(),
        "Top-1 share per expert",
        "share of inputs",
    )
    ax_bal.barh(range(len(layers)), balance, color="tab:orange")
    ax_bal.axvline(1.0, color="gray", linestyle="--", linewidth=0.8)
    ax_bal.set_title("E·Σ f·P (1 = balanced)", fontsize=9)
    fig.suptitle("Load per layer", fontsize=10)
    return _save(fig, path)


def plot_entropy(report: RoutingReport, path: Path) -> Path:
    """Normalised routing entropy per dataset: per input (confidence) and of the mean usage (spread)."""
    names = list(report.entropy)
    x = np.arange(len(names))
    fig = _figure(max(5.0, 0.55 * len(names) + 2.0), 3.6)
    ax = fig.subplots()
    ax.bar(x - 0.2, [report.entropy[n]["per_input"] for n in names], 0.4, label="per input")
    ax.bar(x + 0.2, [report.entropy[n]["marginal"] for n in names], 0.4, label="of mean usage")
    ax.set_xticks(x, names, rotation=45, ha="right", fontsize=8)
    ax.set_ylim(0, 1.05)
    ax.set_ylabel("entropy / log E")
    ax.set_title("Routing entropy per dataset (mean over layers)", fontsize=10)
    ax.legend(fontsize=8)
    return _save(fig, path)


def plot_nmi(report: RoutingReport, path: Path) -> Path:
    """NMI between dataset / meta-task and top-1 expert, per layer."""
    layers = report.layers
    fig = _figure(max(5.0, 0.18 * len(layers) + 3.0), 3.6)
    ax = fig.subplots()
    for key, label in (("dataset", "dataset"), ("meta_task", "meta-task")):
        if report.nmi.get(key):
            ax.plot(
                range(len(layers)),
                [report.nmi[key][layer] for layer in layers],
                marker="o",
                markersize=3,
                label=f"{label} (mean {report.nmi[key + '_mean']:.2f})",
            )
    ax.set_xticks(range(len(layers)), short_names(layers), rotation=90, fontsize=6)
    ax.set_ylim(0, 1.05)
    ax.set_ylabel("NMI with top-1 expert")
    ax.legend(fontsize=8)
    ax.set_title("How much the top-1 expert tells about the task", fontsize=10)
    return _save(fig, path)


def plot_routing(report: RoutingReport, out_dir: str | Path) -> list[Path]:
    """All routing plots of ``report`` into ``out_dir``; returns the written paths."""
    out_dir = Path(out_dir)
    return [
        plot_expert_usage(report, out_dir / "expert_usage.png"),
        plot_layer_load(report, out_dir / "layer_load.png"),
        plot_entropy(report, out_dir / "routing_entropy.png"),
        plot_nmi(report, out_dir / "routing_nmi.png"),
    ]


def read_metrics_jsonl(path: str | Path) -> list[dict[str, Any]]:
    """Training log records that have a ``step`` and a ``loss`` (other records, e.g. eval lines, skipped).

    Raises:
        DataError: A line is not a JSON object (file and line named), or no record has step and loss.
    """
    path = Path(path)
    records, skipped = [], 0
    for line_no, line in enumerate(path.read_text(encoding="utf-8").splitlines(), start=1):
        if not line.strip():
            continue
        try:
            rec = json.loads(line)
        except json.JSONDecodeError as exc:
            raise DataError(f"{path} line {line_no}: not valid JSON ({exc.msg})") from None
        if not isinstance(rec, dict):
            raise DataError(f"{path} line {line_no}: expected a JSON object, got {type(rec).__name__}")
        if isinstance(rec.get("step"), int | float) and isinstance(rec.get("loss"), int | float):
            records.append(rec)
        else:
            skipped += 1
    if skipped:
        logger.info("%s: %d line(s) without numeric `step` and `loss` not plotted", path, skipped)
    if not records:
        raise DataError(f"{path}: no line has numeric `step` and `loss` fields")
    return sorted(records, key=lambda r: r["step"])


def stage_switches(records: list[dict[str, Any]]) -> list[tuple[float, Any]]:
    """(step, new stage) wherever ``stage`` changes from one record to the next."""
    out, previous = [], records[0].get("stage")
    for rec in records[1:]:
        if rec.get("stage") != previous:
            out.append((rec["step"], rec.get("stage")))
            previous = rec.get("stage")
    return out


def _curve(ax: Any, points: np.ndarray, label: str) -> None:
    """A raw curve; long noisy ones get a moving average on top so the trend stays readable."""
    steps, values = points[:, 0], points[:, 1]
    window = len(values) // 50
    if window < 2:
        ax.plot(steps, values, linewidth=1.0, label=label)
        return
    line = ax.plot(steps, values, linewidth=0.6, alpha=0.3)[0]
    smooth = np.convolve(values, np.ones(window) / window, mode="valid")  # [n - window + 1]
    ax.plot(steps[window - 1 :], smooth, linewidth=1.2, color=line.get_color(), label=label)


def plot_training_curves(jsonl_path: str | Path, out_png: str | Path) -> Path:
    """Loss and, when logged, EANS statistics against step, with a marker at each stage switch.

    Each line of ``jsonl_path`` is a JSON object with ``step``, ``loss``, ``stage`` and optionally
    ``infonce`` (the unweighted loss, drawn beside the EANS-weighted one), ``eans_entropy``,
    ``affinity_chosen``, ``affinity_random``, ``false_negative_frac``.
    """
    records = read_metrics_jsonl(jsonl_path)
    panels: list[tuple[str, list[str]]] = [("loss", ["loss", "infonce"])]
    panels += [
        (title, keys)
        for title, keys in (
            ("EANS weight entropy", ["eans_entropy"]),
            ("routing affinity", ["affinity_chosen", "affinity_random"]),
            ("false-negative share", ["false_negative_frac"]),
        )
        if any(k in r for r in records for k in keys)
    ]
    fig = _figure(7.0, 2.2 * len(panels) + 0.6)
    axes = np.atleast_1d(fig.subplots(len(panels), 1, sharex=True))
    switches = stage_switches(records)
    for ax, (title, keys) in zip(axes, panels, strict=True):
        for key in keys:
            points = [(r["step"], r[key]) for r in records if isinstance(r.get(key), int | float)]
            if points:
                _curve(ax, np.array(points, dtype=float), key)
        for step, stage in switches:
            ax.axvline(step, color="red", linestyle="--", linewidth=0.9)
            if ax is axes[0]:
                ax.annotate(
                    f"stage {stage}",
                    (step, 1.0),
                    xycoords=("data", "axes fraction"),
                    fontsize=8,
                    color="red",
                    xytext=(3, -10),
                    textcoords="offset points",
                )
        ax.set_ylabel(title, fontsize=8)
        if len(keys) > 1:
            ax.legend(fontsize=7)
    axes[-1].set_xlabel("step")
    return _save(fig, Path(out_png))

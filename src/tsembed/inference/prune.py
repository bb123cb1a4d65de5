"""``tsembed export --prune-below P``: drop experts the router rarely picks, and say what it cost.

Usage of expert e is its share of top-1 decisions over (input, adapted layer) pairs on a calibration set
(``tsembed.inference.calibration``; token-level routing: the top-1 of the input's mean router probability).
Experts under ``P`` lose their LoRA rows and router rows (``tsembed.moe.prune_experts``). Null experts
(``moe.num_null_experts``) own no weights: their usage is reported, and they always stay. The change is
measured as hit@1 on an eval file, by the evaluation harness, when one is given, else as the cosine drift
of the calibration embeddings.
"""

from __future__ import annotations

import json
import logging
from dataclasses import replace
from pathlib import Path
from typing import Any

import numpy as np
from torch import nn

from tsembed import moe
from tsembed.encoding import embed_items
from tsembed.errors import AdapterError, ConfigError
from tsembed.fileio import atomic_write
from tsembed.inference.calibration import calibration_inputs
from tsembed.inference.loading import load_model
from tsembed.inputs import EmbedInput

logger = logging.getLogger(__name__)

REPORT_NAME = "prune_report.json"


def expert_usage(model: nn.Module, inputs: list[EmbedInput], batch_size: int = 32) -> np.ndarray:
    """Top-1 share of each route over (input, layer) pairs: [E + N] (routed, then null experts), summing to 1."""
    out = embed_items(model, inputs, batch_size, with_routing=True)
    if not out.layer_probs:
        raise AdapterError("the model has no routers: nothing to measure")
    counts = sum(moe.top1_counts(p) for p in out.layer_probs.values())  # [E]
    return (counts.double() / counts.sum()).numpy()


def prune_experts(model: nn.Module, keep: list[int]) -> None:
    """Keep only experts ``keep`` (in that order) in every MoE layer of a ``TSEmbedModel`` and in its config."""
    new = moe.prune_experts(model.backbone, keep)
    model.config = replace(model.config, moe=new)
    if model.pilot_router is not None:  # a composed model: the kept experts keep their pilots
        model.pilot_router = model.pilot_router.kept(keep)


def hit_at_1(model: nn.Module, eval_file: str | Path, image_root: str | Path | None, batch_size: int) -> float | None:
    """MMEB hit@1 on one eval file, computed by the evaluation harness (its metric and tie rule)."""
    from tsembed.data.mmeb import default_image_root
    from tsembed.evaluation.harness import evaluate
    from tsembed.evaluation.results import HIT1
    from tsembed.evaluation.sources import EvalSet

    path = Path(eval_file)
    spec = EvalSet(path.stem, path, default_image_root(path, image_root))
    return evaluate(model, spec, batch_size=batch_size, progress=False).datasets[0].metrics[HIT1]


def export_pruned(
    model_dir: str | Path, out_dir: str | Path, threshold: float, calibration: str | Path,
    eval_file: str | Path | None = None, image_root: str | Path | None = None, batch_size: int = 32,
    backbone_path: str | Path | None = None,
) -> dict[str, Any]:
    """Prune experts with usage below ``threshold``, save the model to ``out_dir``, return the report.

    ``backbone_path`` overrides the saved backbone reference (``TSEmbedModel.from_pretrained``)."""
    if not 0.0 <= threshold < 1.0:
        raise ConfigError(f"--prune-below must be in [0, 1), got {threshold}")
    model = load_model(model_dir, backbone_path=backbone_path)
    if model.config.moe is None:
        raise AdapterError(f"{model_dir} has no MoE-LoRA adapters to prune")
    inputs = calibration_inputs(calibration, image_root)
    usage = expert_usage(model, inputs, batch_size)
    routed = model.config.moe.num_experts  # null routes (numbered after the routed experts) cannot be pruned
    keep = [e for e, share in enumerate(usage[:routed]) if share >= threshold]
    dropped = [e for e in range(routed) if e not in keep]
    if not keep:
        raise ConfigError("pruning would drop every expert; lower --prune-below")
    before = hit_at_1(model, eval_file, image_root, batch_size) if eval_file else None
    reference = embed_items(model, inputs, batch_size).embeddings if eval_file is None else None
    prune_experts(model, keep)
    report: dict[str, Any] = {"threshold": threshold, "usage": [round(float(u), 6) for u in usage],
                              "kept": keep, "dropped": dropped, "null_routes": list(range(routed, len(usage))),
                              "calibration": str(calibration),
                              "calibration_inputs": len(inputs)}
    if eval_file:
        after = hit_at_1(model, eval_file, image_root, batch_size)
        change = None if before is None or after is None else after - before
        report["eval"] = {"metric": "hit@1", "file": str(eval_file), "before": before, "after": after,
                          "change": change}
    else:
        cos = (embed_items(model, inputs, batch_size).embeddings * reference).sum(-1)  # [N]
        report["eval"] = {"metric": "cosine_to_unpruned", "mean": float(cos.mean()), "min": float(cos.min())}
    model.config = replace(model.config, extra={**model.config.extra, "pruned_experts": dropped,
                                                "pruned_from": str(model_dir)})
    out = Path(model.save_pretrained(out_dir, eval_results={"prune": report["eval"]}))
    atomic_write(out / REPORT_NAME, lambda p: p.write_text(json.dumps(report, indent=2) + "\n"))
    logger.info("pruned experts %s (usage < %.3f); kept %s", dropped, threshold, keep)
    return report

"""``tsembed export --prune-below P``: drop experts the router rarely picks, and say what it cost.

Usage of expert e is its share of top-1 decisions over (input, adapted layer) pairs on a calibration set
(token-level routing: the top-1 of the input's mean router probability). Experts under ``P`` lose their
LoRA rows and router rows; ``top_k`` shrinks if needed. The change is measured as hit@1 on an eval file
when one is given, else as the cosine drift of the calibration embeddings.
"""

from __future__ import annotations

import json
import logging
from dataclasses import replace
from pathlib import Path
from typing import Any

import numpy as np
import torch
from torch import nn

from tsembed.data.inputs import EmbedInput
from tsembed.errors import AdapterError, ConfigError
from tsembed.fileio import atomic_write
from tsembed.inference.encoder import embed_items
from tsembed.inference.loading import load_model
from tsembed.moe import MoELoRALinear, adapter_layers
from tsembed.moe.attach import CONFIG_ATTR

logger = logging.getLogger(__name__)

REPORT_NAME = "prune_report.json"


def expert_usage(model: nn.Module, inputs: list[EmbedInput], batch_size: int = 32) -> np.ndarray:
    """Top-1 share of each expert over (input, layer) pairs: [E], summing to 1."""
    out = embed_items(model, inputs, batch_size)
    if not out.layer_probs:
        raise AdapterError("the model has no routers: nothing to measure")
    num_experts = next(iter(out.layer_probs.values())).shape[-1]
    counts = sum(torch.bincount(p.argmax(-1), minlength=num_experts) for p in out.layer_probs.values())
    return (counts.double() / counts.sum()).numpy()


def _slice_layer(layer: MoELoRALinear, keep: list[int]) -> None:
    r = layer.rank
    rows = [i for e in keep for i in range(e * r, (e + 1) * r)]
    rows += list(range(layer.num_experts * r, (layer.num_experts + layer.num_shared) * r))
    index = torch.tensor(rows, dtype=torch.long, device=layer.lora_A.device)
    with torch.no_grad():
        layer.lora_A = nn.Parameter(layer.lora_A[index].clone(), requires_grad=layer.lora_A.requires_grad)
        layer.lora_B = nn.Parameter(layer.lora_B[:, index].clone(), requires_grad=layer.lora_B.requires_grad)
        old = layer.router.weight
        router = nn.Linear(old.shape[1], len(keep), bias=False, device=old.device, dtype=old.dtype)
        router.weight.copy_(old[torch.tensor(keep, device=old.device)])
        router.weight.requires_grad_(old.requires_grad)
        if layer.router_hint is not None:
            hint = layer.router_hint
            layer.router_hint = nn.Parameter(hint[:, torch.tensor(keep, device=hint.device)].clone(),
                                              requires_grad=hint.requires_grad)
    layer.router = router
    layer.num_experts = len(keep)
    layer.top_k = min(layer.top_k, len(keep))


def prune_experts(model: nn.Module, keep: list[int]) -> None:
    """Keep only experts ``keep`` (in that order) in every MoE layer and in the saved config."""
    moe = model.config.moe
    if not keep:
        raise ConfigError("pruning would drop every expert; lower --prune-below")
    for layer in adapter_layers(model.backbone).values():
        _slice_layer(layer, keep)
    new = replace(moe, num_experts=len(keep), top_k=min(moe.top_k, len(keep)))
    setattr(model.backbone, CONFIG_ATTR, new)
    model.config = replace(model.config, moe=new)


def hit_at_1(model: nn.Module, eval_file: str | Path, image_root: str | Path | None, batch_size: int) -> float:
    """MMEB hit@1: the positive (candidate 0) scores above every other candidate of its row."""
    from tsembed.data.mmeb import read_eval

    split = read_eval(eval_file, image_root)
    queries = [row.query_input(split.image_root) for row in split.rows]
    candidates = [c for row in split.rows for c in row.target_inputs(split.image_root)]
    q = embed_items(model, queries, batch_size).embeddings
    c = embed_items(model, candidates, batch_size).embeddings
    hits, offset = 0, 0
    for i, row in enumerate(split.rows):
        scores = c[offset : offset + row.num_candidates] @ q[i]  # [num_candidates]
        hits += int(scores.argmax()) == 0
        offset += row.num_candidates
    return hits / max(len(split.rows), 1)


def _pairs(split: Any, limit: int | None = None) -> list[EmbedInput]:
    rows = split.rows if limit is None else split.rows[:limit]
    return [x for row in rows for x in (row.query_input(split.image_root), row.positive_input(split.image_root))]


def calibration_inputs(
    path: str | Path, image_root: str | Path | None = None, per_dataset: int = 64
) -> list[EmbedInput]:
    """Inputs to measure routing on: a suite directory (train splits), MMEB train/eval rows, or corpus rows."""
    from tsembed.data.formats import read_records
    from tsembed.data.mmeb import read_eval, read_train

    path = Path(path)
    if (path / "suite.json").is_file():
        from tsembed.data.suite import load_suite

        suite = load_suite(path)
        return [x for name in suite.names(split="train") for x in _pairs(suite.train(name), per_dataset)]
    records, _ = read_records(path)
    first = next((r.value for r in records if isinstance(r.value, dict)), {})
    if "qry" in first:
        return _pairs(read_train(path, image_root))
    if "qry_text" in first:
        return _pairs(read_eval(path, image_root))
    from tsembed.inference.corpus import read_corpus

    return read_corpus(path, image_root).inputs


def export_pruned(
    model_dir: str | Path, out_dir: str | Path, threshold: float, calibration: str | Path,
    eval_file: str | Path | None = None, image_root: str | Path | None = None, batch_size: int = 32,
) -> dict[str, Any]:
    """Prune experts with usage below ``threshold``, save the model to ``out_dir``, return the report."""
    if not 0.0 <= threshold < 1.0:
        raise ConfigError(f"--prune-below must be in [0, 1), got {threshold}")
    model = load_model(model_dir)
    if model.config.moe is None:
        raise AdapterError(f"{model_dir} has no MoE-LoRA adapters to prune")
    inputs = calibration_inputs(calibration, image_root)
    usage = expert_usage(model, inputs, batch_size)
    keep = [e for e, share in enumerate(usage) if share >= threshold]
    dropped = [e for e in range(len(usage)) if e not in keep]
    before = hit_at_1(model, eval_file, image_root, batch_size) if eval_file else None
    reference = embed_items(model, inputs, batch_size).embeddings if eval_file is None else None
    prune_experts(model, keep)
    report: dict[str, Any] = {"threshold": threshold, "usage": [round(float(u), 6) for u in usage],
                              "kept": keep, "dropped": dropped, "calibration": str(calibration),
                              "calibration_inputs": len(inputs)}
    if eval_file:
        after = hit_at_1(model, eval_file, image_root, batch_size)
        report["eval"] = {"metric": "hit@1", "file": str(eval_file), "before": before, "after": after,
                          "change": after - before}
    else:
        cos = (embed_items(model, inputs, batch_size).embeddings * reference).sum(-1)  # [N]
        report["eval"] = {"metric": "cosine_to_unpruned", "mean": float(cos.mean()), "min": float(cos.min())}
    model.config = replace(model.config, extra={**model.config.extra, "pruned_experts": dropped,
                                                "pruned_from": str(model_dir)})
    out = Path(model.save_pretrained(out_dir, eval_results={"prune": report["eval"]}))
    atomic_write(out / REPORT_NAME, lambda p: p.write_text(json.dumps(report, indent=2) + "\n"))
    logger.info("pruned experts %s (usage < %.3f); kept %s", dropped, threshold, keep)
    return report

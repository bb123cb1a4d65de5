"""Routing analysis: which experts each dataset uses, per layer, and how much routing tells tasks apart.

Inputs are the queries of the eval splits (one per row; optionally also each dataset's distinct
candidates). Per input and adapted layer the router probability vector is the one the model's forward
reports (``RoutingOutput.layer_probs``: for token-level routing, the mean over the input's real tokens);
its argmax is the input's top-1 expert at that layer. From these:

* usage[dataset][layer]: mean router probability per expert; top1_share: share of inputs per top-1 expert;
* layer_load[layer]: the same over all inputs, plus the balance score E · Σ f_e P_e (1 balanced, E collapsed);
* entropy[dataset]: mean per-input routing entropy and entropy of the dataset's mean usage, both divided
  by log E (0 = one expert, 1 = uniform), averaged over layers;
* nmi: normalised mutual information between dataset (and meta-task) and top-1 expert, per layer, with
  the mean over layers and the most task-specific layer (``dataset_max`` / ``dataset_max_layer``, ...);
* pair_agreement: share of queries whose top-1 expert equals their positive target's, per dataset and layer,
  beside the share expected by chance from the two sides' expert usage. With sequence-level routing a query
  and its document embedded by different experts must still meet in one space; low agreement on a retrieval
  set is where a single LoRA, which embeds both with the same weights, has it easier.
"""

from __future__ import annotations

import logging
import math
import re
from collections.abc import Iterable, Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import numpy as np
import torch
from torch import nn

from tsembed.data.images import ImageChecker
from tsembed.errors import ConfigError
from tsembed.evaluation.encoder import CachedEncoder, encoder_for
from tsembed.evaluation.information import distribution_entropy, normalized_mutual_info
from tsembed.evaluation.loading import load_eval_set
from tsembed.evaluation.plots import plot_routing
from tsembed.evaluation.routing_report import ROUTING_FILE, RoutingReport
from tsembed.evaluation.sources import resolve_eval_sets
from tsembed.inputs import input_key
from tsembed.moe import balance

logger = logging.getLogger(__name__)

NO_ADAPTERS = ("the model has no MoE-LoRA router (a base model, or a single LoRA with one expert): "
               "there is no routing to analyse")


@dataclass
class RoutingData:
    """Router probabilities of the analysed inputs: probs [N, L, E], one dataset/meta-task label per input.

    ``positive`` [Nq, L, E] holds the router probabilities of each query's positive target, aligned with
    the rows of ``probs`` where ``is_query`` (included candidates are not queries).
    """

    layers: list[str]
    probs: np.ndarray
    dataset: np.ndarray
    meta_task: np.ndarray  # "" where unknown
    is_query: np.ndarray
    positive: np.ndarray


def select_layers(available: Sequence[str], wanted: Iterable[str | int] | None) -> list[str]:
    """Layers named by full name, index (negative from the end) or full-match regex, in model order.

    Raises:
        ConfigError: A selector matches no layer (the available names are listed).
    """
    if wanted is None:
        return list(available)
    chosen: set[str] = set()
    for item in (w for x in wanted for w in (str(x).split(",") if isinstance(x, str) else [x])):
        sel = item.strip() if isinstance(item, str) else item
        if sel in ("", None):
            continue
        if isinstance(sel, int) or re.fullmatch(r"-?\d+", sel):
            i = int(sel)
            if not -len(available) <= i < len(available):
                raise ConfigError(f"--layers: index {i} out of range; the model has {len(available)} adapted layers")
            chosen.add(available[i])
            continue
        matched = [a for a in available if a == sel or re.fullmatch(sel, a)]
        if not matched:
            shown = ", ".join(available[:8]) + (", ..." if len(available) > 8 else "")
            raise ConfigError(f"--layers: {sel!r} matches no adapted layer; layers are: {shown}")
        chosen.update(matched)
    return [a for a in available if a in chosen]


def spaced(items: Sequence[str], count: int) -> list[str]:
    """At most ``count`` items evenly spaced, always including the first and last."""
    if len(items) <= count:
        return list(items)
    idx = sorted({round(i * (len(items) - 1) / (count - 1)) for i in range(count)}) if count > 1 else [0]
    return [items[i] for i in idx]


def collect_routing_data(
    encoder: CachedEncoder,
    suite: Any,
    datasets: Iterable[str] | None = None,
    *,
    include_targets: bool = False,
    max_per_dataset: int | None = None,
    skip_invalid: bool = False,
    check_images: bool = True,
    split: str = "eval",
) -> RoutingData | None:
    """Router probabilities of the queries (and distinct candidates) of each eval set, and of each query's
    positive target; None without adapters. After ``evaluate`` with the same cache nothing is re-encoded."""
    if not encoder.has_routing:
        return None
    probs, positives, is_query, ds_labels, task_labels, layers = [], [], [], [], [], None
    checkers: dict[Path, ImageChecker] = {}
    for spec in resolve_eval_sets(suite, datasets, split):
        checker = checkers.setdefault(spec.image_root, ImageChecker(spec.image_root)) if check_images else None
        loaded = load_eval_set(spec, skip_invalid=skip_invalid, check_images=check_images, checker=checker)
        rows = loaded.rows[:max_per_dataset]
        inputs = [row.query_input(spec.image_root) for row in rows]
        if include_targets:
            seen = {input_key(x) for x in inputs}
            for row in rows:
                for x in row.target_inputs(spec.image_root):
                    if input_key(x) not in seen:
                        seen.add(input_key(x))
                        inputs.append(x)
        if not inputs:
            continue
        out = encoder.encode(inputs, need_routing=True, desc=f"{spec.name} routing",
                             task=spec.task)
        layers = out.layers
        probs.append(out.routing)
        positive = [row.target_inputs(spec.image_root)[0] for row in rows]
        positives.append(encoder.encode(positive, need_routing=True, desc=f"{spec.name} positives",
                                        task=spec.task).routing)
        is_query += [True] * len(rows) + [False] * (len(inputs) - len(rows))
        ds_labels += [spec.name] * len(inputs)
        task_labels += [spec.task or ""] * len(inputs)
    if not probs:
        raise ConfigError("routing analysis: the selected eval sets have no rows")
    return RoutingData(list(layers or []), np.concatenate(probs), np.array(ds_labels), np.array(task_labels),
                       np.array(is_query), np.concatenate(positives))


def _layer_stats(probs: np.ndarray) -> tuple[np.ndarray, np.ndarray]:
    """Mean probability [L, E] and top-1 share [L, E] over the inputs of probs [N, L, E]."""
    num_experts = probs.shape[-1]
    top1 = probs.argmax(axis=-1)  # [N, L]
    share = np.stack([np.bincount(top1[:, j], minlength=num_experts) for j in range(probs.shape[1])])  # [L, E]
    return probs.mean(axis=0), share / max(probs.shape[0], 1)


def pair_agreement(query: np.ndarray, positive: np.ndarray) -> tuple[np.ndarray, np.ndarray]:
    """Per layer: share of pairs with the same top-1 expert, and the share expected by chance.

    Chance is Σ_e f_q(e) · f_t(e) with f the two sides' top-1 shares: what agreement would be if each
    side kept its expert usage but pairs were matched at random.
    """
    q, t = query.argmax(axis=-1), positive.argmax(axis=-1)  # [N, L]
    _, q_share = _layer_stats(query)
    _, t_share = _layer_stats(positive)
    return (q == t).mean(axis=0), (q_share * t_share).sum(axis=-1)


def routing_report(
    data: RoutingData, layers: Iterable[str | int] | None = None, max_heatmaps: int = 4, include_targets: bool = False
) -> RoutingReport:
    """All routing statistics of ``data`` for the selected layers (pure computation, no files)."""
    chosen = select_layers(data.layers, layers)
    cols = [data.layers.index(name) for name in chosen]
    probs = data.probs[:, cols, :]  # [N, L', E]
    num_experts = probs.shape[-1]
    log_e = math.log(num_experts) if num_experts > 1 else 1.0
    report = RoutingReport(
        has_routing=True,
        layers=chosen,
        num_experts=num_experts,
        heatmap_layers=spaced(chosen, max_heatmaps),
        include_targets=include_targets,
    )
    for name in dict.fromkeys(data.dataset.tolist()):
        mask = data.dataset == name
        sub = probs[mask]  # [n, L', E]
        mean, share = _layer_stats(sub)
        report.datasets[name] = {"meta_task": data.meta_task[mask][0] or None, "num_inputs": int(mask.sum())}
        report.usage[name] = {layer: mean[i].round(6).tolist() for i, layer in enumerate(chosen)}
        report.top1_share[name] = {layer: share[i].round(6).tolist() for i, layer in enumerate(chosen)}
        report.entropy[name] = {
            "per_input": float(distribution_entropy(sub).mean() / log_e),
            "marginal": float(distribution_entropy(mean).mean() / log_e),
        }
    mean, share = _layer_stats(probs)
    loads = balance(torch.from_numpy(share), torch.from_numpy(mean).double())  # [L']
    for i, layer in enumerate(chosen):
        report.layer_load[layer] = {
            "top1_share": share[i].round(6).tolist(),
            "mean_prob": mean[i].round(6).tolist(),
            "load_balance": float(loads[i]),
        }
    top1 = probs.argmax(axis=-1)  # [N, L']
    known = data.meta_task != ""
    report.nmi = {
        "dataset": {layer: normalized_mutual_info(data.dataset, top1[:, i]) for i, layer in enumerate(chosen)},
        "meta_task": {
            layer: normalized_mutual_info(data.meta_task[known], top1[known, i]) for i, layer in enumerate(chosen)
        }
        if known.any()
        else {},
    }
    query_probs, query_dataset = probs[data.is_query], data.dataset[data.is_query]
    positive = data.positive[:, cols, :]
    agree, chance = pair_agreement(query_probs, positive)
    report.pair_agreement = {
        "per_layer": {layer: float(agree[i]) for i, layer in enumerate(chosen)},
        "chance_per_layer": {layer: float(chance[i]) for i, layer in enumerate(chosen)},
        "mean": float(agree.mean()),
        "chance_mean": float(chance.mean()),
        "datasets": {},
    }
    for name in dict.fromkeys(query_dataset.tolist()):
        mask = query_dataset == name
        agree, chance = pair_agreement(query_probs[mask], positive[mask])
        report.pair_agreement["datasets"][name] = {"mean": float(agree.mean()), "chance_mean": float(chance.mean())}
    for key in ("dataset", "meta_task"):
        per_layer = report.nmi[key]
        best = max(per_layer, key=per_layer.get) if per_layer else None
        report.nmi[f"{key}_mean"] = float(np.mean(list(per_layer.values()))) if per_layer else None
        report.nmi[f"{key}_max"] = per_layer[best] if best else None
        report.nmi[f"{key}_max_layer"] = best
    return report


def analyze_routing(
    model: nn.Module,
    suite: Any,
    out_dir: str | Path | None = None,
    layers: Iterable[str | int] | None = None,
    datasets: Iterable[str] | None = None,
    *,
    include_targets: bool = False,
    max_per_dataset: int | None = None,
    max_heatmaps: int = 4,
    cache_dir: str | Path | None = None,
    batch_size: int = 32,
    skip_invalid: bool = False,
    check_images: bool = True,
    progress: bool = True,
    encoder: CachedEncoder | None = None,
    split: str = "eval",
) -> RoutingReport:
    """Measure expert usage on the eval splits of ``suite``; write PNG plots and ``routing.json``.

    Args:
        model: A ``TSEmbedModel``; without adapters the report says there is nothing to analyse.
        suite: Suite directory, eval file(s) or mapping, as for ``evaluate``.
        out_dir: Where ``routing.json`` and the PNGs go; None: compute only.
        layers: Adapted layers to analyse (names, indices or full-match regexes); None: all.
        datasets: Only these datasets.
        include_targets: Also route each dataset's distinct candidates.
        max_per_dataset: Use at most this many rows per dataset.
        max_heatmaps: Per-dataset × expert heat maps are drawn for this many evenly spaced layers.
        cache_dir, batch_size, progress, encoder: As for ``evaluate``; sharing a cache with a previous
            ``evaluate`` call re-encodes nothing (routing is cached beside the embeddings).
        skip_invalid, check_images, split: As for ``evaluate``.
    """
    encoder = encoder_for(model, encoder, cache_dir, batch_size=batch_size, progress=progress)
    data = collect_routing_data(
        encoder,
        suite,
        datasets,
        include_targets=include_targets,
        max_per_dataset=max_per_dataset,
        skip_invalid=skip_invalid,
        check_images=check_images,
        split=split,
    )
    report = (
        RoutingReport(has_routing=False, reason=NO_ADAPTERS)
        if data is None
        else routing_report(data, layers, max_heatmaps, include_targets)
    )
    if report.has_routing:  # the null experts' routes come last in every per-expert list
        moe = getattr(getattr(model, "config", None), "moe", None)
        report.num_null_experts = int(getattr(moe, "num_null_experts", 0) or 0)
    if out_dir is not None:
        out_dir = Path(out_dir)
        if report.has_routing:
            report.plots = [p.name for p in plot_routing(report, out_dir)]
        report.to_json(out_dir / ROUTING_FILE)
    if not report.has_routing:
        logger.warning("%s", NO_ADAPTERS)
    return report

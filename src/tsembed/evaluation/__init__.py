"""MMEB-protocol evaluation, ranking metrics, routing analysis and plots (DESIGN §5, §7).

>>> results = evaluate(model, "suite/", cache_dir="~/.cache/tsembed/embeddings", global_pool=True)
>>> results.save("runs/eval")                                   # results.json + results.md
>>> report = analyze_routing(model, "suite/", "runs/routing")   # routing.json + PNGs
>>> plot_training_curves("runs/train/metrics.jsonl", "runs/train/curves.png")

Names are imported on first use, so ``tsembed --help`` (which imports ``tsembed.evaluation.cli``)
does not load torch.
"""

from __future__ import annotations

import importlib
from typing import TYPE_CHECKING, Any

_EXPORTS: dict[str, str] = {
    "CachedEncoder": "encoder",
    "EncodeStats": "encoder",
    "evaluate": "harness",
    "score_dataset": "harness",
    "model_identity": "identity",
    "entropy": "information",
    "mutual_information": "information",
    "normalized_mutual_info": "information",
    "LABEL_FIELDS": "loading",
    "load_eval_set": "loading",
    "hit_at_k": "metrics",
    "mrr": "metrics",
    "ndcg_at_k": "metrics",
    "positive_rank": "metrics",
    "ranking_metrics": "metrics",
    "recall_at_k": "metrics",
    "relevant_ranks": "metrics",
    "plot_routing": "plots",
    "plot_training_curves": "plots",
    "DatasetResult": "results",
    "EvalResults": "results",
    "aggregate": "results",
    "RoutingReport": "routing",
    "analyze_routing": "routing",
    "EvalSet": "sources",
    "resolve_eval_sets": "sources",
}

__all__ = [
    "LABEL_FIELDS",
    "CachedEncoder",
    "DatasetResult",
    "EncodeStats",
    "EvalResults",
    "EvalSet",
    "RoutingReport",
    "aggregate",
    "analyze_routing",
    "entropy",
    "evaluate",
    "hit_at_k",
    "load_eval_set",
    "model_identity",
    "mrr",
    "mutual_information",
    "ndcg_at_k",
    "normalized_mutual_info",
    "plot_routing",
    "plot_training_curves",
    "positive_rank",
    "ranking_metrics",
    "recall_at_k",
    "relevant_ranks",
    "resolve_eval_sets",
    "score_dataset",
]

if TYPE_CHECKING:
    from tsembed.evaluation.encoder import CachedEncoder, EncodeStats
    from tsembed.evaluation.harness import evaluate, score_dataset
    from tsembed.evaluation.identity import model_identity
    from tsembed.evaluation.information import entropy, mutual_information, normalized_mutual_info
    from tsembed.evaluation.loading import LABEL_FIELDS, load_eval_set
    from tsembed.evaluation.metrics import (
        hit_at_k,
        mrr,
        ndcg_at_k,
        positive_rank,
        ranking_metrics,
        recall_at_k,
        relevant_ranks,
    )
    from tsembed.evaluation.plots import plot_routing, plot_training_curves
    from tsembed.evaluation.results import DatasetResult, EvalResults, aggregate
    from tsembed.evaluation.routing import RoutingReport, analyze_routing
    from tsembed.evaluation.sources import EvalSet, resolve_eval_sets


def __getattr__(name: str) -> Any:
    if name not in _EXPORTS:
        raise AttributeError(f"module 'tsembed.evaluation' has no attribute {name!r}")
    value = getattr(importlib.import_module(f"tsembed.evaluation.{_EXPORTS[name]}"), name)
    globals()[name] = value
    return value

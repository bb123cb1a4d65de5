"""MMEB-protocol evaluation, ranking metrics, routing analysis and plots (DESIGN §5, §7).

>>> results = evaluate(model, "suite/", cache_dir="~/.cache/tsembed/embeddings", global_pool=True)
>>> results.save("runs/eval")                                   # results.json + results.md
>>> report = analyze_routing(model, "suite/", "runs/routing")   # routing.json + PNGs
>>> plot_training_curves("runs/train/metrics.jsonl", "runs/train/curves.png")

Each public name is listed once, below, beside the submodule that defines it, and imported on first use:
importing one submodule (every ``tsembed`` command imports ``tsembed.evaluation.cli``) loads none of
the others.
"""

from __future__ import annotations

import importlib
from typing import Any

_PUBLIC: dict[str, tuple[str, ...]] = {
    "encoder": ("CachedEncoder", "EncodeStats"),
    "harness": ("evaluate", "score_dataset"),
    "identity": ("model_identity",),
    "information": ("entropy", "mutual_information", "normalized_mutual_info"),
    "loading": ("LABEL_FIELDS", "load_eval_set"),
    "metrics": ("hit_at_k", "mrr", "ndcg_at_k", "positive_rank", "ranking_metrics", "recall_at_k", "relevant_ranks"),
    "plots": ("plot_routing", "plot_training_curves"),
    "results": ("DatasetResult", "EvalResults", "aggregate"),
    "routing": ("analyze_routing",),
    "routing_report": ("RoutingReport",),
    "sources": ("EvalSet", "resolve_eval_sets"),
}
_MODULE_OF = {name: module for module, names in _PUBLIC.items() for name in names}

__all__ = sorted(_MODULE_OF)


def __getattr__(name: str) -> Any:
    if name not in _MODULE_OF:
        raise AttributeError(f"module 'tsembed.evaluation' has no attribute {name!r}")
    value = getattr(importlib.import_module(f"tsembed.evaluation.{_MODULE_OF[name]}"), name)
    globals()[name] = value
    return value


def __dir__() -> list[str]:
    return sorted({*globals(), *__all__})

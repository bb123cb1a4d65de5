"""MMEB-protocol evaluation, ranking metrics, routing analysis and plots (docs/design.md §5, §7).

>>> results = evaluate(model, "suite/", cache_dir="~/.cache/tsembed/embeddings", global_pool=True)
>>> results.save("runs/eval")                                   # results.json + results.md
>>> report = analyze_routing(model, "suite/", "runs/routing")   # routing.json + PNGs
>>> plot_training_curves("runs/train/metrics.jsonl", "runs/train/curves.png")

Each public name is listed once, below, beside the submodule that defines it, and imported on first use:
importing one submodule (every ``tsembed`` command imports ``tsembed.evaluation.cli``) loads none of
the others.
"""

from tsembed.lazy import lazy_exports

_PUBLIC: dict[str, tuple[str, ...]] = {
    "encoder": ("CachedEncoder", "EncodeStats"),
    "harness": ("evaluate", "score_dataset", "score_rows"),
    "hits": ("DatasetHits", "load_hits", "write_hits"),
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
_EXPORTS = {name: f"tsembed.evaluation.{module}" for module, names in _PUBLIC.items() for name in names}

__getattr__, __dir__ = lazy_exports(__name__, _EXPORTS)

__all__ = sorted(_EXPORTS)

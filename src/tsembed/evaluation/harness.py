"""The MMEB evaluation protocol over a suite: encode each distinct input once, rank, average.

Each eval row's query is ranked against its own candidates (candidate 0 is the positive) and hit@1 is
reported per dataset (MMEB's precision@1). With ``global_pool`` each query is also ranked against the
union of all candidates of its dataset, de-duplicated by ``tsembed.inputs.input_key``, for recall@k, MRR and
nDCG@10. Queries and candidates are embedded by the model's one forward, exactly as given in the file
(MMEB rows already carry their instructions).
"""

from __future__ import annotations

import contextlib
import logging
import time
from collections.abc import Iterable
from pathlib import Path
from typing import Any

import numpy as np
import torch
from torch import nn

from tsembed.data.images import ImageChecker
from tsembed.errors import ConfigError
from tsembed.evaluation.encoder import CachedEncoder, encoder_for
from tsembed.evaluation.hits import DatasetHits
from tsembed.evaluation.loading import LoadedEvalSet, load_eval_set
from tsembed.evaluation.metrics import (
    DEFAULT_KS,
    PESSIMISTIC,
    candidate_order,
    check_tie_rule,
    hit_at_k,
    positive_rank,
    ranking_metrics,
)
from tsembed.evaluation.results import GLOBAL_PREFIX, HIT1, DatasetResult, EvalResults
from tsembed.evaluation.sources import resolve_eval_sets
from tsembed.health import DAGGER, is_collapsed, mean_pairwise_cosine
from tsembed.inputs import EmbedInput, InputKey, input_key
from tsembed.moe.config import TARGET_ROUTINGS
from tsembed.moe.routing import forced_routes

logger = logging.getLogger(__name__)

#: How a row's candidates are routed: by themselves, or to their query's expert (composed models).
#: Queries scored per matrix product; bounds memory at chunk x (distinct inputs) scores.
SCORE_CHUNK = 256


class _Interned:
    """Distinct inputs of one dataset (``input_key``), with the index of each occurrence."""

    def __init__(self) -> None:
        self.index: dict[InputKey, int] = {}
        self.inputs: list[EmbedInput] = []

    def add(self, item: EmbedInput) -> int:
        key = input_key(item)
        if key not in self.index:
            self.index[key] = len(self.inputs)
            self.inputs.append(item)
        return self.index[key]


def _index_rows(loaded: LoadedEvalSet) -> tuple[_Interned, torch.Tensor, torch.Tensor, torch.Tensor]:
    """Distinct inputs, query ids [N], padded candidate ids [N, C] and their validity mask [N, C]."""
    interned = _Interned()
    root = loaded.spec.image_root
    queries = [interned.add(row.query_input(root)) for row in loaded.rows]
    candidates = [[interned.add(x) for x in row.target_inputs(root)] for row in loaded.rows]
    width = max((len(c) for c in candidates), default=1)
    cand = torch.zeros(len(candidates), width, dtype=torch.long)
    valid = torch.zeros(len(candidates), width, dtype=torch.bool)
    for i, ids in enumerate(candidates):
        cand[i, : len(ids)] = torch.tensor(ids, dtype=torch.long)
        valid[i, : len(ids)] = True
    return interned, torch.tensor(queries, dtype=torch.long), cand, valid


def score_dataset(
    embeddings: torch.Tensor,
    queries: torch.Tensor,
    candidates: torch.Tensor,
    valid: torch.Tensor,
    global_pool: bool = False,
    ks: tuple[int, ...] = DEFAULT_KS,
    tie_rule: str = PESSIMISTIC,
) -> tuple[dict[str, float], int]:
    """Metrics of one dataset from embeddings of its distinct inputs (see ``score_rows``)."""
    metrics, pool_size, _ = score_rows(embeddings, queries, candidates, valid, global_pool, ks, tie_rule)
    return metrics, pool_size


def score_rows(
    embeddings: torch.Tensor,
    queries: torch.Tensor,
    candidates: torch.Tensor,
    valid: torch.Tensor,
    global_pool: bool = False,
    ks: tuple[int, ...] = DEFAULT_KS,
    tie_rule: str = PESSIMISTIC,
) -> tuple[dict[str, float], int, np.ndarray]:
    """Metrics of one dataset from embeddings of its distinct inputs.

    Args:
        embeddings: [M, D] embeddings of the distinct inputs.
        queries: [N] row -> query input id.
        candidates: [N, C] row -> candidate input ids (column 0 the positive), padded.
        valid: [N, C] False on padding.
        global_pool: Also rank against the union of all candidates.
        ks: Cut-offs of recall@k for the global pool.
        tie_rule: "pessimistic" or "vlm2vec" (``tsembed.evaluation.metrics``), for hit@1 and the pool metrics.

    Returns:
        The metrics, the size of the global pool (0 without one) and each row's hit@1 ([N] uint8 array).
    """
    pool = torch.unique(candidates[valid]) if global_pool else torch.zeros(0, dtype=torch.long)  # [P] sorted
    pool_pos = torch.searchsorted(pool, candidates[:, 0].contiguous()) if global_pool else None  # [N] in pool
    row_ranks, pool_ranks = [], []
    for start in range(0, len(queries), SCORE_CHUNK):
        sl = slice(start, start + SCORE_CHUNK)
        scores = embeddings[queries[sl]] @ embeddings.T  # [b, M]; identical inputs share one score
        row_ranks.append(positive_rank(scores.gather(1, candidates[sl]), 0, valid[sl], tie_rule))  # [b]
        if global_pool:
            pool_ranks.append(positive_rank(scores[:, pool], pool_pos[sl], tie_rule=tie_rule))  # [b]
    if not row_ranks:
        return {HIT1: None}, len(pool), np.zeros(0, dtype=np.uint8)
    ranks = torch.cat(row_ranks)
    metrics = {HIT1: hit_at_k(ranks, 1)}
    if global_pool:
        metrics.update({GLOBAL_PREFIX + k: v for k, v in ranking_metrics(torch.cat(pool_ranks), ks).items()})
    return metrics, len(pool), (ranks <= 1).numpy().astype(np.uint8)


def rank_candidates(embeddings: torch.Tensor, queries: torch.Tensor, candidates: torch.Tensor, valid: torch.Tensor,
                    tie_rule: str = PESSIMISTIC) -> list[list[int]]:
    """Each row's candidate columns, best first (padding left out), as ``score_dataset`` ranks them."""
    orders = []
    for start in range(0, len(queries), SCORE_CHUNK):
        sl = slice(start, start + SCORE_CHUNK)
        scores = embeddings[queries[sl]] @ embeddings.T  # [b, M]
        order = candidate_order(scores.gather(1, candidates[sl]), valid[sl], 0, tie_rule)  # [b, C]
        counts = valid[sl].sum(dim=1).tolist()
        orders += [row[:n] for row, n in zip(order.tolist(), counts, strict=True)]
    return orders


def candidate_names(texts: tuple[str, ...], paths: tuple[str, ...]) -> list[str]:
    """How VLM2Vec's pred files name a row's candidates: the text of a text candidate, the image path of an image
    (``path:text`` where the row's image candidates differ in text, as for RefCOCO-Matching)."""
    image_texts = {t for t, p in zip(texts, paths, strict=True) if p}
    return [(f"{p}:{t.strip()}" if len(image_texts) > 1 else p) if p else t for t, p in zip(texts, paths, strict=True)]


def predictions(loaded: LoadedEvalSet, orders: list[list[int]]) -> list[dict[str, Any]]:
    """One ``<dataset>_pred.jsonl`` line per row, as VLM2Vec-V2 writes them: the ranked candidate names and the
    positive's name (candidate 0)."""
    out = []
    for row, order in zip(loaded.rows, orders, strict=True):
        names = candidate_names(row.tgt_text, row.tgt_img_path)
        out.append({"prediction": [names[c] for c in order], "label": [names[0]], "rel_scores": None})
    return out


def query_cosine(embeddings: torch.Tensor, queries: torch.Tensor) -> float | None:
    """Mean pairwise cosine of a dataset's distinct queries (rows sharing one query count once); None below two."""
    value = mean_pairwise_cosine(embeddings[torch.unique(queries)])
    return None if value != value else round(value, 6)  # NaN (fewer than two distinct queries) -> None


def evaluate(
    model: nn.Module,
    suite: Any,
    datasets: Iterable[str] | None = None,
    *,
    cache_dir: str | Path | None = None,
    batch_size: int = 32,
    global_pool: bool = False,
    ks: tuple[int, ...] = DEFAULT_KS,
    skip_invalid: bool = False,
    check_images: bool = True,
    progress: bool = True,
    encoder: CachedEncoder | None = None,
    split: str = "eval",
    image_root: str | Path | None = None,
    tie_rule: str = PESSIMISTIC,
    predictions_dir: str | Path | None = None,
    target_routing: str | None = None,
) -> EvalResults:
    """Evaluate ``model`` on an MMEB-format suite.

    Args:
        model: A ``TSEmbedModel`` (with or without adapters), on any device.
        suite: A suite directory (``suite.json``), MMEB-eval as downloaded (a folder per dataset), eval file(s),
            a ``{name: path}`` mapping or a loaded suite (see ``tsembed.evaluation.sources``).
        datasets: Only these dataset names (comma-separated items allowed); None: all.
        cache_dir: Embedding cache root (sub-folder per model identity); None: no disk cache.
        batch_size: Inputs per forward.
        global_pool: Also rank against each dataset's union of candidates (recall@k, MRR, nDCG@10).
        ks: recall@k cut-offs for the global pool.
        skip_invalid: Drop malformed rows (counted and reported) instead of raising.
        check_images: Open every image once before encoding (catches missing/corrupt files early).
        progress: tqdm progress bars.
        encoder: Reuse an encoder (and its cache) across calls; ``cache_dir``/``batch_size`` then unused.
        split: "eval", or "dev" for a suite's development split (compare configs there, report on eval).
        image_root: Where relative image paths resolve, replacing the suite's own root (e.g. the folder
            MMEB-eval's ``images.zip`` was unpacked into).
        tie_rule: "pessimistic" (a tie counts against the positive) or "vlm2vec" (VLM2Vec's ``argmax``: a tie goes
            to the candidate listed first, the positive; rows that repeat their positive are then kept).
        predictions_dir: Also rank every row's candidates in full, write them there as VLM2Vec-V2's
            ``<Dataset>_pred.jsonl`` (one file per dataset, written as it is scored, nothing held in memory) and
            record V2's metrics over them in ``DatasetResult.ranking`` (``tsembed.evaluation.leaderboard``).
        target_routing: ``own`` (every input routed by itself) or ``query`` (composed models, and models trained
            with ``moe.target_routing="query"``: each row's candidates are embedded by the experts its query was
            routed to, as a corpus indexed once per expert is searched
            with the query's expert; RouterRetriever's protocol). ``query`` costs one candidate encoding per expert
            the dataset's queries use, outside the embedding cache. None: the model's own protocol (``query`` for a
            model trained with it, else ``own``).

    Returns:
        Per-dataset metrics with per-meta-task, IND, OOD and overall averages.

    Raises:
        DataError: A malformed row (file, row and field named) and ``skip_invalid`` is False.
        ConfigError: Unknown dataset names.
    """
    start = time.perf_counter()
    check_tie_rule(tie_rule)
    if target_routing is None:  # the model's own protocol
        target_routing = "query" if getattr(model, "query_routed", False) else "own"
    if target_routing not in TARGET_ROUTINGS:
        raise ConfigError(f"target_routing must be one of {TARGET_ROUTINGS}, got {target_routing!r}")
    if target_routing == "query" and not (getattr(model, "pilot_routed", False)
                                          or getattr(model, "query_routed", False)):
        raise ConfigError("target_routing 'query' needs a composed model (tsembed compose) or one trained with "
                          "moe.target_routing='query': this model's router routes every input by itself")
    specs = resolve_eval_sets(suite, datasets, split, image_root=image_root)
    encoder = encoder_for(model, encoder, cache_dir, batch_size=batch_size, progress=progress)
    before = encoder.stats.to_dict()
    hits: dict[str, DatasetHits] = {}
    checkers: dict[Path, ImageChecker] = {}  # one per image root: each image is opened once per run
    results = []
    embedding_dim = None
    for spec in specs:
        checker = checkers.setdefault(spec.image_root, ImageChecker(spec.image_root)) if check_images else None
        loaded = load_eval_set(spec, skip_invalid=skip_invalid, check_images=check_images, checker=checker,
                               tie_rule=tie_rule)
        interned, queries, candidates, valid = _index_rows(loaded)
        if not loaded.rows:
            logger.warning("%s: no valid eval rows in %s", spec.name, spec.path)
        embeddings = torch.from_numpy(encoder.encode(interned.inputs, desc=spec.name, task=spec.task).embeddings)
        if target_routing == "query" and loaded.rows:
            embeddings, candidates = query_routed_candidates(model, encoder, interned.inputs, embeddings, queries,
                                                             candidates, valid, spec.name)
        embedding_dim = int(embeddings.shape[1]) if embeddings.dim() == 2 and len(embeddings) else embedding_dim
        metrics, pool_size, row_hits = score_rows(embeddings, queries, candidates, valid, global_pool, ks,
                                                  tie_rule)
        hits[spec.name] = DatasetHits(row_hits)  # suite rows carry no cluster id: each row is its own
        ranking = None
        if predictions_dir is not None:
            from tsembed.evaluation.leaderboard import v2_metrics, write_pred_file

            preds = predictions(loaded, rank_candidates(embeddings, queries, candidates, valid, tie_rule))
            write_pred_file(Path(predictions_dir) / f"{spec.name}_pred.jsonl", preds)
            ranking = v2_metrics(preds) if preds else None
        results.append(
            DatasetResult(
                name=spec.name,
                meta_task=spec.meta_task,
                ood=spec.ood,
                file=str(spec.path),
                num_rows=len(loaded.rows),
                num_skipped=loaded.report.num_skipped,
                mean_candidates=float(valid.sum()) / max(len(loaded.rows), 1),
                metrics=metrics,
                pool_size=pool_size if global_pool else None,
                query_cosine=query_cosine(embeddings, queries),
                notes=dict(loaded.report.notes),
                ranking=ranking,
            )
        )
        logger.info("%s: hit@1 %s over %d queries", spec.name, _fmt(metrics[HIT1]), len(loaded.rows))
        if is_collapsed(results[-1].query_cosine):
            logger.warning("%s %s: its query embeddings have collapsed (mean pairwise cosine %.4f): the run is "
                           "marked collapsed and summaries leave it out", DAGGER, spec.name, results[-1].query_cosine)
    after = encoder.stats.to_dict()
    timing = {k: after[k] - before[k] for k in ("requested", "from_cache", "encoded", "encode_seconds")}
    timing["total_seconds"] = round(time.perf_counter() - start, 3)
    timing["inputs_per_second"] = (
        round(timing["encoded"] / timing["encode_seconds"], 2) if timing["encode_seconds"] > 0 else None
    )
    settings = {
        "split": split,
        "batch_size": encoder.batch_size,
        "global_pool": global_pool,
        "ks": list(ks),
        "skip_invalid": skip_invalid,
        "cache_dir": None if encoder.cache.directory is None else str(encoder.cache.directory),
        "datasets": [s.name for s in specs],
        "image_root": None if image_root is None else str(image_root),
        "tie_rule": tie_rule,
        "embedding_dim": embedding_dim,
        "target_routing": target_routing,
    }
    return EvalResults(model_id=encoder.model_id, datasets=results, settings=settings, timing=timing,
                       hits=hits)


def query_routed_candidates(model: Any, encoder: CachedEncoder, inputs: list[EmbedInput],
                            embeddings: torch.Tensor, queries: torch.Tensor, candidates: torch.Tensor,
                            valid: torch.Tensor, desc: str) -> tuple[torch.Tensor, torch.Tensor]:
    """Embeddings and candidate ids where every row's candidates are embedded by its query's experts.

    A query's route is its top-1 expert in every adapted layer (from its cached routing); the candidates of the rows
    whose queries share a route are embedded once more with that route (``route_to`` for a composed model, the
    route forced layer by layer for ``moe.target_routing="query"``) and appended, and those rows' candidate ids
    point at the new rows.
    """
    from tsembed.encoding import embed_items

    distinct = torch.unique(queries)
    encoded = encoder.encode([inputs[i] for i in distinct.tolist()], need_routing=True, desc=f"{desc} routes")
    if encoded.routing is None:
        raise ConfigError("the model returned no routing for the queries: does it have adapters?")
    route_rows = torch.from_numpy(encoded.routing).argmax(dim=-1)  # [queries, L]
    routes, route_of = torch.unique(route_rows, dim=0, return_inverse=True)
    expert_of = dict(zip(distinct.tolist(), route_of.tolist(), strict=True))
    row_route = torch.tensor([expert_of[q] for q in queries.tolist()], dtype=torch.long)
    candidates = candidates.clone()
    parts = [embeddings]
    offset = embeddings.shape[0]
    for index in torch.unique(row_route).tolist():
        rows = (row_route == index).nonzero().squeeze(-1)
        ids = torch.unique(candidates[rows][valid[rows]])
        with _routed_as(model, encoded.layers, routes[index]):
            parts.append(embed_items(model, [inputs[i] for i in ids.tolist()], encoder.batch_size).embeddings)
        remap = torch.full((embeddings.shape[0],), -1, dtype=torch.long)
        remap[ids] = torch.arange(len(ids)) + offset
        block = candidates[rows]
        candidates[rows] = torch.where(valid[rows], remap[block], block)
        offset += len(ids)
    return torch.cat(parts).to(embeddings.dtype), candidates


def _routed_as(model: Any, layers: list[str], route: torch.Tensor) -> contextlib.AbstractContextManager:
    """Embed every input with ``route`` (one top-1 route id per layer, in ``layers``' order)."""
    if model.pilot_routed:  # every pilot-routed layer has the same gates
        return model.route_to(int(route[0]))
    if len(layers) != route.shape[0]:
        raise ConfigError(f"the queries' routing covers {route.shape[0]} layers but names {len(layers)}")
    return forced_routes(model.backbone, {name: route[i:i + 1] for i, name in enumerate(layers)})


def _fmt(value: float | None) -> str:
    return "n/a" if value is None else f"{100 * value:.1f}%"

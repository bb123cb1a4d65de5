"""Ranking metrics as pure tensor functions: scores in, ranks out; ranks in, numbers out.

Tie rule (deterministic, pessimistic, used everywhere in tsembed): candidates are ordered by score,
descending; among equal scores every *non-relevant* candidate comes before a relevant one, and relevant
candidates keep their index order. So a distractor that ties with the positive counts against it:

    rank(positive) = 1 + #{j != positive, valid : s_j >= s_positive}

A model that embeds everything to the same vector therefore scores hit@1 = 0, not 1 (an optimistic
rule would reward a collapsed model). A NaN score counts as -inf: it ranks last and never wins a tie.

Tie rule ``"vlm2vec"`` (``TIE_RULES``): VLM2Vec's own MMEB scorer takes ``argmax`` over the candidates, so a tie
goes to the candidate listed first (MMEB lists the positive first): candidates are ordered by score, descending,
then by index. ``tsembed eval --format mmeb`` uses it so the numbers compare with the leaderboard's:

    rank(positive) = 1 + #{j valid : s_j > s_positive} + #{j < positive, valid : s_j == s_positive}

Ranks are 1-based floats; ``inf`` marks padding (a query with fewer relevant items than columns), so
``[N]`` (one relevant item per query, the MMEB case) and ``[N, R]`` (several) share every function.
"""

from __future__ import annotations

import torch

DEFAULT_KS: tuple[int, ...] = (1, 5, 10)
PESSIMISTIC, VLM2VEC = "pessimistic", "vlm2vec"
#: The tie rules ``positive_rank`` and ``candidate_order`` know (see the module docstring).
TIE_RULES: tuple[str, ...] = (PESSIMISTIC, VLM2VEC)


def check_tie_rule(tie_rule: str) -> str:
    if tie_rule not in TIE_RULES:
        raise ValueError(f"tie_rule must be one of {list(TIE_RULES)}, got {tie_rule!r}")
    return tie_rule


def _clean(scores: torch.Tensor, valid: torch.Tensor | None) -> torch.Tensor:
    """NaN -> -inf; invalid (padding) columns -> NaN so every comparison with them is False."""
    scores = torch.nan_to_num(scores.float(), nan=float("-inf"))
    if valid is not None:
        scores = scores.masked_fill(~valid.bool(), float("nan"))
    return scores


def positive_rank(
    scores: torch.Tensor, positive: torch.Tensor | int = 0, valid: torch.Tensor | None = None,
    tie_rule: str = PESSIMISTIC,
) -> torch.Tensor:
    """Rank of each query's single relevant candidate under a tie rule of this module.

    Args:
        scores: [N, C] query-candidate similarities.
        positive: [N] column of each query's positive, or one int for all (MMEB: 0).
        valid: [N, C] bool, False for padding columns (rows with fewer candidates); None: all valid.
        tie_rule: "pessimistic" (a tie counts against the positive) or "vlm2vec" (a tie goes to the
            candidate listed first, as ``argmax`` does).

    Returns:
        [N] float ranks in 1..C.
    """
    n = scores.shape[0]
    pos = torch.as_tensor(positive, dtype=torch.long, device=scores.device).expand(n)  # [N]
    clean = _clean(scores, valid)  # [N, C]
    pos_score = clean.gather(1, pos[:, None])  # [N, 1]
    if torch.isnan(pos_score).any():
        raise ValueError("positive_rank: a positive column is marked invalid (padding)")
    if check_tie_rule(tie_rule) == VLM2VEC:
        before = torch.arange(clean.shape[1], device=clean.device)[None, :] < pos[:, None]  # [N, C]
        beats = (clean > pos_score) | ((clean == pos_score) & before)  # [N, C]
        return 1.0 + beats.sum(dim=1).float()
    beats = clean >= pos_score  # [N, C]; NaN (padding) compares False
    return beats.sum(dim=1).float()  # the positive itself is counted once: that is the "1 +"


def candidate_order(scores: torch.Tensor, valid: torch.Tensor | None = None, positive: int = 0,
                    tie_rule: str = PESSIMISTIC) -> torch.Tensor:
    """Each row's candidate columns, best first, under a tie rule (padding last): the ranked list a pred file holds.

    The positive's place in it is ``positive_rank`` for the same rule.

    Args:
        scores: [N, C] similarities.
        valid: [N, C] bool, False for padding; None: all valid.
        positive: Column of the positive (pessimistic ties put it after the distractors it ties with).
        tie_rule: "pessimistic" or "vlm2vec".

    Returns:
        [N, C] long column indices.
    """
    ok = valid.bool() if valid is not None else torch.ones_like(scores, dtype=torch.bool)  # [N, C]
    clean = torch.nan_to_num(scores.float(), nan=float("-inf"))  # [N, C]
    order = torch.arange(clean.shape[1], device=clean.device).expand_as(clean).contiguous()  # [N, C]
    if check_tie_rule(tie_rule) == PESSIMISTIC:
        last = (order == positive).int()
        order = order.gather(1, torch.argsort(last, dim=1, stable=True))
    order = order.gather(1, torch.argsort(clean.gather(1, order), dim=1, descending=True, stable=True))
    return order.gather(1, torch.argsort(ok.gather(1, order).int(), dim=1, descending=True, stable=True))


def relevant_ranks(scores: torch.Tensor, relevant: torch.Tensor, valid: torch.Tensor | None = None) -> torch.Tensor:
    """Rank of every relevant candidate (several per query allowed) under the tie rule of this module.

    rank_i = 1 + #{j : s_j > s_i} + #{j non-relevant : s_j == s_i} + #{j relevant, j < i : s_j == s_i}

    Args:
        scores: [N, C] similarities.
        relevant: [N, C] bool.
        valid: [N, C] bool, False for padding; None: all valid.

    Returns:
        [N, C] float: the rank where ``relevant``, ``inf`` elsewhere (use it directly with the metrics).
    """
    ok = valid.bool() if valid is not None else torch.ones_like(relevant, dtype=torch.bool)  # [N, C]
    rel = relevant.bool() & ok  # [N, C]
    clean = torch.nan_to_num(scores.float(), nan=float("-inf"))  # [N, C]
    # Stable sorts from the least to the most significant key: index, relevant-last, score, valid-first.
    order = torch.argsort(rel.int(), dim=1, stable=True)  # [N, C]
    order = order.gather(1, torch.argsort(clean.gather(1, order), dim=1, descending=True, stable=True))
    order = order.gather(1, torch.argsort(ok.gather(1, order).int(), dim=1, descending=True, stable=True))
    ranks = torch.empty_like(clean)
    positions = torch.arange(1, clean.shape[1] + 1, dtype=clean.dtype, device=clean.device)
    ranks.scatter_(1, order, positions.expand_as(clean))  # ranks[n, order[n, p]] = p + 1
    return ranks.masked_fill(~rel, float("inf"))


def _as_2d(ranks: torch.Tensor) -> torch.Tensor:
    return ranks.float()[:, None] if ranks.dim() == 1 else ranks.float()


def _mean(values: torch.Tensor) -> float:
    return float(values.double().mean()) if values.numel() else float("nan")  # float64: 1/3, not 0.33333334


def hit_at_k(ranks: torch.Tensor, k: int) -> float:
    """Share of queries with at least one relevant item in the top k (MMEB's precision@1 for k = 1)."""
    return _mean((_as_2d(ranks) <= k).any(dim=1).float())


def recall_at_k(ranks: torch.Tensor, k: int) -> float:
    """Mean over queries of (relevant items in the top k) / (relevant items); equals hit@k with one relevant."""
    r = _as_2d(ranks)
    num_relevant = torch.isfinite(r).sum(dim=1).clamp_min(1)  # [N]
    return _mean((r <= k).sum(dim=1) / num_relevant)


def mrr(ranks: torch.Tensor) -> float:
    """Mean reciprocal rank of the first relevant item (0 for a query without one)."""
    return _mean(1.0 / _as_2d(ranks).min(dim=1).values)


def ndcg_at_k(ranks: torch.Tensor, k: int = 10) -> float:
    """nDCG@k with binary gains: DCG = sum over relevant items ranked <= k of 1 / log2(1 + rank),
    divided by the DCG of the ideal order (all relevant items first)."""
    r = _as_2d(ranks)
    gains = torch.where(r <= k, 1.0 / torch.log2(1.0 + r), torch.zeros_like(r)).sum(dim=1)  # [N]
    num_relevant = torch.isfinite(r).sum(dim=1)  # [N]
    discounts = 1.0 / torch.log2(torch.arange(2, k + 2, dtype=torch.float))  # [k]
    ideal = torch.cat([torch.zeros(1), discounts.cumsum(0)])[num_relevant.clamp(max=k)]  # [N]
    return _mean(torch.where(ideal > 0, gains / ideal.clamp_min(1e-12), torch.zeros_like(gains)))


def ranking_metrics(ranks: torch.Tensor, ks: tuple[int, ...] = DEFAULT_KS, ndcg_k: int = 10) -> dict[str, float]:
    """recall@k for each k, MRR and nDCG@ndcg_k, keyed ``recall@1``, ``mrr``, ``ndcg@10``."""
    out = {f"recall@{k}": recall_at_k(ranks, k) for k in ks}
    out["mrr"] = mrr(ranks)
    out[f"ndcg@{ndcg_k}"] = ndcg_at_k(ranks, ndcg_k)
    return out

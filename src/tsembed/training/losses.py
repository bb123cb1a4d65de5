"""Contrastive loss math as small pure functions (docs/design.md §3.4–§3.5).

Tensors in, tensors out: no model, no collectives. ``ContrastiveLoss`` (training/objective.py) gathers
and calls these.

Shapes: N queries, M candidate targets (in-batch positives of all ranks, then hard negatives);
``positive [N]`` indexes each query's positive column in the [N, M] score matrix.
"""

from __future__ import annotations

import torch


def info_nce(
    scores: torch.Tensor, positive: torch.Tensor, tau: float | torch.Tensor, weights: torch.Tensor | None = None
) -> torch.Tensor:
    """Weighted InfoNCE, mean over queries.

    ℓ_i = −log exp(c_ii/τ) / (exp(c_ii/τ) + Σ_{j≠i} w_ij exp(c_ij/τ)); ``weights`` None means w = 1.
    A zero weight removes a negative entirely (false-negative guard, EANS ``select``).

    Args:
        scores: cosine scores c [N, M].
        positive: column of each query's positive [N] (long).
        tau: temperature τ (float or a learnable scalar tensor).
        weights: negative weights w [N, M] ≥ 0; the positive column's weight is ignored.
    """
    logits = scores / tau  # [N, M]
    rows = torch.arange(scores.shape[0], device=scores.device)
    if weights is not None:
        log_w = torch.log(weights.clamp_min(0))  # log 0 = -inf drops that negative
        log_w = log_w.index_put((rows, positive), torch.zeros((), dtype=log_w.dtype, device=log_w.device))
        logits = logits + log_w
    return (torch.logsumexp(logits, dim=-1) - logits[rows, positive]).mean()


def uniformity(embeddings: torch.Tensor, t: float = 2.0) -> torch.Tensor:
    """Wang & Isola (2020): log mean_{i≠j} exp(−t·‖x_i − x_j‖²) over unit-normalised rows.

    Its minimum spreads the rows over the sphere; unlike InfoNCE its gradient does not vanish when every row is
    the same point, which is what lets it pull a collapsed task back out (training.collapse).
    """
    n = embeddings.shape[0]
    if n < 2:
        return embeddings.sum() * 0.0
    unit = torch.nn.functional.normalize(embeddings, dim=-1)
    sq = (2.0 - 2.0 * unit @ unit.T).clamp_min(0.0)  # squared distances of unit vectors
    off = ~torch.eye(n, dtype=torch.bool, device=embeddings.device)
    return torch.logsumexp(-t * sq[off], dim=0) - torch.log(torch.tensor(float(n * (n - 1))))


def negative_mask(positive: torch.Tensor, num_candidates: int) -> torch.Tensor:
    """True where column j is a negative of query i ([N, M]): every column but the positive."""
    mask = torch.ones(positive.shape[0], num_candidates, dtype=torch.bool, device=positive.device)
    mask[torch.arange(positive.shape[0], device=positive.device), positive] = False
    return mask


def false_negative_mask(
    scores: torch.Tensor, positive: torch.Tensor, same_content: torch.Tensor | None, margin: float | None,
    exempt: torch.Tensor | None = None,
) -> torch.Tensor:
    """True where a negative is probably a false one ([N, M]): same content as the positive, or
    a score above the positive's score + margin (UniME-style guard). The positive itself is never masked.

    Args:
        same_content: [N, M] bool, True where candidate j has the same content as query i's positive.
        margin: None disables the score rule.
        exempt: [N, M] bool, True where the score rule must not apply (a query's own labelled negatives).
    """
    rows = torch.arange(scores.shape[0], device=scores.device)
    masked = torch.zeros_like(scores, dtype=torch.bool)
    if same_content is not None:
        masked |= same_content
    if margin is not None:
        above = scores.detach() > scores.detach()[rows, positive].unsqueeze(1) + margin
        masked |= above if exempt is None else above & ~exempt
    masked[rows, positive] = False
    return masked


def eans_weights(affinity: torch.Tensor, negatives: torch.Tensor, beta: float) -> torch.Tensor:
    """EANS ``weight`` mode: w_ij = M_i · softmax_{j ∈ negatives(i)}(β · a_ij), zero elsewhere.

    M_i is query i's number of negatives, so the mean weight is 1 and β = 0 recovers InfoNCE.
    Two negatives with affinity (1, 0) and β = ln 3 get weights (1.5, 0.5).

    Args:
        affinity: routing affinity a = s(q)·s(t) [N, M] (treated as constant).
        negatives: [N, M] bool, the columns that count as negatives of each query.
    """
    logits = (beta * affinity.detach()).masked_fill(~negatives, float("-inf"))  # [N, M]
    count = negatives.sum(dim=-1, keepdim=True).clamp_min(1)  # M_i
    weights = torch.softmax(logits, dim=-1).nan_to_num(0.0) * count
    return weights * negatives


def eans_select(
    affinity: torch.Tensor, negatives: torch.Tensor, k: int, keep: torch.Tensor | None = None
) -> torch.Tensor:
    """EANS ``select`` mode: weight 1 on the k negatives with the highest affinity (plus ``keep``), else 0.

    Args:
        keep: [N, M] bool of negatives kept regardless (explicit hard negatives).
    Returns:
        [N, M] float weights in {0, 1}.
    """
    ranked = affinity.detach().masked_fill(~negatives, float("-inf"))
    k = min(k, affinity.shape[1])
    top = ranked.topk(k, dim=-1).indices  # [N, k]
    chosen = torch.zeros_like(negatives).scatter(-1, top, True) & negatives
    if keep is not None:
        chosen |= keep & negatives
    return chosen.to(affinity.dtype)

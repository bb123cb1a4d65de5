"""Ranking metrics against hand-computed cases, including the documented tie rule."""

import math

import pytest
import torch

from tsembed.evaluation.metrics import (
    hit_at_k,
    mrr,
    ndcg_at_k,
    positive_rank,
    ranking_metrics,
    recall_at_k,
    relevant_ranks,
)

SCORES = torch.tensor(
    [
        [0.9, 0.1, 0.5],  # positive strictly best -> rank 1
        [0.2, 0.8, 0.2],  # one better, one tie -> the tie counts against the positive: rank 3
        [0.5, 0.5, 0.1],  # tie for first -> rank 2
    ]
)


def test_positive_rank_ties_count_against_the_positive():
    assert positive_rank(SCORES).tolist() == [1.0, 3.0, 2.0]


def test_collapsed_model_scores_zero_not_one():
    ranks = positive_rank(torch.ones(4, 5))  # every candidate ties with the positive
    assert ranks.tolist() == [5.0] * 4
    assert hit_at_k(ranks, 1) == 0.0


def test_positive_rank_other_column_padding_and_nan():
    scores = torch.tensor([[0.1, 0.9, 0.5, 7.0], [float("nan"), 0.3, 0.2, 0.0]])
    valid = torch.tensor([[True, True, True, False], [True, True, True, True]])
    # row 0: positive at column 2 (0.5); padding (7.0) ignored; only 0.9 beats it -> rank 2
    # row 1: a NaN positive ranks last (counts as -inf) -> rank 4
    assert positive_rank(scores, torch.tensor([2, 0]), valid).tolist() == [2.0, 4.0]


def test_metrics_single_relevant_hand_values():
    ranks = torch.tensor([1.0, 3.0, 2.0, 11.0])
    assert hit_at_k(ranks, 1) == pytest.approx(1 / 4)
    assert hit_at_k(ranks, 2) == pytest.approx(2 / 4)
    assert recall_at_k(ranks, 5) == pytest.approx(3 / 4)  # one relevant item: recall@k == hit@k
    assert recall_at_k(ranks, 10) == hit_at_k(ranks, 10)
    assert mrr(ranks) == pytest.approx((1 + 1 / 3 + 1 / 2 + 1 / 11) / 4)
    # nDCG@10: 1/log2(1+rank) for ranks <= 10, ideal DCG 1; rank 11 contributes nothing
    assert ndcg_at_k(ranks, 10) == pytest.approx((1 + 1 / math.log2(4) + 1 / math.log2(3) + 0) / 4)
    assert ranking_metrics(ranks) == {
        "recall@1": hit_at_k(ranks, 1),
        "recall@5": recall_at_k(ranks, 5),
        "recall@10": recall_at_k(ranks, 10),
        "mrr": mrr(ranks),
        "ndcg@10": ndcg_at_k(ranks, 10),
    }


def test_relevant_ranks_tie_order_and_multi_relevant_metrics():
    scores = torch.tensor([[0.7, 0.7, 0.9, 0.7, 0.1]])
    relevant = torch.tensor([[True, False, False, True, False]])
    # order: 2 (0.9), then the 0.7 tie with the non-relevant 1 first, then relevant 0, then relevant 3
    ranks = relevant_ranks(scores, relevant)
    assert ranks.tolist() == [[3.0, math.inf, math.inf, 4.0, math.inf]]
    assert hit_at_k(ranks, 3) == 1.0
    assert recall_at_k(ranks, 3) == pytest.approx(0.5)
    assert recall_at_k(ranks, 4) == pytest.approx(1.0)
    assert mrr(ranks) == pytest.approx(1 / 3)
    ideal = 1 + 1 / math.log2(3)
    assert ndcg_at_k(ranks, 10) == pytest.approx((1 / math.log2(4) + 1 / math.log2(5)) / ideal)


def test_relevant_ranks_agrees_with_positive_rank_on_ties():
    g = torch.Generator().manual_seed(0)
    scores = torch.randint(0, 4, (50, 7), generator=g).float()  # many ties
    positive = torch.randint(0, 7, (50,), generator=g)
    valid = torch.rand(50, 7, generator=g) > 0.2
    valid[torch.arange(50), positive] = True
    one_hot = torch.nn.functional.one_hot(positive, 7).bool()
    expected = positive_rank(scores, positive, valid)
    got = relevant_ranks(scores, one_hot, valid).min(dim=1).values
    assert torch.equal(expected, got)


def test_empty_input_gives_nan():
    assert math.isnan(hit_at_k(torch.zeros(0), 1))


def test_vlm2vec_tie_rule_gives_the_tie_to_the_first_candidate_as_argmax_does():
    from tsembed.evaluation.metrics import candidate_order

    assert positive_rank(SCORES, tie_rule="vlm2vec").tolist() == [1.0, 2.0, 1.0]
    assert positive_rank(torch.ones(4, 5), tie_rule="vlm2vec").tolist() == [1.0] * 4
    # Positive at column 2: ties with columns 0 and 1 come before it, a tie with column 3 after.
    scores = torch.tensor([[0.5, 0.5, 0.5, 0.5]])
    assert positive_rank(scores, 2, tie_rule="vlm2vec").tolist() == [3.0]
    assert positive_rank(scores, 2).tolist() == [4.0]
    argmax_hits = (SCORES.argmax(dim=1) == 0).float().mean().item()
    assert hit_at_k(positive_rank(SCORES, tie_rule="vlm2vec"), 1) == pytest.approx(argmax_hits)
    valid = torch.tensor([[True, True, True], [True, True, True], [True, True, False]])
    for rule in ("pessimistic", "vlm2vec"):
        order = candidate_order(SCORES, valid, 0, rule)
        ranks = positive_rank(SCORES, 0, valid, rule)
        assert [row.index(0) + 1 for row in order.tolist()] == ranks.tolist()
        assert order[2, -1].item() == 2  # padding last
    with pytest.raises(ValueError, match="tie_rule"):
        positive_rank(SCORES, tie_rule="optimistic")


def test_hit_at_k_is_an_exact_fraction_not_float32():
    assert hit_at_k(torch.tensor([1.0, 2.0, 3.0]), 1) == 1 / 3

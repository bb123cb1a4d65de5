import math

import pytest
import torch

from tsembed.training.eans import SignatureBank
from tsembed.training.losses import eans_select, eans_weights, false_negative_mask, info_nce, negative_mask


def test_info_nce_hand_computed():
    scores = torch.tensor([[1.0, 0.0], [0.0, 1.0]])
    loss = info_nce(scores, torch.tensor([0, 1]), tau=1.0)
    assert loss.item() == pytest.approx(math.log(1 + math.exp(-1)), abs=1e-6)  # 0.3133


def test_unit_weights_equal_plain_info_nce_and_zero_weight_drops_negative():
    scores = torch.randn(3, 5)
    pos = torch.tensor([0, 1, 2])
    plain = info_nce(scores, pos, 0.1)
    torch.testing.assert_close(info_nce(scores, pos, 0.1, torch.ones(3, 5)), plain)
    w = torch.ones(3, 5)
    w[:, 4] = 0
    torch.testing.assert_close(info_nce(scores, pos, 0.1, w), info_nce(scores[:, :4], pos, 0.1))


def test_eans_weights_hand_example_and_beta_zero():
    affinity = torch.tensor([[0.0, 1.0, 0.0]])  # column 0 is the positive
    negatives = negative_mask(torch.tensor([0]), 3)
    w = eans_weights(affinity, negatives, beta=math.log(3))
    torch.testing.assert_close(w, torch.tensor([[0.0, 1.5, 0.5]]))
    torch.testing.assert_close(eans_weights(affinity, negatives, beta=0.0), torch.tensor([[0.0, 1.0, 1.0]]))
    scores = torch.randn(1, 3)
    torch.testing.assert_close(
        info_nce(scores, torch.tensor([0]), 0.05, eans_weights(affinity, negatives, 0.0)),
        info_nce(scores, torch.tensor([0]), 0.05),
    )


def test_eans_select_keeps_exactly_top_k_plus_explicit():
    affinity = torch.tensor([[0.9, 0.1, 0.8, 0.5, 0.3]])
    negatives = negative_mask(torch.tensor([0]), 5)  # column 0 positive
    w = eans_select(affinity, negatives, k=2)
    assert w.tolist() == [[0.0, 0.0, 1.0, 1.0, 0.0]]
    keep = torch.tensor([[False, True, False, False, False]])
    assert eans_select(affinity, negatives, k=2, keep=keep).tolist() == [[0.0, 1.0, 1.0, 1.0, 0.0]]


def test_false_negative_guard():
    scores = torch.tensor([[0.5, 0.7, 0.55, 0.2]])
    same = torch.tensor([[True, False, False, True]])
    masked = false_negative_mask(scores, torch.tensor([0]), same, margin=0.1)
    assert masked.tolist() == [[False, True, False, True]]  # 0.7 > 0.5 + 0.1; column 3 same content


def test_false_negative_guard_spares_exempt_scores_but_not_equal_content():
    scores = torch.tensor([[0.5, 0.7, 0.9, 0.2]])
    same = torch.tensor([[True, False, False, True]])
    exempt = torch.tensor([[False, True, False, True]])  # e.g. the query's own labelled negatives
    masked = false_negative_mask(scores, torch.tensor([0]), same, margin=0.1, exempt=exempt)
    assert masked.tolist() == [[False, False, True, True]]


def test_bank_mine_never_returns_positive_or_excluded():
    bank = SignatureBank(6, 2)
    bank.update(torch.arange(6), torch.tensor([[1.0, 0], [0.9, 0.1], [0.8, 0.2], [0, 1], [0.1, 0.9], [0.7, 0.3]]))
    mined = bank.mine(torch.tensor([[1.0, 0.0]]), exclude=[{0, 1}], m=2)
    assert mined == [[2, 5]]
    assert bank.drift() is None
    bank.update(torch.tensor([0]), torch.tensor([[0.0, 1.0]]))
    assert bank.drift() == pytest.approx(math.sqrt(2))


def test_uniformity_matches_the_pair_loop_and_pulls_a_collapsed_batch_apart():
    from tsembed.training.losses import uniformity

    torch.manual_seed(0)
    x = torch.randn(5, 4)
    u = torch.nn.functional.normalize(x, dim=-1)
    terms = [torch.exp(-2.0 * (u[i] - u[j]).pow(2).sum()) for i in range(5) for j in range(5) if i != j]
    assert float(uniformity(x)) == pytest.approx(math.log(float(sum(terms)) / len(terms)), abs=1e-5)
    collapsed = (torch.ones(4, 3) + 1e-3 * torch.randn(4, 3)).requires_grad_()
    assert float(uniformity(collapsed)) == pytest.approx(0.0, abs=1e-3)  # the maximum: every distance 0
    uniformity(collapsed).backward()
    assert float(collapsed.grad.norm()) > 1e-3  # InfoNCE's gradient vanishes here; this one does not

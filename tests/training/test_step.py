import copy

import pytest
import torch

from tsembed.training.eans import EANSConfig
from tsembed.training.objective import ContrastiveObjective, LossConfig
from tsembed.training.step import contrastive_step

from .helpers import grads, toy_batch, toy_model


@pytest.mark.parametrize("mode", ["off", "weight", "select"])
@pytest.mark.parametrize("level", ["token", "sequence"])
def test_gradcache_equals_full_batch(mode, level):
    model = toy_model(level=level)
    cached = copy.deepcopy(model)
    loss_cfg = LossConfig(tau=0.05, load_balance_weight=0.1, z_loss_weight=0.01, learnable_tau=True)
    objective = ContrastiveObjective(loss_cfg, EANSConfig(mode=mode, beta=2.0, select_k=3))
    objective_c = copy.deepcopy(objective)
    batch = toy_batch(n=8, hard=3)

    full = contrastive_step(model, objective, batch, eans_active=True, chunk_size=None)
    chunked = contrastive_step(cached, objective_c, batch, eans_active=True, chunk_size=3)
    assert chunked.loss == pytest.approx(full.loss, rel=1e-5)
    assert chunked.load_balance == pytest.approx(full.load_balance, rel=1e-5)
    torch.testing.assert_close(chunked.query_signatures, full.query_signatures)
    torch.testing.assert_close(chunked.target_signatures, full.target_signatures)
    g_full, g_cached = grads(model), grads(cached)
    assert set(g_full) == set(g_cached) and any("router" in k for k in g_full) and any("proj" in k for k in g_full)
    for name in g_full:
        torch.testing.assert_close(g_cached[name], g_full[name], atol=1e-6, rtol=1e-4, msg=name)
    torch.testing.assert_close(objective_c.log_tau.grad, objective.log_tau.grad, atol=1e-6, rtol=1e-4)


def test_eans_inactive_is_plain_info_nce():
    model = toy_model()
    batch = toy_batch()
    weight = ContrastiveObjective(LossConfig(), EANSConfig(mode="weight", beta=5.0))
    off = ContrastiveObjective(LossConfig(), EANSConfig(mode="off"))
    a = contrastive_step(model, weight, batch, eans_active=False, backward=False)
    b = contrastive_step(model, off, batch, eans_active=True, backward=False)
    assert a.contrastive == pytest.approx(b.contrastive)
    c = contrastive_step(model, weight, batch, eans_active=True, backward=False)
    assert c.contrastive != pytest.approx(a.contrastive)
    assert 0.0 <= c.logs["eans_entropy"] <= 1.0
    assert c.logs["infonce"] == pytest.approx(a.contrastive)  # the unweighted loss is logged during EANS
    assert a.logs["infonce"] == pytest.approx(a.contrastive)
    assert c.logs["false_negative_frac"] > 0  # the duplicated positive is masked

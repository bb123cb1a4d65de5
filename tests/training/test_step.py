import copy

import pytest
import torch

from tsembed.errors import ConfigError
from tsembed.moe import aux_losses
from tsembed.training.eans import EANSConfig
from tsembed.training.objective import ContrastiveObjective, ExpertUsage, LossConfig
from tsembed.training.step import ContrastiveTask, contrastive_step, prepare_batch

from .helpers import assert_grads_close, grads, toy_batch, toy_model


@pytest.mark.parametrize("mode", ["off", "weight", "select", "hardness"])
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
    assert_grads_close(g_cached, g_full)
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


def test_gradcache_equals_full_batch_with_running_expert_usage():
    model = toy_model(level="sequence")
    cached = copy.deepcopy(model)
    objective = ContrastiveObjective(LossConfig(load_balance_weight=0.5), EANSConfig(mode="weight"))
    usage_full, usage_cached = ExpertUsage(window=4), ExpertUsage(window=4)
    first = toy_batch(n=8, hard=3, seed=1)
    contrastive_step(model, objective, first, eans_active=False, usage=usage_full, backward=True)
    contrastive_step(cached, objective, first, eans_active=False, usage=usage_cached, chunk_size=3)
    assert usage_full.shares
    assert all(torch.equal(usage_full.shares[k], usage_cached.shares[k]) for k in usage_full.shares)
    model.zero_grad(), cached.zero_grad()
    full = contrastive_step(model, objective, toy_batch(n=8, hard=3), eans_active=False, usage=usage_full)
    chunked = contrastive_step(cached, objective, toy_batch(n=8, hard=3), eans_active=False, usage=usage_cached,
                               chunk_size=3)
    assert chunked.load_balance == pytest.approx(full.load_balance, rel=1e-5)
    g_full, g_cached = grads(model), grads(cached)
    assert_grads_close(g_cached, g_full)


def test_null_experts_train_through_gradcache_and_count_in_the_running_usage():
    """A shared + routed + null model: chunked and full steps agree, and the usage covers the null route."""
    model = toy_model(level="sequence", shared=1, nulls=1)
    cached = copy.deepcopy(model)
    objective = ContrastiveObjective(LossConfig(load_balance_weight=0.5, z_loss_weight=0.01),
                                     EANSConfig(mode="weight"))
    usage_full, usage_cached = ExpertUsage(window=4), ExpertUsage(window=4)
    full = contrastive_step(model, objective, toy_batch(n=8, hard=3), eans_active=True, usage=usage_full)
    chunked = contrastive_step(cached, objective, toy_batch(n=8, hard=3), eans_active=True, usage=usage_cached,
                               chunk_size=3)
    assert all(share.shape == (5,) for share in usage_full.shares.values())  # 4 routed + 1 null
    assert full.query_signatures.shape[-1] == 5 * len(usage_full.shares)
    assert chunked.loss == pytest.approx(full.loss, rel=1e-5)
    assert chunked.load_balance == pytest.approx(full.load_balance, rel=1e-5)
    g_full, g_cached = grads(model), grads(cached)
    assert_grads_close(g_cached, g_full)


def test_expert_usage_running_mean_and_no_push_when_balanced_overall():
    usage = ExpertUsage(window=4)  # decay 0.75
    first = usage.update({"l": torch.tensor([1.0, 0.0])})
    torch.testing.assert_close(first["l"], torch.tensor([1.0, 0.0]))  # the first batch starts the mean
    peek = usage.update({"l": torch.tensor([0.0, 1.0])}, commit=False)
    torch.testing.assert_close(peek["l"], torch.tensor([0.75, 0.25]))
    torch.testing.assert_close(usage.shares["l"], torch.tensor([1.0, 0.0]))  # not committed
    restored = ExpertUsage(window=2)
    restored.load_state_dict(usage.state_dict())
    assert restored.decay == 0.75 and torch.equal(restored.shares["l"], usage.shares["l"])

    # one batch (one dataset) routed wholly to expert 0; its probabilities P_e carry the gradient
    logits = torch.tensor([[2.0, 0.0]] * 4, requires_grad=True)
    probs = torch.softmax(logits, dim=-1)

    class Stats:
        prob_sums = probs.sum(dim=0)
        lse_sq_sum = torch.logsumexp(logits, dim=-1).pow(2).sum()

    def balance_grad(shares):
        logits.grad = None
        lb, _ = aux_losses([{"l": Stats}], {"l": shares}, {"l": 4})
        lb.backward(retain_graph=True)
        return logits.grad.clone()

    per_batch = balance_grad(torch.tensor([1.0, 0.0]))  # Switch: f from this batch alone
    assert per_batch[0, 0] > 0  # pushes the batch off the expert it chose
    overall = balance_grad(torch.tensor([0.5, 0.5]))  # running shares: other datasets use expert 1
    torch.testing.assert_close(overall, torch.zeros_like(overall))  # E·Σ f P = Σ P = 1: no force


@pytest.mark.parametrize("window", [0, 1.5, True])
def test_load_balance_window_is_validated(window):
    with pytest.raises(ConfigError, match="load_balance_window"):
        LossConfig(load_balance_window=window)


def test_hardness_mode_weights_negatives_by_their_score_like_llave():
    """Reference: ℓ_i = −log e^{c_ii/τ} / (e^{c_ii/τ} + Σ_j w_ij e^{c_ij/τ}), w_i· = M · softmax_j(β c_ij)."""
    torch.manual_seed(0)
    q = torch.nn.functional.normalize(torch.randn(4, 8), dim=-1)
    t = torch.nn.functional.normalize(torch.randn(6, 8), dim=-1)  # 4 positives, 2 explicit hard negatives
    tau, beta = 0.1, 3.0
    objective = ContrastiveObjective(LossConfig(tau=tau, false_negative_margin=None, mask_same_content=False),
                                     EANSConfig(mode="hardness", hardness_beta=beta))
    owner = torch.tensor([-1, -1, -1, -1, 0, 1])
    out = objective(q, t, None, None, torch.arange(6), owner, eans_active=True)  # no routing needed
    scores = q @ t.T
    expected = []
    for i in range(4):
        neg = [j for j in range(6) if j != i]
        w = torch.softmax(beta * scores[i, neg], dim=0) * len(neg)
        denom = torch.exp(scores[i, i] / tau) + (w * torch.exp(scores[i, neg] / tau)).sum()
        expected.append(-torch.log(torch.exp(scores[i, i] / tau) / denom))
    assert float(out.loss) == pytest.approx(float(torch.stack(expected).mean()), rel=1e-5)
    plain = objective(q, t, None, None, torch.arange(6), owner, eans_active=False)
    assert out.logs["infonce"] == pytest.approx(float(plain.loss), rel=1e-6) and float(out.loss) > float(plain.loss)


def test_guard_own_negatives_false_keeps_the_labelled_trap_in_the_loss():
    """A query's own hard negative that outscores its positive stays in the loss; other look-alikes do not."""
    q = torch.tensor([[1.0, 0.0], [0.0, 1.0]])
    t = torch.tensor([[0.6, 0.8], [0.6, 0.8], [1.0, 0.0]])  # positives 0, 1; target 2 = query 0's labelled trap
    owner, ids = torch.tensor([-1, -1, 0]), torch.arange(3)
    tau = 0.1

    def loss(guard_own: bool) -> float:
        cfg = LossConfig(tau=tau, false_negative_margin=0.1, guard_own_negatives=guard_own)
        return float(ContrastiveObjective(cfg, EANSConfig(mode="off"))(q, t, None, None, ids, owner, False).loss)

    scores = q @ t.T  # query 0: positive 0.6, trap 1.0 (> 0.6 + 0.1), target 1 0.6; query 1: 0.8 / 0.8 / 0.0

    def nce(i: int, negatives: list[int]) -> torch.Tensor:
        logits = scores[i, [i] + negatives] / tau
        return -torch.log_softmax(logits, dim=0)[0]

    guarded = (nce(0, [1]) + nce(1, [0, 2])) / 2  # the trap is masked as a presumed false negative
    trusted = (nce(0, [1, 2]) + nce(1, [0, 2])) / 2
    assert loss(True) == pytest.approx(float(guarded), rel=1e-5)
    assert loss(False) == pytest.approx(float(trusted), rel=1e-5)


def test_eans_modes_are_one_registry():
    from tsembed.training.eans import EANS_MODES

    assert {"off", "weight", "select", "mine", "hardness"} <= set(EANS_MODES)
    assert not EANS_MODES["hardness"].uses_routing and EANS_MODES["weight"].uses_routing
    with pytest.raises(ConfigError, match="eans.mode must be one of"):
        EANSConfig(mode="bogus")
    with pytest.raises(ConfigError, match="hardness_beta"):
        EANSConfig(hardness_beta=float("nan"))


def test_uniformity_weight_adds_the_term_and_is_validated():
    from tsembed.training.losses import uniformity

    torch.manual_seed(0)
    q, t = torch.randn(4, 8), torch.randn(4, 8)
    args = (q, t, None, None, torch.arange(4), torch.full((4,), -1), False)
    plain = ContrastiveObjective(LossConfig(), EANSConfig(mode="off"))(*args)
    spread = ContrastiveObjective(LossConfig(uniformity_weight=0.5), EANSConfig(mode="off"))(*args)
    expected = float(plain.loss) + 0.5 * float((uniformity(q) + uniformity(t)) / 2)
    assert float(spread.loss) == pytest.approx(expected, rel=1e-5)
    assert spread.logs["infonce"] == pytest.approx(float(plain.loss), rel=1e-6)
    for bad in (-0.1, float("nan"), float("inf")):
        with pytest.raises(ConfigError, match="uniformity_weight"):
            LossConfig(uniformity_weight=bad)


@pytest.mark.parametrize("chunk_size", [None, 3])
def test_gradient_scaler_scales_every_backward_of_a_step(chunk_size):
    """fp16's loss scale multiplies every gradient of the step, GradCache's two passes and τ's included,
    so unscaling gives back the unscaled step's gradients exactly."""
    loss_cfg = LossConfig(tau=0.05, load_balance_weight=0.1, z_loss_weight=0.01, learnable_tau=True)
    plain, scaled = toy_model(level="sequence"), toy_model(level="sequence")
    objective, objective_s = (ContrastiveObjective(loss_cfg, EANSConfig(mode="weight")) for _ in range(2))
    batch = toy_batch(n=8, hard=3)
    contrastive_step(plain, objective, batch, eans_active=True, chunk_size=chunk_size)
    scaler = torch.amp.GradScaler("cpu", init_scale=1024.0)
    contrastive_step(scaled, objective_s, batch, eans_active=True, chunk_size=chunk_size,
                     task=ContrastiveTask(scaled, objective_s), scaler=scaler)
    expected, got = grads(plain), grads(scaled)
    assert set(got) == set(expected)
    for name in expected:
        torch.testing.assert_close(got[name], 1024.0 * expected[name], rtol=1e-4, atol=1e-4, msg=name)
    torch.testing.assert_close(objective_s.log_tau.grad, 1024.0 * objective.log_tau.grad, rtol=1e-4, atol=1e-4)


def test_prepared_batches_and_bf16_autocast_reach_the_forward():
    model = toy_model()
    objective = ContrastiveObjective(LossConfig(), EANSConfig(mode="off"))
    batch = toy_batch()
    reference = contrastive_step(model, objective, batch, eans_active=False, backward=False)
    prepared = prepare_batch(model, batch, chunk_size=None)
    same = contrastive_step(model, objective, batch, eans_active=False, backward=False, prepared=prepared)
    assert same.loss == reference.loss
    task = ContrastiveTask(model, objective, precision="bf16")
    low = contrastive_step(model, objective, batch, eans_active=False, backward=False, task=task)
    assert low.loss != reference.loss and low.loss == pytest.approx(reference.loss, rel=0.05)
    with pytest.raises(ValueError, match="task must wrap the model and objective"):
        contrastive_step(toy_model(), objective, batch, eans_active=False, task=task)


def test_gradcache_chunks_are_length_bucketed():
    """Inputs of similar length share a chunk (less padding); test_gradcache_equals_full_batch shows the loss,
    gradients and signatures (in batch order) do not change."""
    model = toy_model()
    batch = toy_batch(n=8, hard=3)
    prepared = prepare_batch(model, batch, 3)
    assert prepared.query_order is not None and sorted(prepared.query_order) == list(range(8))
    assert sorted(prepared.target_order) == list(range(11))
    lengths = [len(batch.queries[i].text) for i in prepared.query_order]
    assert lengths == sorted(lengths)
    padded = sum(c["input_ids"].numel() for c in prepared.queries)
    plain = sum(model.prepare(batch.queries[i : i + 3])["input_ids"].numel() for i in range(0, 8, 3))
    assert padded <= plain
    extended = prepared.with_targets(prepared.targets[:1], 3)
    assert extended.target_order == prepared.target_order + [11, 12, 13]


@pytest.mark.parametrize("chunk_size", [None, 3])
def test_step_total_is_the_objective_plus_the_weighted_routing_terms(chunk_size):
    """The step's total, assembled by hand from the model's own outputs: InfoNCE (+ uniformity) from the
    objective, plus λ_bal·L_bal + λ_z·L_z of the routing statistics (the assembly lives in one place)."""
    from tsembed.moe import top1_shares

    model = toy_model(level="sequence")
    cfg = LossConfig(load_balance_weight=0.3, z_loss_weight=0.02, uniformity_weight=0.5, load_balance_window=1)
    objective = ContrastiveObjective(cfg, EANSConfig(mode="off"))
    batch = toy_batch(n=6, hard=2)
    torch.manual_seed(0)
    out = contrastive_step(model, objective, batch, eans_active=False, chunk_size=chunk_size, backward=False)

    model.eval()  # no jitter or dropout in the toy, so eval gives the same numbers
    q, t = model(**model.prepare(batch.queries)), model(**model.prepare(batch.targets))
    ref = objective(q.embeddings, t.embeddings, q.routing.signature, t.routing.signature, batch.target_ids,
                    batch.target_owner, False)
    stats = [q.routing.layer_stats, t.routing.layer_stats]
    counts = {n: q.routing.layer_stats[n].top1_counts + t.routing.layer_stats[n].top1_counts for n in stats[0]}
    units = {n: q.routing.layer_stats[n].num_units + t.routing.layer_stats[n].num_units for n in stats[0]}
    lb, z = (v.detach() for v in aux_losses(stats, top1_shares(counts, units), units))
    assert out.contrastive == pytest.approx(float(ref.loss.detach()), rel=1e-5)
    assert (out.load_balance, out.z_loss) == (pytest.approx(float(lb), rel=1e-5), pytest.approx(float(z), rel=1e-5))
    assert out.loss == pytest.approx(float((ref.loss + 0.3 * lb + 0.02 * z).detach()), rel=1e-5)
    assert "uniformity" in out.logs and float(lb) > 0 and float(z) > 0


def test_routing_terms_weighting_and_a_model_without_adapters():
    from tsembed.training.auxiliary import RoutingTerms, step_total

    cfg = LossConfig(load_balance_weight=0.5, z_loss_weight=0.25)
    terms = RoutingTerms(torch.tensor(2.0), torch.tensor(4.0))
    assert float(terms.weighted(cfg)) == 2.0 and float(terms.weighted(cfg, ranks=3)) == 6.0  # a sum over ranks
    assert float(step_total(torch.tensor(1.0), terms, cfg)) == 3.0
    none = RoutingTerms.of([], {}, {}, torch.device("cpu"))
    assert (float(none.load_balance), float(none.z_loss)) == (0.0, 0.0)


@pytest.mark.parametrize("chunk_size", [None, 3])
def test_query_routed_targets_are_embedded_with_their_querys_experts(chunk_size):
    """moe.target_routing='query': every positive takes its own query's top-1 experts layer by layer and every hard
    negative its owner's; the step's loss and gradients equal that reference assembled by hand (full batch, and
    GradCache with length-bucketed chunks), and differ from routing the targets by themselves."""
    from tsembed.moe import chosen_routes, forced_routes

    model = toy_model(target_routing="query")
    objective = ContrastiveObjective(LossConfig(load_balance_weight=0.1, z_loss_weight=0.01, load_balance_window=1),
                                     EANSConfig(mode="weight", beta=2.0))
    batch = toy_batch(n=8, hard=3)
    step = contrastive_step(model, objective, batch, eans_active=True, chunk_size=chunk_size)

    reference = copy.deepcopy(model)
    reference.zero_grad(set_to_none=True)
    queries = reference(**reference.prepare(batch.queries))
    routes = chosen_routes(queries.routing)
    owner = torch.where(batch.target_owner >= 0, batch.target_owner, torch.arange(len(batch.targets)))
    with forced_routes(reference.backbone, {name: r[owner] for name, r in routes.items()}):
        targets = reference(**reference.prepare(batch.targets))
    result = objective(queries.embeddings, targets.embeddings, queries.routing.signature, targets.routing.signature,
                       batch.target_ids, batch.target_owner, True)
    assert step.contrastive == pytest.approx(result.loss.item(), rel=1e-5)
    torch.testing.assert_close(step.target_signatures, targets.routing.signature)  # the routers' own view

    from tsembed.training.step import _routing_terms, _shares, step_total

    shares, units = _shares(reference, [queries, targets], None, True)
    step_total(result.loss, _routing_terms([queries, targets], shares, units, result.loss.device),
               objective.loss_config).backward()
    assert_grads_close(grads(model), grads(reference))

    own = copy.deepcopy(model)
    own.config.moe.target_routing = "own"
    assert contrastive_step(own, objective, batch, eans_active=True, backward=False).contrastive != pytest.approx(
        step.contrastive, rel=1e-4)

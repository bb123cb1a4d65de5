"""Null experts (``moe.num_null_experts``): router choices that output zero (AdaMoE), and shared + routed
layers that start as their shared expert alone (DeepSeekMoE / MoCLE)."""

import itertools

import pytest
import torch
from torch import nn

from tsembed.errors import AdapterError, ConfigError
from tsembed.moe import (
    MoELoRAConfig,
    attach,
    collect_routing,
    load_adapters,
    merge_and_unload,
    merge_expert,
    prune_experts,
    save_adapters,
    set_routing_mask,
    signature_size,
)

from .reference import assert_fused_matches_reference, reference_forward

MODES = [("topk", 1), ("topk", 2), ("topp", 2), ("dense", 2)]


def make_adapted(routing: str = "topk", top_k: int = 1, level: str = "sequence", shared: int = 0, nulls: int = 1,
                 num_experts: int = 3, seed: int = 0, **extra):
    torch.manual_seed(seed)
    model = nn.Sequential(nn.Linear(12, 10))
    config = MoELoRAConfig(
        target_modules=["0"], num_experts=num_experts, rank=3, alpha=6.0, routing=routing, top_k=top_k,
        top_p=0.6, level=level, temperature=0.7, num_shared_experts=shared, num_null_experts=nulls,
        router_init_std=0.5, **extra,
    )
    attach(model, config)
    layer = model[0]
    with torch.no_grad():  # B starts at zero; give it values so the adapters matter
        layer.lora_B.normal_(std=0.3)
    return model, layer


def no_hooks(model: nn.Module, mask: torch.Tensor | None = None) -> None:
    if mask is not None:
        set_routing_mask(model, mask)  # as a backbone would, after the root pre-hook ran
    model._forward_pre_hooks.clear()
    model._forward_pre_hooks_with_kwargs.clear()


# ----- config


def test_num_routes_counts_routed_and_null_experts():
    config = MoELoRAConfig(target_modules=["0"], num_experts=3, num_null_experts=2, num_shared_experts=1)
    assert config.num_routes == 5
    assert MoELoRAConfig(target_modules=["0"], num_experts=3).num_null_experts == 0  # off by default
    # a null expert is a choice top-k may take: E = 1 with one null allows top_k = 2
    assert MoELoRAConfig(target_modules=["0"], num_experts=1, num_null_experts=1, top_k=2).num_routes == 2


@pytest.mark.parametrize(("kwargs", "message"), [
    ({"num_null_experts": -1}, "moe.num_null_experts must be an integer >= 0"),
    ({"num_null_experts": 1.0}, "moe.num_null_experts must be an integer >= 0"),
    ({"num_experts": 2, "num_null_experts": 1, "top_k": 4},
     "top_k=4 is larger than moe.num_experts=2 \\+ moe.num_null_experts=1, the router's 3 choices"),
])
def test_bad_null_expert_settings_say_what_is_wrong(kwargs, message):
    with pytest.raises(ConfigError, match=message):
        MoELoRAConfig(target_modules=["0"], **kwargs)


# ----- forward and gradients against the per-expert loop


@pytest.mark.parametrize(("mode", "level", "shared", "nulls"),
                         list(itertools.product(MODES, ["token", "sequence"], [0, 1], [1, 2])))
def test_fused_forward_and_grads_with_null_experts_equal_per_expert_loop(mode, level, shared, nulls):
    routing, top_k = mode
    model, layer = make_adapted(routing, top_k, level, shared, nulls)
    assert layer.router.weight.shape == (3 + nulls, 12)  # one router row per route, null ones included
    x = torch.randn(3, 5, 12, requires_grad=True)
    mask = torch.tensor([[1, 1, 1, 1, 1], [1, 1, 1, 0, 0], [1, 0, 0, 0, 0]])
    no_hooks(model, mask)
    assert_fused_matches_reference(model, layer, x, mask)


def test_task_hints_bias_null_routes_too():
    model, layer = make_adapted(level="sequence", nulls=1, task_hints=["a", "b"])
    assert layer.router_hint.shape == (2, 4)
    with torch.no_grad():
        layer.router_hint[1, 3] = 50.0  # hint "b" chooses the null route
    x = torch.randn(2, 12)
    model.tsembed_routing_state.hints = torch.tensor([1, -1])
    torch.testing.assert_close(model(x), reference_forward(layer, x, hints=[1, -1]))
    assert collect_routing(model).layer_probs["0"][0].argmax() == 3


def routed_to(layer, direction: torch.Tensor, null_first: bool = True) -> None:
    """Router rows that send inputs along +direction to the first null route and -direction to expert 0."""
    with torch.no_grad():
        layer.router.weight.zero_()
        layer.router.weight[layer.num_experts] = direction * 10.0
        layer.router.weight[0] = -direction * 10.0


def two_inputs(direction: torch.Tensor) -> torch.Tensor:
    """Input 0 along +direction (→ null), input 1 along -direction (→ expert 0); [2, 4, 12]."""
    noise = 0.01 * torch.randn(2, 4, 12)
    return torch.stack([direction.expand(4, 12), -direction.expand(4, 12)]) + noise


@pytest.mark.parametrize("level", ["sequence", "token"])
def test_a_top1_null_route_gives_the_routed_experts_no_task_gradient(level):
    model, layer = make_adapted("topk", 1, level, shared=1, nulls=1)
    direction = nn.functional.normalize(torch.randn(12), dim=0)
    routed_to(layer, direction)
    x = two_inputs(direction)
    no_hooks(model)
    out = model(x)
    probs = collect_routing(model).layer_probs["0"]
    assert probs[0].argmax() == 3 and probs[1].argmax() == 0  # input 0 → null, input 1 → expert 0
    r, routed_rows = layer.rank, slice(0, 3 * layer.rank)
    shared_rows = slice(3 * r, 4 * r)

    grad_a, grad_b = torch.autograd.grad((out[0] ** 2).sum(), [layer.lora_A, layer.lora_B])
    assert grad_a[routed_rows].abs().sum() == 0 and grad_b[:, routed_rows].abs().sum() == 0
    assert grad_a[shared_rows].abs().sum() > 0 and grad_b[:, shared_rows].abs().sum() > 0  # the shared expert learns

    out = model(x)  # input 1 went to expert 0: its rows (and only its) learn
    grad_a, grad_b = torch.autograd.grad((out[1] ** 2).sum(), [layer.lora_A, layer.lora_B])
    assert grad_b[:, 0:r].abs().sum() > 0 and grad_b[:, r : 3 * r].abs().sum() == 0

    # and the null-routed input's output is the base plus the shared expert alone
    a, b = layer.lora_A[shared_rows], layer.lora_B[:, shared_rows]
    expected = layer.base_layer(x[0]) + layer.scaling * (x[0] @ a.T) @ b.T
    torch.testing.assert_close(model(x)[0], expected, atol=1e-6, rtol=1e-6)


# ----- routing statistics and the balance loss count the null routes


def test_balance_loss_and_statistics_count_null_routes():
    model, layer = make_adapted("topk", 1, "sequence", shared=0, nulls=2)
    direction = nn.functional.normalize(torch.randn(12), dim=0)
    routed_to(layer, direction)
    x = two_inputs(direction)
    no_hooks(model)
    model(x)
    routing = collect_routing(model)
    probs = routing.layer_probs["0"]  # [2, E + N]
    assert probs.shape == (2, 5) and routing.signature.shape == (2, 5) and signature_size(model) == 5
    stats = routing.layer_stats["0"]
    assert stats.top1_counts.tolist() == [1, 0, 0, 1, 0]  # one input chose null route 3
    share = torch.tensor([0.5, 0.0, 0.0, 0.5, 0.0])
    expected = 5 * (share * probs.mean(dim=0)).sum()  # E' · Σ f·P over all E + N routes
    torch.testing.assert_close(routing.load_balance_loss, expected)
    expected_z = torch.logsumexp(x.mean(dim=1) @ layer.router.weight.T, dim=-1).pow(2).mean()
    torch.testing.assert_close(routing.z_loss, expected_z)


# ----- at initialisation a shared + routed layer is its shared expert: one plain LoRA


@pytest.mark.parametrize(("routing", "top_k", "level"), [("topk", 1, "sequence"), ("topk", 2, "token"),
                                                         ("dense", 1, "sequence")])
def test_shared_plus_routed_at_init_equals_a_plain_lora_of_the_shared_weights(routing, top_k, level):
    torch.manual_seed(1)
    shared_routed = nn.Sequential(nn.Linear(12, 10))
    attach(shared_routed, MoELoRAConfig(
        target_modules=["0"], num_experts=3, num_shared_experts=1, num_null_experts=1, rank=4, alpha=8.0,
        routing=routing, top_k=top_k, level=level, router_init_std=0.5))
    plain = nn.Sequential(nn.Linear(12, 10))
    plain.load_state_dict({k.replace("base_layer.", ""): v for k, v in shared_routed.state_dict().items()
                           if "base_layer" in k})
    attach(plain, MoELoRAConfig(target_modules=["0"], num_experts=1, rank=4, alpha=8.0, top_k=1))
    layer, lora = shared_routed[0], plain[0]
    assert layer.lora_B.abs().sum() == 0  # every up-projection, routed ones included, starts at zero
    shared = slice(3 * 4, 4 * 4)
    with torch.no_grad():  # the shared expert's weights (e.g. a trained rank-4 LoRA) into both
        layer.lora_B[:, shared].normal_(std=0.3)
        lora.lora_A.copy_(layer.lora_A[shared])
        lora.lora_B.copy_(layer.lora_B[:, shared])
    x = torch.randn(3, 5, 12)
    torch.testing.assert_close(shared_routed(x), plain(x), atol=1e-6, rtol=1e-6)
    assert not torch.equal(layer.lora_A[:12], torch.zeros_like(layer.lora_A[:12]))  # routed A are random


# ----- save / load, prune, merge


def test_save_load_round_trip_keeps_null_experts_and_is_strict(tmp_path):
    model, _ = make_adapted("topk", 2, "sequence", shared=1, nulls=2)
    x = torch.randn(4, 12)
    before = model(x)
    save_adapters(model, tmp_path / "a")
    fresh = nn.Sequential(nn.Linear(12, 10))
    fresh.load_state_dict({k.replace("base_layer.", ""): v for k, v in model.state_dict().items()
                           if "base_layer" in k})
    load_adapters(fresh, tmp_path / "a")
    assert fresh[0].num_null == 2 and fresh.tsembed_moe_config.num_null_experts == 2
    assert torch.equal(fresh(x), before)

    other = nn.Sequential(nn.Linear(12, 10))
    attach(other, MoELoRAConfig(target_modules=["0"], num_experts=3, rank=3, alpha=6.0, top_k=2, level="sequence",
                                num_shared_experts=1, routing="topk", top_p=0.6, temperature=0.7,
                                router_init_std=0.5, num_null_experts=1))
    with pytest.raises(AdapterError, match="num_null_experts: attached 1 vs checkpoint 2"):
        load_adapters(other, tmp_path / "a")


def test_pruning_keeps_the_null_routes_and_their_router_rows():
    model, layer = make_adapted("topk", 1, "sequence", shared=1, nulls=1)
    x = torch.randn(16, 12)
    no_hooks(model)
    before = model(x)
    choice = collect_routing(model).layer_probs["0"].argmax(dim=-1)
    old_router = layer.router.weight.detach().clone()
    new = prune_experts(model, [2, 0])
    assert (new.num_experts, new.num_null_experts, new.num_routes) == (2, 1, 3)
    assert torch.equal(layer.router.weight, old_router[[2, 0, 3]])
    kept = (choice == 2) | (choice == 0) | (choice == 3)  # inputs whose route survived compute what they did
    assert kept.any()
    torch.testing.assert_close(model(x)[kept], before[kept])
    with pytest.raises(AdapterError, match="null experts"):
        prune_experts(model, [2])  # route 2 is now the null one


def test_merges_that_cannot_represent_a_null_route_refuse():
    model, _ = make_adapted("topk", 1, "sequence", nulls=1, num_experts=1)
    with pytest.raises(AdapterError, match="null experts"):
        merge_and_unload(model)
    model, _ = make_adapted("topk", 1, "sequence", nulls=1)
    with pytest.raises(AdapterError, match="null experts, which have no weights"):
        merge_expert(model, 3)


def test_merged_routed_expert_equals_the_model_on_inputs_routed_to_it():
    model, layer = make_adapted("topk", 1, "sequence", shared=1, nulls=1)
    direction = nn.functional.normalize(torch.randn(12), dim=0)
    routed_to(layer, direction)
    x = two_inputs(direction)
    no_hooks(model)
    routed = model(x)
    merge_expert(model, 0)
    torch.testing.assert_close(model(x)[1], routed[1], atol=1e-5, rtol=1e-5)


def test_routing_report_labels_null_routes_after_the_routed_experts():
    from tsembed.evaluation.routing_report import RoutingReport

    report = RoutingReport(has_routing=True, num_experts=5, num_null_experts=2)
    assert report.route_labels() == ["e0", "e1", "e2", "null0", "null1"]
    assert RoutingReport(has_routing=True, num_experts=2).route_labels() == ["e0", "e1"]
    assert report.to_dict()["num_null_experts"] == 2


def test_adapters_saved_before_null_experts_existed_load_with_none(tmp_path):
    import json

    model, _ = make_adapted("topk", 1, "sequence", shared=1, nulls=0)
    save_adapters(model, tmp_path / "a")
    path = tmp_path / "a" / "moe_lora_config.json"
    meta = json.loads(path.read_text())
    del meta["config"]["num_null_experts"]  # as written by an older tsembed
    path.write_text(json.dumps(meta))
    fresh = nn.Sequential(nn.Linear(12, 10))
    fresh.load_state_dict({k.replace("base_layer.", ""): v for k, v in model.state_dict().items()
                           if "base_layer" in k})
    load_adapters(fresh, tmp_path / "a")
    x = torch.randn(3, 12)
    assert fresh.tsembed_moe_config.num_null_experts == 0 and torch.equal(fresh(x), model(x))

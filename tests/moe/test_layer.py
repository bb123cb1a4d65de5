import itertools

import pytest
import torch
from torch import nn

from tsembed.moe import MoELoRAConfig, attach, collect_routing, set_routing_mask
from tsembed.moe.routers import dense_gates, topk_gates, topp_gates

from .reference import assert_fused_matches_reference, reference_forward, reference_gates

MODES = [("topk", 1), ("topk", 2), ("topp", 2), ("dense", 2)]


def make_adapted(routing: str, top_k: int, level: str, shared: int, num_experts: int = 4, seed: int = 0):
    torch.manual_seed(seed)
    model = nn.Sequential(nn.Linear(12, 10))
    config = MoELoRAConfig(
        target_modules=["0"], num_experts=num_experts, rank=3, alpha=6.0, routing=routing, top_k=top_k,
        top_p=0.6, level=level, temperature=0.7, num_shared_experts=shared, router_init_std=0.5,
    )
    attach(model, config)
    layer = model[0]
    with torch.no_grad():  # B starts at zero; give it values so the adapters matter
        layer.lora_B.normal_(std=0.3)
    return model, layer


@pytest.mark.parametrize(("mode", "level", "shared"), list(itertools.product(MODES, ["token", "sequence"], [0, 2])))
def test_fused_forward_and_grads_equal_per_expert_loop(mode, level, shared):
    routing, top_k = mode
    model, layer = make_adapted(routing, top_k, level, shared)
    x = torch.randn(3, 5, 12, requires_grad=True)
    mask = torch.tensor([[1, 1, 1, 1, 1], [1, 1, 1, 0, 0], [1, 0, 0, 0, 0]])
    set_routing_mask(model, mask)  # as a backbone would, after the root pre-hook ran
    model._forward_pre_hooks.clear()
    model._forward_pre_hooks_with_kwargs.clear()
    assert_fused_matches_reference(model, layer, x, mask)


@pytest.mark.parametrize("gate_fn,mode", [(topk_gates, "topk"), (topp_gates, "topp"), (dense_gates, "dense")])
def test_gate_functions_equal_loop_reference(gate_fn, mode):
    probs = torch.softmax(torch.randn(7, 6), dim=-1)
    for k, p in [(1, 0.3), (2, 0.5), (3, 0.9)]:
        torch.testing.assert_close(gate_fn(probs, k, p), reference_gates(probs, mode, k, p))


def test_topp_takes_fewest_experts_reaching_mass():
    probs = torch.tensor([[0.5, 0.3, 0.15, 0.05]])
    assert (topp_gates(probs, 1, 0.5) > 0).sum() == 1
    assert (topp_gates(probs, 1, 0.51) > 0).sum() == 2
    assert (topp_gates(probs, 1, 0.97) > 0).sum() == 4


@pytest.mark.parametrize("level", ["token", "sequence"])
def test_top1_router_gets_gradient_from_the_output(level):
    """A renormalised top-1 gate is identically 1 and would leave the router untrained by the task."""
    model, layer = make_adapted("topk", 1, level, 0)
    x = torch.randn(3, 5, 12)
    set_routing_mask(model, torch.ones(3, 5, dtype=torch.long))
    model._forward_pre_hooks.clear()
    model._forward_pre_hooks_with_kwargs.clear()
    (model(x) ** 2).sum().backward()
    assert layer.router.weight.grad is not None and layer.router.weight.grad.abs().sum() > 0


def test_single_expert_top1_equals_plain_lora():
    model, layer = make_adapted("topk", 1, "token", 0, num_experts=1)
    x = torch.randn(4, 12)
    plain = layer.base_layer(x) + layer.scaling * (x @ layer.lora_A.T) @ layer.lora_B.T
    torch.testing.assert_close(model(x), plain)


def test_2d_input_rows_are_their_own_inputs():
    model, layer = make_adapted("topk", 2, "sequence", 1)
    x = torch.randn(6, 12)
    torch.testing.assert_close(model(x), reference_forward(layer, x))
    assert collect_routing(model).signature.shape == (6, 4)


def test_jitter_only_while_training():
    torch.manual_seed(0)
    model = nn.Sequential(nn.Linear(8, 8))
    attach(model, MoELoRAConfig(target_modules=["0"], jitter=0.5, router_init_std=1.0))
    x = torch.randn(2, 3, 8)
    model.eval()
    assert torch.equal(model(x), model(x))
    model.train()
    model(x)
    p1 = collect_routing(model).layer_probs["0"]
    model(x)
    p2 = collect_routing(model).layer_probs["0"]
    assert not torch.equal(p1, p2)


def test_forced_routes_apply_another_inputs_experts_and_keep_the_routers_record():
    """moe.target_routing='query': a layer inside forced_routes adds exactly the named expert's LoRA (per input, or
    one route for all), while its router still runs and is recorded; forcing each input's own choice changes nothing."""
    from tsembed.moe import chosen_routes, forced_routes

    model, layer = make_adapted("topk", 1, "sequence", shared=1)
    x = torch.randn(4, 5, 12)
    own = model(x)
    routing = collect_routing(model)
    with forced_routes(model, chosen_routes(routing)):
        torch.testing.assert_close(model(x), own)
    r = layer.rank
    shared = layer.lora_B[:, 4 * r:] @ layer.lora_A[4 * r:]
    for routes in (torch.tensor([3, 0, 2, 1]), torch.tensor([2])):
        with forced_routes(model, {"0": routes}):
            forced = model(x)
            probs = collect_routing(model).layer_probs["0"]
        torch.testing.assert_close(probs, routing.layer_probs["0"])  # the router's own view, recorded as before
        for b in range(4):
            e = int(routes[b if len(routes) > 1 else 0])
            delta = layer.lora_B[:, e * r:(e + 1) * r] @ layer.lora_A[e * r:(e + 1) * r] + shared
            want = x[b] @ (layer.base_layer.weight + layer.scaling * delta).T + layer.base_layer.bias
            torch.testing.assert_close(forced[b], want, atol=1e-5, rtol=1e-5)
    torch.testing.assert_close(model(x), own)  # the block's routes do not outlive it
    from tsembed.errors import AdapterError

    with pytest.raises(AdapterError, match="2 forced routes were set but MoE layer '0' sees 4 inputs"):
        with forced_routes(model, {"0": torch.tensor([0, 1])}):
            model(x)
    with pytest.raises(AdapterError, match="not for MoE layer '0'"):
        with forced_routes(model, {"other": torch.tensor([0])}):
            model(x)


@pytest.mark.parametrize(("change", "message"), [
    ({"level": "token"}, "moe.level='token' \\(needs 'sequence'\\)"),
    ({"top_k": 2}, "moe.top_k=2 \\(needs 1\\)"),
    ({"routing": "dense"}, "moe.routing='dense'"),
    ({"target_routing": "corpus"}, "moe.target_routing must be one of"),
])
def test_query_target_routing_needs_one_sequence_level_expert(change, message):
    from tsembed.errors import ConfigError

    settings = {"target_modules": ["0"], "level": "sequence", "top_k": 1, "target_routing": "query", **change}
    with pytest.raises(ConfigError, match=message):
        MoELoRAConfig(**settings)
    good = MoELoRAConfig(target_modules=["0"], level="sequence", top_k=1, target_routing="query")
    assert MoELoRAConfig.from_dict(good.to_dict()).target_routing == "query"

"""The wide-LoRA expert layout: one expert as a plain LoRA, its merged delta, and pruning experts."""

from __future__ import annotations

import pytest
import torch

from tsembed.errors import AdapterError
from tsembed.moe import collect_routing, get_moe_config, prune_experts, signature_size

from .reference import reference_forward
from .test_layer import make_adapted


def _expert(layer, e: int) -> tuple[torch.Tensor, torch.Tensor]:
    """Expert e's own A_e [r, d_in] and B_e [d_out, r], sliced one at a time (shared experts follow the routed)."""
    r = layer.rank
    return layer.lora_A[e * r : (e + 1) * r], layer.lora_B[:, e * r : (e + 1) * r]


@pytest.mark.parametrize("shared", [0, 2])
def test_expert_delta_is_the_per_expert_lora_delta(shared):
    _, layer = make_adapted("topk", 1, "sequence", shared)
    for e in range(layer.num_experts):
        expected = torch.zeros_like(layer.base_layer.weight)
        for j in [e] + [layer.num_experts + s for s in range(shared)]:
            a, b = _expert(layer, j)
            expected = expected + layer.scaling * b @ a  # (α/r) B_j A_j
        torch.testing.assert_close(layer.expert_delta(e), expected)
        a, b = layer.expert_factors(e)
        assert a.shape == ((1 + shared) * layer.rank, 12) and b.shape == (10, (1 + shared) * layer.rank)
        torch.testing.assert_close(a[: layer.rank], _expert(layer, e)[0])
    with pytest.raises(AdapterError, match=r"expert must be in \[0, 3\]"):
        layer.expert_factors(4)


@pytest.mark.parametrize("routing,top_k", [("topk", 2), ("dense", 1)])
def test_keeping_every_expert_in_another_order_changes_nothing(routing, top_k):
    model, layer = make_adapted(routing, top_k, "token", shared=1)
    x = torch.randn(3, 5, 12)
    with torch.no_grad():
        before = model(x)
        prune_experts(model, [3, 1, 0, 2])
        torch.testing.assert_close(model(x), before, atol=1e-6, rtol=1e-5)


def test_pruned_layer_is_the_kept_experts_of_the_original():
    model, layer = make_adapted("topk", 2, "sequence", shared=1)
    original = {k: v.detach().clone() for k, v in layer.adapter_parameters().items()}
    old = make_adapted("topk", 2, "sequence", shared=1)[1]  # an untouched twin, same seed
    config = prune_experts(model, [2, 0])
    r = layer.rank
    expected_a = torch.cat([original["lora_A"][2 * r : 3 * r], original["lora_A"][0:r], original["lora_A"][4 * r :]])
    torch.testing.assert_close(layer.lora_A, expected_a)
    torch.testing.assert_close(layer.router.weight, original["router.weight"][[2, 0]])
    assert (layer.num_experts, layer.top_k, config.num_experts, config.top_k) == (2, 2, 2, 2)
    assert get_moe_config(model) is config and signature_size(model) == 2
    torch.testing.assert_close(layer.expert_delta(0), old.expert_delta(2))  # expert 2 is now expert 0
    x = torch.randn(2, 4, 12)
    torch.testing.assert_close(model(x), reference_forward(layer, x), atol=1e-5, rtol=1e-5)
    assert collect_routing(model).signature.shape == (2, 2)


@pytest.mark.parametrize("keep", [[], [1, 1], [0, 4]])
def test_bad_keep_is_refused_before_any_layer_changes(keep):
    model, layer = make_adapted("topk", 1, "sequence", shared=0)
    weights = layer.lora_A.detach().clone()
    with pytest.raises(AdapterError, match="experts to keep"):
        prune_experts(model, keep)
    assert layer.num_experts == 4 and torch.equal(layer.lora_A, weights)

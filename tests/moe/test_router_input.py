"""Routers that read the instruction only (moe.router_input="text") and hint-initialised routing."""

import pytest
import torch
from torch import nn

from tsembed.errors import ConfigError
from tsembed.moe import MoELoRAConfig, attach, collect_routing, set_routing_hints, set_routing_mask

from .reference import reference_forward


def _layer(**options) -> tuple[nn.Module, nn.Module]:
    torch.manual_seed(0)
    model = nn.Sequential(nn.Linear(12, 10))
    config = MoELoRAConfig(target_modules=["0"], num_experts=4, rank=3, level="sequence", top_k=1,
                           router_init_std=0.5, **options)
    attach(model, config)
    with torch.no_grad():
        model[0].lora_B.normal_(std=0.3)
    model._forward_pre_hooks.clear()  # the test sets the masks itself, as a backbone would
    model._forward_pre_hooks_with_kwargs.clear()
    return model, model[0]


def test_text_router_pools_text_tokens_only_and_falls_back_without_text():
    model, layer = _layer(router_input="text")
    x = torch.randn(3, 5, 12)
    mask = torch.tensor([[1, 1, 1, 1, 0], [1, 1, 1, 1, 1], [1, 1, 0, 0, 0]])
    text = torch.tensor([[0, 1, 1, 0, 1], [0, 0, 0, 0, 0], [1, 0, 1, 0, 0]])  # row 1: no text (image only)
    set_routing_mask(model, mask, text_mask=text)
    fused = model(x)
    pooled_on = torch.tensor([[0, 1, 1, 0, 0], [1, 1, 1, 1, 1], [1, 0, 0, 0, 0]])  # text ∧ real; row 1: all real
    torch.testing.assert_close(fused, reference_forward(layer, x, pooled_on), atol=1e-5, rtol=1e-5)
    # the image tokens no longer move the routing
    x2 = x.clone()
    x2[0, 0] += 5.0
    x2[0, 3] -= 5.0
    first = collect_routing(model).layer_probs["0"][0]
    model(x2)
    torch.testing.assert_close(collect_routing(model).layer_probs["0"][0], first)


def test_all_tokens_router_ignores_the_text_mask():
    model, layer = _layer()
    x = torch.randn(2, 4, 12)
    mask = torch.ones(2, 4, dtype=torch.long)
    set_routing_mask(model, mask, text_mask=torch.tensor([[1, 0, 0, 0], [0, 1, 0, 0]]))
    torch.testing.assert_close(model(x), reference_forward(layer, x, mask), atol=1e-5, rtol=1e-5)


def test_hint_init_routes_each_task_to_its_own_expert():
    hints = ["identity", "tone", "shape", "colour", "object", "colour-word"]
    model, layer = _layer(task_hints=hints, task_hint_init=8.0)
    assert layer.router_hint.shape == (6, 4)
    assert layer.router_hint.argmax(dim=1).tolist() == [0, 1, 2, 3, 0, 1]
    x = torch.randn(6, 5, 12)
    set_routing_mask(model, None)
    set_routing_hints(model, torch.arange(6))
    model(x)
    top1 = collect_routing(model).layer_probs["0"].argmax(dim=-1)
    assert top1.tolist() == [0, 1, 2, 3, 0, 1]
    assert layer.router_hint.requires_grad


@pytest.mark.parametrize(("options", "message"), [
    ({"router_input": "image"}, "router_input must be one of"),
    ({"router_input": "text", "level": "token"}, "needs moe.level='sequence'"),
    ({"task_hint_init": 2.0}, "needs moe.task_hints"),
    ({"task_hints": ["a"], "task_hint_init": float("inf")}, "finite number"),
])
def test_bad_router_options_are_rejected(options, message):
    with pytest.raises(ConfigError, match=message):
        MoELoRAConfig(target_modules=["0"], **{"level": "sequence", **options})

"""Task-hint routing: a learned per-task logit bias, checked against the per-expert reference."""

import pytest
import torch
from torch import nn

from tsembed.errors import AdapterError, ConfigError
from tsembed.moe import MoELoRAConfig, attach, load_adapters, save_adapters, set_routing_hints, set_routing_mask

from .reference import reference_forward

HINTS = ["classification", "retrieval", "vqa"]


def make_hinted(level: str, hints: list[str] = HINTS, seed: int = 0) -> tuple[nn.Module, nn.Module]:
    torch.manual_seed(seed)
    model = nn.Sequential(nn.Linear(12, 10))
    config = MoELoRAConfig(target_modules=["0"], num_experts=4, rank=3, alpha=6.0, routing="topk", top_k=2,
                           level=level, temperature=0.7, router_init_std=0.5, task_hints=hints)
    attach(model, config)
    layer = model[0]
    with torch.no_grad():
        layer.lora_B.normal_(std=0.3)
        if layer.router_hint is not None:
            layer.router_hint.normal_(std=2.0)  # large enough to change which experts win
    model._forward_pre_hooks.clear()  # the test sets mask and hints itself, as a backbone would
    model._forward_pre_hooks_with_kwargs.clear()
    return model, layer


@pytest.mark.parametrize("level", ["token", "sequence"])
def test_hinted_forward_and_grads_equal_reference(level):
    model, layer = make_hinted(level)
    x = torch.randn(4, 5, 12, requires_grad=True)
    mask = torch.tensor([[1, 1, 1, 1, 1], [1, 1, 1, 0, 0], [1, 0, 0, 0, 0], [1, 1, 0, 0, 0]])
    hints = [0, 2, -1, 1]
    set_routing_mask(model, mask)
    set_routing_hints(model, torch.tensor(hints))
    fused = model(x)
    params = [x, layer.lora_A, layer.lora_B, layer.router.weight, layer.router_hint]
    upstream = torch.randn_like(fused)
    grads = torch.autograd.grad((fused * upstream).sum(), params)
    ref = reference_forward(layer, x, mask, hints)
    ref_grads = torch.autograd.grad((ref * upstream).sum(), params)
    torch.testing.assert_close(fused, ref, atol=1e-5, rtol=1e-5)
    for g, rg in zip(grads, ref_grads, strict=True):
        torch.testing.assert_close(g, rg, atol=1e-5, rtol=1e-5)
    assert grads[-1][0].abs().sum() > 0 and grads[-1][1].abs().sum() > 0  # used hints learn


def test_hints_change_routing_and_no_hint_means_no_bias():
    model, layer = make_hinted("sequence")
    x = torch.randn(3, 5, 12)
    set_routing_mask(model, None)
    plain = model(x)
    set_routing_hints(model, torch.tensor([-1, -1, -1]))
    torch.testing.assert_close(model(x), plain)  # an input without a task is routed on content only
    set_routing_hints(model, torch.tensor([0, 1, 2]))
    assert not torch.allclose(model(x), plain)


def test_zero_initialised_hints_leave_the_model_unchanged():
    torch.manual_seed(0)
    plain, hinted = nn.Sequential(nn.Linear(12, 10)), nn.Sequential(nn.Linear(12, 10))
    hinted.load_state_dict(plain.state_dict())
    kwargs = dict(target_modules=["0"], num_experts=4, rank=3, routing="topk", top_k=1, level="sequence")
    torch.manual_seed(1)
    attach(plain, MoELoRAConfig(**kwargs))
    torch.manual_seed(1)
    attach(hinted, MoELoRAConfig(**kwargs, task_hints=HINTS))
    with torch.no_grad():
        plain[0].lora_B.normal_(std=0.3)
        hinted[0].lora_B.copy_(plain[0].lora_B)
    x = torch.randn(2, 5, 12)
    set_routing_hints(hinted, torch.tensor([0, 2]))
    torch.testing.assert_close(hinted[0](x), plain[0](x))


def test_hint_count_must_match_the_batch():
    model, _ = make_hinted("sequence")
    set_routing_hints(model, torch.tensor([0, 1]))
    with pytest.raises(AdapterError, match="2 task hints were set but MoE layer '0' sees 3 inputs"):
        model(torch.randn(3, 5, 12))


@pytest.mark.parametrize(("hints", "message"), [(["a", "a"], "repeat"), (["a", " "], "non-empty string")])
def test_config_rejects_bad_hints(hints, message):
    with pytest.raises(ConfigError, match=message):
        MoELoRAConfig(target_modules=["0"], task_hints=hints)


def test_hints_save_and_load_strictly(tmp_path):
    model, layer = make_hinted("sequence")
    save_adapters(model, tmp_path / "a")
    torch.manual_seed(5)
    fresh = nn.Sequential(nn.Linear(12, 10))
    load_adapters(fresh, tmp_path / "a")
    torch.testing.assert_close(fresh[0].router_hint, layer.router_hint)
    other, _ = make_hinted("sequence", hints=["classification"])
    with pytest.raises(AdapterError, match="task_hints"):
        load_adapters(other, tmp_path / "a")

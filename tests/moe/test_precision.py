"""Adapters on a bf16 base: fp32 master weights by default, so AdamW updates them (issue 15, item 1)."""

import contextlib
import copy

import pytest
import torch
from safetensors.torch import load_file
from torch import nn

from tsembed.errors import ConfigError
from tsembed.moe import (
    MoELoRAConfig,
    MoELoRALinear,
    adapter_state_dict,
    attach,
    load_adapters,
    save_adapters,
    set_routing_hints,
)

from .test_attach import QWEN_TARGETS, tiny_qwen2

INPUTS = {
    "input_ids": torch.randint(0, 50, (3, 7), generator=torch.Generator().manual_seed(0)),
    "attention_mask": torch.tensor([[1] * 7, [0] * 3 + [1] * 4, [1] * 7]),
}
HINTS = torch.tensor([0, 1, -1])  # task hints of the three inputs (the last declares none)


def qwen_config(**options) -> MoELoRAConfig:
    return MoELoRAConfig(target_modules=QWEN_TARGETS, num_experts=3, rank=2, top_k=2, task_hints=["a", "b"],
                         router_init_std=0.5, **options)


def adapted(base: nn.Module, config: MoELoRAConfig, seed: int = 1, b_std: float = 0.2) -> nn.Module:
    attach(base, config)
    torch.manual_seed(seed)
    with torch.no_grad():
        for layer in base.modules():
            if isinstance(layer, MoELoRALinear):  # B starts at zero; give it values so A gets gradients
                layer.lora_B.copy_(torch.randn_like(layer.lora_B) * b_std)
                layer.router_hint.copy_(torch.randn_like(layer.router_hint))
    set_routing_hints(base, HINTS)
    return base


def adapter_params(model: nn.Module) -> dict[str, torch.Tensor]:
    return adapter_state_dict(model)


def test_adapters_on_a_bf16_base_are_fp32_by_default_and_the_base_stays_bf16():
    model = adapted(tiny_qwen2().to(torch.bfloat16), qwen_config())
    assert {p.dtype for p in adapter_params(model).values()} == {torch.float32}
    layer = next(m for m in model.modules() if isinstance(m, MoELoRALinear))
    assert layer.base_layer.weight.dtype == torch.bfloat16
    assert model(**INPUTS).last_hidden_state.dtype == torch.bfloat16  # without autocast, the base's dtype out


def one_step_update_share(adapter_dtype: str, autocast: bool) -> float:
    """Share of adapter entries with a non-zero gradient that one AdamW step at lr 5e-5 changes."""
    model = adapted(tiny_qwen2().to(torch.bfloat16), qwen_config(adapter_dtype=adapter_dtype))
    params = adapter_params(model)
    before = {k: v.detach().clone() for k, v in params.items()}
    optimizer = torch.optim.AdamW(params.values(), lr=5e-5)
    context = torch.autocast("cpu", dtype=torch.bfloat16) if autocast else contextlib.nullcontext()
    with context:
        hidden = model(**INPUTS).last_hidden_state
    hidden.float().pow(2).mean().backward()
    grads = {k: v.grad.clone() for k, v in params.items()}
    optimizer.step()
    moved = total = 0
    for key, value in params.items():
        nonzero = grads[key] != 0
        moved += int((value.detach() != before[key])[nonzero].sum())
        total += int(nonzero.sum())
    assert total > 0.5 * sum(p.numel() for p in params.values())  # most entries get a gradient
    return moved / total


@pytest.mark.parametrize("autocast", [False, True])
def test_one_adamw_step_on_a_bf16_base_changes_every_adapter_entry_with_a_gradient(autocast):
    assert one_step_update_share("float32", autocast) == 1.0


def test_bf16_adapters_lose_most_small_adamw_steps():
    """Why fp32 is the default: in bf16 an update under half a unit in the last place rounds away."""
    assert one_step_update_share("bfloat16", autocast=False) < 0.5


@pytest.mark.parametrize("autocast", [False, True])
def test_bf16_base_with_fp32_adapters_matches_the_fp32_reference(autocast):
    # dense routing: a top-k choice between two near-equal experts may flip under rounding, a discrete jump
    reference = adapted(tiny_qwen2(), qwen_config(routing="dense"), b_std=0.01)  # a delta the size of W
    low = tiny_qwen2().to(torch.bfloat16)
    attach(low, qwen_config(routing="dense"))
    set_routing_hints(low, HINTS)
    with torch.no_grad():
        for key, value in adapter_params(low).items():
            value.copy_(adapter_params(reference)[key])
    context = torch.autocast("cpu", dtype=torch.bfloat16) if autocast else contextlib.nullcontext()
    expected = reference(**INPUTS).last_hidden_state.detach()
    with context:
        got = low(**INPUTS).last_hidden_state.detach().float()
    # within bf16's tolerance: the adapted bf16 model is as close to its fp32 reference as the bare bf16 base
    # is to the fp32 base (bf16 keeps 8 significant bits; 2^-8 ≈ 0.4% of the output's norm)
    bare = tiny_qwen2()(**INPUTS).last_hidden_state.detach()
    bare_error = relative_error(tiny_qwen2().to(torch.bfloat16)(**INPUTS).last_hidden_state.detach().float(), bare)
    assert relative_error(got, expected) < max(1.25 * bare_error, 2**-8)
    torch.testing.assert_close(got, expected, rtol=1.6e-2, atol=0.01 * float(expected.abs().max()))
    assert float((got - expected).abs().max()) > 0  # the base really ran in bf16


def relative_error(got: torch.Tensor, expected: torch.Tensor) -> float:
    return float((got - expected).norm() / expected.norm())


@pytest.mark.parametrize("adapter_dtype", ["float32", "bfloat16"])
def test_saved_adapters_keep_their_dtype_and_load_back_into_it(tmp_path, adapter_dtype):
    model = adapted(tiny_qwen2().to(torch.bfloat16), qwen_config(adapter_dtype=adapter_dtype))
    save_adapters(model, tmp_path)
    expected_dtype = getattr(torch, adapter_dtype)
    assert {t.dtype for t in load_file(tmp_path / "moe_lora.safetensors").values()} == {expected_dtype}
    loaded = load_adapters(tiny_qwen2().to(torch.bfloat16), tmp_path)
    set_routing_hints(loaded, HINTS)
    saved = adapter_params(model)
    for key, value in adapter_params(loaded).items():
        assert value.dtype == expected_dtype
        assert torch.equal(value, saved[key]), key
    torch.testing.assert_close(loaded(**INPUTS).last_hidden_state, model(**INPUTS).last_hidden_state)


def test_adapter_dtype_is_validated_and_older_configs_without_it_load_as_fp32():
    with pytest.raises(ConfigError, match=r"moe.adapter_dtype must be one of \['bfloat16', 'float16', 'float32'\]"):
        qwen_config(adapter_dtype="fp32")
    data = qwen_config().to_dict()
    del data["adapter_dtype"]  # written before the option existed
    assert MoELoRAConfig.from_dict(data).adapter_dtype == "float32"


def test_deep_copy_keeps_adapter_dtypes():
    model = adapted(tiny_qwen2().to(torch.bfloat16), qwen_config())
    assert {p.dtype for p in adapter_params(copy.deepcopy(model)).values()} == {torch.float32}

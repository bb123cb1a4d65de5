import copy

import pytest
import torch
from torch import nn
from transformers import BertConfig, BertModel, Qwen2Config, Qwen2Model

from tsembed.errors import AdapterError, ConfigError
from tsembed.moe import MoELoRAConfig, MoELoRALinear, attach, collect_routing, detach

BERT_TARGETS = [r"encoder\.layer\.\d+\.attention\.self\.(query|key|value)", r"encoder\.layer\.\d+\.output\.dense"]
QWEN_TARGETS = [r"layers\.\d+\.self_attn\.(q|k|v|o)_proj", r"layers\.\d+\.mlp\.(gate|up|down)_proj"]


def tiny_bert() -> BertModel:
    torch.manual_seed(0)
    cfg = BertConfig(vocab_size=50, hidden_size=16, num_hidden_layers=2, num_attention_heads=2, intermediate_size=32)
    return BertModel(cfg).eval()


def tiny_qwen2() -> Qwen2Model:
    torch.manual_seed(0)
    cfg = Qwen2Config(
        vocab_size=50, hidden_size=16, num_hidden_layers=2, num_attention_heads=2, num_key_value_heads=1,
        intermediate_size=32, max_position_embeddings=64,
    )
    return Qwen2Model(cfg).eval()


def mlp() -> nn.Module:
    torch.manual_seed(0)
    return nn.Sequential(nn.Linear(8, 16), nn.GELU(), nn.Linear(16, 16), nn.GELU(), nn.Linear(16, 4))


CASES = {
    "mlp": (mlp, [r"0|2|4"], lambda: {"input": torch.randn(5, 8)}),
    "bert": (tiny_bert, BERT_TARGETS, lambda: {"input_ids": torch.randint(0, 50, (2, 7)),
                                               "attention_mask": torch.tensor([[1] * 7, [1] * 4 + [0] * 3])}),
    "qwen2": (tiny_qwen2, QWEN_TARGETS, lambda: {"input_ids": torch.randint(0, 50, (2, 7)),
                                                 "attention_mask": torch.tensor([[1] * 7, [0] * 3 + [1] * 4])}),
}


def run(model: nn.Module, inputs: dict) -> torch.Tensor:
    if "input" in inputs:
        return model(inputs["input"])
    return model(**inputs).last_hidden_state


@pytest.mark.parametrize("case", list(CASES))
@pytest.mark.parametrize("level", ["token", "sequence"])
def test_fresh_attach_equals_base_and_only_adapters_train(case, level):
    build, targets, make_inputs = CASES[case]
    base = build()
    model = copy.deepcopy(base)
    torch.manual_seed(1)
    inputs = make_inputs()
    expected = run(base, inputs)
    summary = attach(model, MoELoRAConfig(target_modules=targets, num_experts=4, rank=2, level=level))
    assert summary.num_modules > 0
    assert summary.trainable_parameters == sum(p.numel() for p in model.parameters() if p.requires_grad)
    torch.testing.assert_close(run(model, inputs), expected, atol=0, rtol=0)

    for layer in model.modules():  # make the adapters non-trivial so every adapter parameter gets a gradient
        if isinstance(layer, MoELoRALinear):
            nn.init.normal_(layer.lora_B, std=0.1)
    out = run(model, inputs)
    routing = collect_routing(model)
    (out.square().mean() + routing.load_balance_loss + routing.z_loss).backward()
    for name, param in model.named_parameters():
        is_adapter = name.endswith(("lora_A", "lora_B", "router.weight"))
        assert param.requires_grad == is_adapter, name
        assert (param.grad is not None) == is_adapter, name
    assert routing.signature.shape == (inputs.get("input", inputs.get("input_ids")).shape[0], 4 * summary.num_modules)


@pytest.mark.parametrize("case", list(CASES))
def test_detach_restores_original_modules(case):
    build, targets, make_inputs = CASES[case]
    model = build()
    originals = {n: m for n, m in model.named_modules() if isinstance(m, nn.Linear)}
    inputs = make_inputs()
    expected = run(model, inputs)
    attach(model, MoELoRAConfig(target_modules=targets))
    detach(model)
    assert {n: m for n, m in model.named_modules() if isinstance(m, nn.Linear)} == originals
    assert not any(isinstance(m, MoELoRALinear) for m in model.modules())
    assert not model._forward_pre_hooks
    torch.testing.assert_close(run(model, inputs), expected)
    attach(model, MoELoRAConfig(target_modules=targets))  # can attach again


def test_deepcopy_keeps_routing_state_separate():
    model = tiny_bert()
    attach(model, MoELoRAConfig(target_modules=BERT_TARGETS))
    clone = copy.deepcopy(model)
    clone(input_ids=torch.randint(0, 50, (3, 5)))
    model(input_ids=torch.randint(0, 50, (2, 5)))
    assert collect_routing(clone).signature.shape[0] == 3
    assert collect_routing(model).signature.shape[0] == 2


def test_pattern_matching_nothing_names_the_pattern():
    with pytest.raises(AdapterError, match=r"matched no module: \['nope'\].*Linear modules of this model include"):
        attach(mlp(), MoELoRAConfig(target_modules=[r"0", "nope"]))


def test_non_linear_target_is_named():
    with pytest.raises(AdapterError, match=r"1 \(GELU\)"):
        attach(mlp(), MoELoRAConfig(target_modules=[r"0|1"]))


def test_failed_attach_leaves_model_untouched():
    model = mlp()
    with pytest.raises(AdapterError):
        attach(model, MoELoRAConfig(target_modules=[r"0|1"]))
    assert all(p.requires_grad for p in model.parameters())
    assert not any(isinstance(m, MoELoRALinear) for m in model.modules())


def test_attach_twice_is_an_error():
    model = mlp()
    attach(model, MoELoRAConfig(target_modules=[r"0"]))
    with pytest.raises(AdapterError, match="already"):
        attach(model, MoELoRAConfig(target_modules=[r"2"]))


@pytest.mark.parametrize(
    "kwargs,match",
    [
        ({"top_k": 5, "num_experts": 4}, "top_k=5 is larger than moe.num_experts=4"),
        ({"rank": 0}, "moe.rank must be an integer >= 1, got 0"),
        ({"rank": -2}, "moe.rank"),
        ({"routing": "switch"}, r"moe.routing must be one of \('topk', 'topp', 'dense'\), got 'switch'"),
        ({"level": "batch"}, "moe.level"),
        ({"top_p": 0.0}, "moe.top_p"),
        ({"temperature": 0}, "moe.temperature"),
        ({"target_modules": ["("]}, "not a valid regex"),
    ],
)
def test_bad_config_values_are_named(kwargs, match):
    kwargs.setdefault("target_modules", ["0"])
    with pytest.raises(ConfigError, match=match):
        MoELoRAConfig(**kwargs)


def test_a_config_without_targets_means_the_backbones_and_attach_refuses_it():
    """Empty targets are a training config's "the backbone's defaults", filled in before attaching."""
    config = MoELoRAConfig()
    assert config.with_default_targets(["0"]).target_modules == ["0"] and config.target_modules == []
    assert MoELoRAConfig(target_modules=["2"]).with_default_targets(["0"]).target_modules == ["2"]
    with pytest.raises(ConfigError, match="moe.target_modules: give at least one"):
        attach(mlp(), config)


def test_unknown_config_key_is_named():
    with pytest.raises(ConfigError, match=r"unknown keys \['experts'\]"):
        MoELoRAConfig.from_dict({"target_modules": ["0"], "experts": 3})

import json

import pytest
import torch
from safetensors.torch import load_file, save_file
from torch import nn

from tsembed.errors import AdapterError
from tsembed.moe import (
    MoELoRAConfig,
    MoELoRALinear,
    attach,
    collect_routing,
    load_adapters,
    merge_and_unload,
    merge_expert,
    save_adapters,
)

from .test_attach import BERT_TARGETS, tiny_bert


def trained_bert(config: MoELoRAConfig) -> nn.Module:
    model = tiny_bert()
    attach(model, config)
    torch.manual_seed(3)
    for layer in model.modules():
        if isinstance(layer, MoELoRALinear):
            nn.init.normal_(layer.lora_B, std=0.2)
            nn.init.normal_(layer.router.weight, std=0.5)
    return model


INPUTS = {
    "input_ids": torch.randint(0, 50, (3, 6)),
    "attention_mask": torch.tensor([[1] * 6, [1] * 3 + [0] * 3, [1] * 6]),
}


def test_save_load_round_trip_is_bit_exact(tmp_path):
    config = MoELoRAConfig(target_modules=BERT_TARGETS, num_experts=3, rank=2, num_shared_experts=1)
    model = trained_bert(config)
    expected = model(**INPUTS).last_hidden_state
    save_adapters(model, tmp_path)
    assert sorted(p.name for p in tmp_path.iterdir()) == ["moe_lora.safetensors", "moe_lora_config.json"]

    fresh = tiny_bert()  # a fresh base with no adapters: load attaches them from the saved config
    load_adapters(fresh, tmp_path)
    assert torch.equal(fresh(**INPUTS).last_hidden_state, expected)
    assert torch.equal(collect_routing(fresh).signature, collect_routing(model).signature)


def _saved(tmp_path):
    config = MoELoRAConfig(target_modules=BERT_TARGETS, num_experts=3, rank=2)
    save_adapters(trained_bert(config), tmp_path)
    return tmp_path


def test_missing_and_unexpected_keys_are_listed(tmp_path):
    path = _saved(tmp_path)
    tensors = load_file(str(path / "moe_lora.safetensors"))
    del tensors["encoder.layer.0.attention.self.query.lora_A"]
    tensors["encoder.layer.9.output.dense.lora_A"] = torch.zeros(1)
    save_file(tensors, str(path / "moe_lora.safetensors"))
    with pytest.raises(AdapterError) as err:
        load_adapters(tiny_bert(), path)
    message = str(err.value)
    assert "missing keys ['encoder.layer.0.attention.self.query.lora_A']" in message
    assert "unexpected keys ['encoder.layer.9.output.dense.lora_A']" in message


def test_shape_mismatch_is_listed(tmp_path):
    path = _saved(tmp_path)
    tensors = load_file(str(path / "moe_lora.safetensors"))
    tensors["encoder.layer.1.output.dense.lora_B"] = torch.zeros(16, 5)
    save_file(tensors, str(path / "moe_lora.safetensors"))
    expected = r"encoder.layer.1.output.dense.lora_B: checkpoint \(16, 5\) vs model \(16, 6\)"
    with pytest.raises(AdapterError, match=expected):
        load_adapters(tiny_bert(), path)


def test_config_mismatch_with_attached_adapters_is_listed(tmp_path):
    path = _saved(tmp_path)
    model = tiny_bert()
    attach(model, MoELoRAConfig(target_modules=BERT_TARGETS, num_experts=4, rank=2))
    with pytest.raises(AdapterError, match="num_experts: attached 4 vs checkpoint 3"):
        load_adapters(model, path)


def test_checkpoint_for_other_modules_is_rejected(tmp_path):
    path = _saved(tmp_path)
    meta = json.loads((path / "moe_lora_config.json").read_text())
    meta["modules"].append("pooler.dense")
    (path / "moe_lora_config.json").write_text(json.dumps(meta))
    with pytest.raises(AdapterError, match=r"adapted modules differ.*pooler.dense"):
        load_adapters(tiny_bert(), path)


def test_wrong_format_and_missing_files(tmp_path):
    with pytest.raises(AdapterError, match="no adapter config"):
        load_adapters(tiny_bert(), tmp_path)
    (tmp_path / "adapter_config.json").write_text(json.dumps({"format": "peft"}))
    with pytest.raises(AdapterError, match="expected 'tsembed-moe-lora'"):
        load_adapters(tiny_bert(), tmp_path)


def test_failed_save_leaves_no_partial_file(tmp_path, monkeypatch):
    model = trained_bert(MoELoRAConfig(target_modules=BERT_TARGETS))

    def boom(*args, **kwargs):
        raise OSError("disk full")

    monkeypatch.setattr("tsembed.moe.io.save_file", boom)
    with pytest.raises(OSError):
        save_adapters(model, tmp_path)
    assert list(tmp_path.iterdir()) == []


def test_merge_single_expert_equals_adapted_model():
    config = MoELoRAConfig(target_modules=BERT_TARGETS, num_experts=1, rank=4, top_k=1, num_shared_experts=1)
    model = trained_bert(config)
    expected = model(**INPUTS).last_hidden_state
    merge_and_unload(model)
    assert not any(isinstance(m, MoELoRALinear) for m in model.modules())
    torch.testing.assert_close(model(**INPUTS).last_hidden_state, expected, atol=1e-5, rtol=1e-5)


def test_merge_and_unload_refuses_several_experts():
    with pytest.raises(AdapterError, match="num_experts=1"):
        merge_and_unload(trained_bert(MoELoRAConfig(target_modules=BERT_TARGETS, num_experts=2)))


def test_merge_expert_equals_routed_model_on_inputs_routed_to_it():
    torch.manual_seed(0)
    net = nn.Sequential(nn.Linear(6, 8), nn.Tanh(), nn.Linear(8, 3))
    attach(net, MoELoRAConfig(target_modules=["0", "2"], num_experts=3, rank=2, top_k=1, level="sequence",
                              num_shared_experts=1))
    for layer in net.modules():
        if isinstance(layer, MoELoRALinear):
            nn.init.normal_(layer.lora_B, std=0.3)
            with torch.no_grad():  # route every input of both layers to expert 2
                layer.router.weight.zero_()
                layer.router.weight[2].fill_(0.0)
                layer.router.weight[0].fill_(-5.0)
                layer.router.weight[1].fill_(-5.0)
    x = torch.rand(4, 5, 6) + 0.1  # positive inputs: expert 2 wins everywhere
    expected = net(x)
    assert all(int(p.argmax(-1).unique()) == 2 for p in collect_routing(net).layer_probs.values())
    merge_expert(net, 2)
    torch.testing.assert_close(net(x), expected, atol=1e-5, rtol=1e-5)


def test_merge_expert_needs_sequence_level_and_valid_index():
    model = trained_bert(MoELoRAConfig(target_modules=BERT_TARGETS, level="token"))
    with pytest.raises(AdapterError, match="sequence-level"):
        merge_expert(model, 0)
    model = trained_bert(MoELoRAConfig(target_modules=BERT_TARGETS, level="sequence"))
    with pytest.raises(AdapterError, match=r"expert must be in \[0, 3\], got 7"):
        merge_expert(model, 7)

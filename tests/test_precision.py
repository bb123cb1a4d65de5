"""tsembed.precision: trainable backbone modules in fp32 on a bf16 base, and run.precision's checks."""

import pytest
import torch
from torch import nn

from tests.toy_backbone import ToyBackbone
from tsembed.errors import ConfigError
from tsembed.inputs import EmbedInput
from tsembed.precision import autocast, check_precision, grad_scaler, keep_in_float32


def bf16_toy() -> ToyBackbone:
    backbone = ToyBackbone().to(torch.bfloat16)
    backbone.unfreeze_trainable_modules()  # what TSEmbedModel does after attaching adapters
    return backbone


def test_a_trainable_module_of_a_bf16_backbone_trains_in_fp32_and_gives_the_base_dtype_back():
    backbone = bf16_toy()
    assert {p.dtype for p in backbone.proj.parameters()} == {torch.float32}
    assert all(p.requires_grad for p in backbone.proj.parameters())
    assert {p.dtype for p in backbone.bert.parameters()} == {torch.bfloat16}
    batch = backbone.prepare([EmbedInput(text="red cat"), EmbedInput(text="a blue house by the sea")])
    out = backbone(**batch).hidden_states
    assert out.dtype == torch.bfloat16  # outside autocast: cast back for the bf16 layers after it
    out.float().sum().backward()
    assert backbone.proj.weight.grad.dtype == torch.float32
    with torch.autocast("cpu", dtype=torch.bfloat16):
        assert backbone(**batch).hidden_states.dtype == torch.bfloat16
    assert backbone.trainable_state_dict()["proj.weight"].dtype == torch.float32  # saved as fp32


def test_keep_in_float32_leaves_fp32_modules_alone_and_is_idempotent():
    layer = nn.Linear(3, 3)
    assert keep_in_float32(layer) is layer and not layer._forward_hooks and not layer._forward_pre_hooks
    backbone = bf16_toy()
    backbone.unfreeze_trainable_modules()  # again (from_pretrained does): no second pair of hooks
    assert len(backbone.proj._forward_hooks) == 1 and len(backbone.proj._forward_pre_hooks) == 1
    mixed = nn.Sequential(nn.Linear(2, 2).to(torch.bfloat16), nn.Linear(2, 2).to(torch.float16))
    with pytest.raises(ConfigError, match="mixes parameter dtypes"):
        keep_in_float32(mixed)


def test_check_precision_names_the_key_and_the_device():
    check_precision("fp32", torch.device("cpu"))
    check_precision("bf16", torch.device("cpu"))
    with pytest.raises(ConfigError, match=r"run.precision='fp16' needs a CUDA device, but this run is on 'cpu'"):
        check_precision("fp16", torch.device("cpu"))
    with pytest.raises(ConfigError, match=r"run.precision must be one of \['bf16', 'fp16', 'fp32'\], got 'tf32'"):
        check_precision("tf32", torch.device("cpu"))


def test_autocast_and_grad_scaler_follow_the_precision():
    layer = nn.Linear(4, 4)
    x = torch.randn(2, 4)
    with autocast(torch.device("cpu"), "fp32"):
        assert layer(x).dtype == torch.float32
    with autocast(torch.device("cpu"), "bf16"):
        assert layer(x).dtype == torch.bfloat16
    assert grad_scaler("bf16", torch.device("cpu")) is None and grad_scaler("fp32", torch.device("cpu")) is None
    assert isinstance(grad_scaler("fp16", torch.device("cpu")), torch.amp.GradScaler)

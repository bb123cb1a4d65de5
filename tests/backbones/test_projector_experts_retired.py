"""Routed projector experts (``model.backbone.projector_experts`` > 1) were retired: 1 still loads, more is refused."""

from __future__ import annotations

import re

import pytest

from tsembed.backbones import build_backbone
from tsembed.backbones.minilm_effnet import RETIRED_PROJECTOR_EXPERTS
from tsembed.backbones.projector import VisualProjector
from tsembed.backbones.reference import portable_backbone_config, resolve_backbone_config
from tsembed.backbones.testing import build_tiny_minilm_effnet
from tsembed.errors import ConfigError
from tsembed.inputs import EmbedInput


def test_one_projector_is_still_accepted_and_no_longer_written(tiny_bert_dir) -> None:
    backbone = build_tiny_minilm_effnet(tiny_bert_dir, projector_experts=1)
    assert type(backbone.projector) is VisualProjector
    assert "projector_experts" not in backbone.config()
    rebuilt = build_backbone({**backbone.config(), "projector_experts": 1})  # what older saved configs hold
    assert rebuilt.config() == backbone.config()


@pytest.mark.parametrize("options", [{"projector_experts": 2}, {"projector_experts": 4, "train_projector": False}])
def test_more_than_one_projector_is_refused_with_the_reason(tiny_bert_dir, options) -> None:
    with pytest.raises(ConfigError, match=re.escape(RETIRED_PROJECTOR_EXPERTS)):
        build_tiny_minilm_effnet(tiny_bert_dir, **options)
    assert "retired" in RETIRED_PROJECTOR_EXPERTS and "docs/results/projector-aligned/" in RETIRED_PROJECTOR_EXPERTS
    assert "model.moe" in RETIRED_PROJECTOR_EXPERTS


@pytest.mark.parametrize("value", [0, -1, True, 1.5, "2"])
def test_a_value_that_is_not_a_positive_integer_keeps_its_error(tiny_bert_dir, value) -> None:
    with pytest.raises(ConfigError, match="projector_experts must be an integer"):
        build_tiny_minilm_effnet(tiny_bert_dir, projector_experts=value)


def test_a_loaded_or_saved_config_drops_the_retired_option_only_at_its_accepted_value() -> None:
    old = {"kind": "minilm-effnet", "text_model": None, "projector_experts": 1}
    assert resolve_backbone_config(old, "/tmp") == {"kind": "minilm-effnet", "text_model": None}
    assert portable_backbone_config(old, "/tmp") == {"kind": "minilm-effnet", "text_model": None}
    for value in (4, True):  # kept, for the backbone to refuse with its own message
        assert resolve_backbone_config({**old, "projector_experts": value}, "/tmp")["projector_experts"] is value


def test_prepare_runs_no_network(tiny_default_backbone, backbone_test_images) -> None:
    b = tiny_default_backbone
    called = []
    hooks = [m.register_forward_pre_hook(lambda module, args, name=name: called.append(name))
             for name, m in b.named_modules()]
    try:
        prepared = b.prepare([EmbedInput("<|image_1|> find the same colour", backbone_test_images[0]),
                              EmbedInput("text only")])
    finally:
        for hook in hooks:
            hook.remove()
    assert called == []
    assert set(prepared) == {"input_ids", "attention_mask", "token_type_ids", "image_digest", "image_cached",
                             "image_features", "pixel_values"}

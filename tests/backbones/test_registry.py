import pytest
import torch

from tsembed.backbones import BACKBONES, DEFAULT_BACKBONE, build_backbone
from tsembed.errors import AdapterError, ConfigError


def test_registry_names() -> None:
    assert sorted(BACKBONES) == ["dual-encoder", "minilm-effnet", "qwen2-vl"]
    assert DEFAULT_BACKBONE == "minilm-effnet"
    for kind, cls in BACKBONES.items():
        assert cls.kind == kind and cls.default_pooling in {"last", "mean", "cls"}


def test_unknown_kind_lists_valid_kinds() -> None:
    with pytest.raises(
        ConfigError, match=r"unknown backbone kind 'llava'; valid kinds: \['dual-encoder', 'minilm-effnet'"
    ):
        build_backbone({"kind": "llava"})
    with pytest.raises(ConfigError, match="needs a 'kind' key"):
        build_backbone({"path": "x"})


def test_unknown_option_lists_allowed_options() -> None:
    with pytest.raises(ConfigError, match=r"backbone 'minilm-effnet' has no options \['image_sz'\]; allowed options"):
        build_backbone({"kind": "minilm-effnet", "image_sz": 128})


def test_trainable_state_is_strict(tiny_default_backbone) -> None:
    b = tiny_default_backbone
    state = {k: torch.zeros_like(v) for k, v in b.trainable_state_dict().items()}
    b.load_trainable_state_dict(state)
    assert torch.count_nonzero(b.projector.cell_embedding) == 0
    state.pop("projector.cell_embedding")
    state["projector.extra"] = torch.zeros(1)
    with pytest.raises(AdapterError, match=r"missing keys \['projector.cell_embedding'\], unexpected keys"):
        b.load_trainable_state_dict(state)

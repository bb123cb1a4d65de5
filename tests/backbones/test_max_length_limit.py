"""Issue 24, D9: a max_length past the model's position limit is refused when the backbone is built."""

import pytest

from tsembed.backbones.qwen2_vl import Qwen2VLBackbone
from tsembed.backbones.testing import build_tiny_minilm_effnet
from tsembed.errors import ConfigError


def test_d9_minilm_max_length_past_the_position_limit(tiny_bert_dir) -> None:
    """Issue 24, D9: max_length=129 on a text model of 128 positions loaded, then failed (a server 500) on the first
    input that long; now the backbone refuses it when built (and so when a saved model is loaded)."""
    with pytest.raises(ConfigError, match=r"max_length=129 is past the text model's position limit of 128 tokens"):
        build_tiny_minilm_effnet(tiny_bert_dir, max_length=129)
    assert build_tiny_minilm_effnet(tiny_bert_dir, max_length=128).max_length == 128


def test_d9_qwen2_vl_max_length_past_the_position_limit(tiny_qwen2_vl_dir) -> None:
    with pytest.raises(ConfigError, match=r"max_length=1025 is past the language model's position limit of 1024"):
        Qwen2VLBackbone(str(tiny_qwen2_vl_dir), max_length=1025)

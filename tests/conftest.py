"""Shared fixtures. Backbone fixtures build tiny checkpoints once per session; tests that change a
backbone take the function-scoped deep copy (``tiny_default_backbone``, ``default_backbone``)."""

from __future__ import annotations

import copy
from collections.abc import Iterator
from pathlib import Path

import pytest

from tsembed.backbones import MiniLMEfficientNetBackbone
from tsembed.backbones import testing as tiny


@pytest.fixture(scope="session", autouse=True)
def isolated_tsembed_cache_dir(tmp_path_factory: pytest.TempPathFactory) -> Iterator[Path]:
    """Point TSEMBED_CACHE_DIR at a temporary directory so tests never write to ~/.cache."""
    root = tmp_path_factory.mktemp("tsembed-cache")
    with pytest.MonkeyPatch.context() as patch:
        patch.setenv("TSEMBED_CACHE_DIR", str(root))
        yield root


# --- backbones: tiny checkpoints on disk (tsembed.backbones.testing) ---------------------------


@pytest.fixture(scope="session")
def backbone_test_images(tmp_path_factory: pytest.TempPathFactory) -> list[Path]:
    """Eight rendered OpenMoji PNGs (96 px)."""
    return tiny.write_test_images(tmp_path_factory.mktemp("emoji"))


@pytest.fixture(scope="session")
def tiny_bert_dir(tmp_path_factory: pytest.TempPathFactory) -> Path:
    return tiny.save_tiny_bert(tmp_path_factory.mktemp("tiny-bert"))


@pytest.fixture(scope="session")
def tiny_qwen2_vl_dir(tmp_path_factory: pytest.TempPathFactory) -> Path:
    return tiny.save_tiny_qwen2_vl(tmp_path_factory.mktemp("tiny-qwen2-vl"), "qwen2_vl")


@pytest.fixture(scope="session")
def tiny_qwen2_5_vl_dir(tmp_path_factory: pytest.TempPathFactory) -> Path:
    return tiny.save_tiny_qwen2_vl(tmp_path_factory.mktemp("tiny-qwen2-5-vl"), "qwen2_5_vl")


@pytest.fixture(scope="session")
def tiny_clip_dir(tmp_path_factory: pytest.TempPathFactory) -> Path:
    return tiny.save_tiny_clip(tmp_path_factory.mktemp("tiny-clip"))


@pytest.fixture(scope="session")
def tiny_siglip_dir(tmp_path_factory: pytest.TempPathFactory) -> Path:
    return tiny.save_tiny_siglip(tmp_path_factory.mktemp("tiny-siglip"))


@pytest.fixture(scope="session")
def tiny_default_backbone_session(tiny_bert_dir: Path) -> MiniLMEfficientNetBackbone:
    """The default (minilm-effnet) backbone with a tiny BERT text side, built once; do not modify."""
    return tiny.build_tiny_minilm_effnet(tiny_bert_dir)


@pytest.fixture
def tiny_default_backbone(tiny_default_backbone_session: MiniLMEfficientNetBackbone) -> MiniLMEfficientNetBackbone:
    """A fresh deep copy of the tiny default backbone (memory cache emptied)."""
    backbone = copy.deepcopy(tiny_default_backbone_session)
    backbone.cache.clear_memory()
    return backbone


@pytest.fixture(scope="session")
def default_backbone_session() -> MiniLMEfficientNetBackbone:
    """The real offline default backbone (all-MiniLM-L6-v2 + EfficientNet-Lite0), built once; do not modify."""
    return MiniLMEfficientNetBackbone(disk_cache=False)


@pytest.fixture
def default_backbone(default_backbone_session: MiniLMEfficientNetBackbone) -> MiniLMEfficientNetBackbone:
    backbone = copy.deepcopy(default_backbone_session)
    backbone.cache.clear_memory()
    return backbone

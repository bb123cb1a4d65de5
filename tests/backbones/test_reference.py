"""Backbones named by Hub id (offline, from the local Hugging Face cache) and saved models that can move."""

from __future__ import annotations

import json
import shutil
from pathlib import Path

import numpy as np
import pytest
import torch

from tsembed.backbones import build_backbone
from tsembed.backbones.hf import resolve_pretrained
from tsembed.backbones.reference import portable_backbone_config, portable_reference, resolve_backbone_config
from tsembed.cli import main
from tsembed.errors import ConfigError
from tsembed.inference import encode
from tsembed.model import MODEL_CONFIG_NAME, ModelConfig, TSEmbedModel
from tsembed.moe import MoELoRAConfig, adapter_layers
from tsembed.weights import write_checksums

TEXTS = ["a red apple", "how many dogs are there?", "the same with dark skin tone"]
REVISION = "0123456789abcdef0123456789abcdef01234567"


def fake_hub_cache(cache: Path, repo_id: str, checkpoint: Path) -> Path:
    """``checkpoint`` placed in ``cache`` as huggingface_hub lays out a download: the snapshot of ``refs/main``."""
    org, name = repo_id.split("/")
    repo = cache / f"models--{org}--{name}"
    snapshot = repo / "snapshots" / REVISION
    shutil.copytree(checkpoint, snapshot)
    (repo / "refs").mkdir(parents=True)
    (repo / "refs" / "main").write_text(REVISION)
    return snapshot


def _minilm_model(text_model: Path, **options) -> TSEmbedModel:
    """A tiny minilm-effnet model with non-zero adapters (random B) on the given text encoder directory."""
    torch.manual_seed(0)
    backbone = {"kind": "minilm-effnet", "text_model": str(text_model), "image_size": 64, "num_visual_tokens": 4,
                "max_length": 48, "disk_cache": False, **options}
    moe = MoELoRAConfig(target_modules=[r"text\.encoder\.layer\.\d+\.attention\.self\.query"], num_experts=2,
                        rank=2, level="sequence")
    model = TSEmbedModel.from_config(ModelConfig(backbone=backbone, moe=moe))
    with torch.no_grad():
        for layer in adapter_layers(model.backbone).values():
            layer.lora_B.normal_(0.0, 0.1)
    return model.eval()


def _vectors(model: TSEmbedModel) -> np.ndarray:
    return encode(model, TEXTS, show_progress_bar=False)


def _saved_backbone(directory: Path) -> dict:
    return json.loads((directory / MODEL_CONFIG_NAME).read_text())["backbone"]


def test_a_model_with_its_backbone_inside_moves(tmp_path, tiny_bert_dir):
    home = tmp_path / "home" / "model"
    shutil.copytree(tiny_bert_dir, home / "backbone")
    model = _minilm_model(home / "backbone")
    expected = _vectors(model)
    model.save_pretrained(home)
    assert _saved_backbone(home)["text_model"] == "./backbone"  # relative to the model directory

    moved = tmp_path / "elsewhere" / "copy"
    shutil.copytree(home, moved)
    shutil.rmtree(tmp_path / "home")
    loaded = TSEmbedModel.from_pretrained(moved)
    np.testing.assert_array_equal(_vectors(loaded), expected)
    resaved = loaded.save_pretrained(tmp_path / "resaved")  # outside: the backbone's place, absolute
    assert _saved_backbone(resaved)["text_model"] == str((moved / "backbone").resolve())


def test_backbone_path_overrides_the_saved_reference(tmp_path, tiny_bert_dir, capsys):
    weights = tmp_path / "bert"
    shutil.copytree(tiny_bert_dir, weights)
    model = _minilm_model(weights)
    expected = _vectors(model)
    saved = model.save_pretrained(tmp_path / "model")
    moved_weights = tmp_path / "moved-bert"
    weights.rename(moved_weights)
    with pytest.raises(ConfigError, match=r"text_model: .*bert.* is not a local directory"):
        TSEmbedModel.from_pretrained(saved)
    np.testing.assert_array_equal(_vectors(TSEmbedModel.from_pretrained(saved, backbone_path=moved_weights)), expected)

    rows = tmp_path / "rows.jsonl"
    rows.write_text("".join(json.dumps({"id": i, "text": t}) + "\n" for i, t in enumerate(TEXTS)))
    argv = ["embed", "--model", str(saved), "--input", str(rows), "--out", str(tmp_path / "out.parquet"),
            "--no-progress", "--device", "cpu"]
    assert main(argv) == 1 and "is not a local directory" in capsys.readouterr().err
    assert main([*argv, "--backbone-path", str(moved_weights)]) == 0


def test_a_hub_id_loads_offline_from_the_local_cache(tmp_path, monkeypatch, tiny_qwen2_vl_dir, tiny_clip_dir):
    cache = tmp_path / "hf-cache"
    qwen_snapshot = fake_hub_cache(cache, "tiny-org/tiny-qwen2-vl", tiny_qwen2_vl_dir)
    fake_hub_cache(cache, "tiny-org/tiny-clip", tiny_clip_dir)
    monkeypatch.setenv("HF_HUB_CACHE", str(cache))
    monkeypatch.setenv("HF_HUB_OFFLINE", "1")

    assert resolve_pretrained("tiny-org/tiny-qwen2-vl", "path") == qwen_snapshot
    qwen = build_backbone({"kind": "qwen2-vl", "path": "tiny-org/tiny-qwen2-vl", "max_length": 64})
    assert qwen.card_metadata()["base_model"] == ["tiny-org/tiny-qwen2-vl"]
    clip = build_backbone({"kind": "dual-encoder", "path": "tiny-org/tiny-clip"})
    reference = build_backbone({"kind": "dual-encoder", "path": str(tiny_clip_dir)})
    assert torch.equal(clip.model.text_model.embeddings.token_embedding.weight,
                       reference.model.text_model.embeddings.token_embedding.weight)

    # a model built on the snapshot's directory saves the Hub id, and loads by it
    model = TSEmbedModel.from_config(ModelConfig(backbone={"kind": "qwen2-vl", "path": str(qwen_snapshot),
                                                           "max_length": 64}))
    saved = model.save_pretrained(tmp_path / "model")
    assert _saved_backbone(saved)["path"] == "tiny-org/tiny-qwen2-vl"
    np.testing.assert_allclose(_vectors(TSEmbedModel.from_pretrained(saved)), _vectors(model.eval()), atol=1e-6)
    monkeypatch.setenv("HF_HUB_CACHE", str(tmp_path / "another-cache"))  # the id would not load: keep the path
    assert portable_reference(str(qwen_snapshot), saved) == str(qwen_snapshot.resolve())


def test_a_hub_id_missing_from_the_cache_is_a_clear_error(tmp_path, monkeypatch):
    cache = tmp_path / "empty-cache"
    monkeypatch.setenv("HF_HUB_CACHE", str(cache))
    with pytest.raises(ConfigError, match=rf"path: 'nobody/nothing' .*not in the local Hugging Face cache {cache}"):
        build_backbone({"kind": "qwen2-vl", "path": "nobody/nothing"})
    with pytest.raises(ConfigError, match=r"'no/such/dir' is not a local directory"):
        resolve_pretrained("no/such/dir", "path")


def test_an_older_model_with_an_absolute_path_and_peft_file_names_still_loads(tmp_path, tiny_bert_dir):
    model = _minilm_model(tiny_bert_dir)
    expected = _vectors(model)
    saved = model.save_pretrained(tmp_path / "old")
    # as tsembed wrote it before: the backbone's absolute path, adapters under peft's file names
    config = json.loads((saved / MODEL_CONFIG_NAME).read_text())
    config["backbone"]["text_model"] = str(Path(tiny_bert_dir).resolve())
    (saved / MODEL_CONFIG_NAME).write_text(json.dumps(config))
    (saved / "adapters" / "moe_lora_config.json").rename(saved / "adapters" / "adapter_config.json")
    (saved / "adapters" / "moe_lora.safetensors").rename(saved / "adapters" / "adapter_model.safetensors")
    (saved / "checksums.json").unlink()
    write_checksums(saved, ["adapters/adapter_model.safetensors", "backbone_trainable.safetensors"])

    loaded = TSEmbedModel.from_pretrained(saved)
    np.testing.assert_array_equal(_vectors(loaded), expected)
    resaved = loaded.save_pretrained(saved)  # saved again in place: tsembed's names only
    assert sorted(p.name for p in (resaved / "adapters").iterdir()) == ["moe_lora.safetensors", "moe_lora_config.json"]
    np.testing.assert_array_equal(_vectors(TSEmbedModel.from_pretrained(resaved)), expected)


def test_an_older_model_saved_with_projector_experts_1_still_loads(tmp_path, tiny_bert_dir):
    """Models saved while routed projector experts existed carry ``"projector_experts": 1``; the option was retired."""
    model = _minilm_model(tiny_bert_dir)
    expected = _vectors(model)
    saved = model.save_pretrained(tmp_path / "old")
    assert "projector_experts" not in _saved_backbone(saved)  # no longer written
    config = json.loads((saved / MODEL_CONFIG_NAME).read_text())
    config["backbone"]["projector_experts"] = 1  # as tsembed wrote it before
    (saved / MODEL_CONFIG_NAME).write_text(json.dumps(config))

    loaded = TSEmbedModel.from_pretrained(saved)
    np.testing.assert_array_equal(_vectors(loaded), expected)
    assert "projector_experts" not in loaded.config.backbone  # compares equal to a model saved after the retirement
    assert "projector_experts" not in _saved_backbone(loaded.save_pretrained(tmp_path / "resaved"))


def test_portable_references():
    packaged = {"kind": "minilm-effnet", "text_model": None, "vision_weights": None}
    assert portable_backbone_config(packaged, "/tmp") == packaged
    hub = {"kind": "qwen2-vl", "path": "org/name"}
    assert portable_backbone_config(hub, "/tmp") == hub  # a Hub id stays one
    assert resolve_backbone_config(hub, "/tmp", backbone_path="other/name")["path"] == "other/name"
    assert resolve_backbone_config({"kind": "minilm-effnet"}, "/tmp", backbone_path="a/b")["text_model"] == "a/b"


def test_the_packaged_default_is_stored_by_package_not_by_path(tmp_path):
    from tsembed.backbones.efficientnet import packaged_weights_path
    from tsembed.backbones.minilm_effnet import packaged_text_model_path

    config = {"kind": "minilm-effnet", "text_model": str(packaged_text_model_path()),
              "vision_weights": str(packaged_weights_path())}
    assert portable_backbone_config(config, tmp_path) == {"kind": "minilm-effnet", "text_model": None,
                                                          "vision_weights": None}

"""Saved models: sha256 checksums of the weight files, finite tensors, and model and adapter configs that agree."""

from __future__ import annotations

import json
import re

import pytest
import torch
from safetensors.torch import load_file, save_file

from tests.evaluation.helpers import toy_model
from tests.toy_backbone import ToyBackbone
from tsembed.backbones import BACKBONES
from tsembed.errors import AdapterError, ConfigError
from tsembed.model import TSEmbedModel
from tsembed.weights import CHECKSUMS_NAME, read_safetensors

ADAPTERS = "adapters/moe_lora.safetensors"
TRAINABLE = "backbone_trainable.safetensors"


@pytest.fixture
def saved(tmp_path, monkeypatch):
    monkeypatch.setitem(BACKBONES, ToyBackbone.kind, ToyBackbone)
    return toy_model().save_pretrained(tmp_path / "model")


def test_save_lists_every_weight_file_and_load_verifies_it(saved):
    sums = json.loads((saved / CHECKSUMS_NAME).read_text())["sha256"]
    assert sorted(sums) == [ADAPTERS, TRAINABLE] and all(len(v) == 64 for v in sums.values())
    TSEmbedModel.from_pretrained(saved)


@pytest.mark.parametrize("name", [ADAPTERS, TRAINABLE])
def test_a_changed_weight_file_is_refused_naming_it(saved, name):
    path = saved / name
    tensors = load_file(str(path))
    key = sorted(tensors)[0]
    tensors[key] = tensors[key] + 1e-3  # still a valid, finite safetensors file: only the checksum can tell
    save_file(tensors, str(path))
    with pytest.raises(AdapterError, match=rf"{path}: sha256 .* differs .*{CHECKSUMS_NAME}: the file is truncated"):
        TSEmbedModel.from_pretrained(saved)


def test_missing_or_unlisted_weight_files_are_refused(saved):
    extra = saved / "backbone_weights.safetensors"
    save_file({"proj.weight": torch.zeros(32, 32)}, str(extra))
    with pytest.raises(AdapterError, match=rf"{extra}: weight file not listed"):
        TSEmbedModel.from_pretrained(saved)
    extra.unlink()
    (saved / TRAINABLE).unlink()
    with pytest.raises(AdapterError, match=rf"{saved / TRAINABLE}: listed in .* but missing"):
        TSEmbedModel.from_pretrained(saved)


def test_non_finite_weights_are_refused_even_without_checksums(saved, caplog):
    path = saved / ADAPTERS
    tensors = load_file(str(path))
    key = sorted(tensors)[-1]
    tensors[key][0] = float("nan")
    save_file(tensors, str(path))
    (saved / CHECKSUMS_NAME).unlink()  # a directory saved before checksums existed: loads with a warning
    with pytest.raises(AdapterError, match=rf"{path}: tensors \['{key}'\] hold NaN or Inf"):
        TSEmbedModel.from_pretrained(saved)
    assert "not verified" in caplog.text
    inf = saved / "inf.safetensors"
    save_file({"w": torch.tensor([1.0, float("inf")]), "ids": torch.tensor([1, 2])}, str(inf))
    with pytest.raises(AdapterError, match=r"\['w'\] hold NaN or Inf"):
        read_safetensors(inf)


def test_garbled_checksum_file_is_an_error(saved):
    (saved / CHECKSUMS_NAME).write_text('{"format": "other"}')
    with pytest.raises(AdapterError, match=CHECKSUMS_NAME):
        TSEmbedModel.from_pretrained(saved)
    assert not issubclass(AdapterError, ConfigError)


def test_truncated_file_without_checksums_names_the_file(saved):
    (saved / CHECKSUMS_NAME).unlink()
    path = saved / TRAINABLE
    path.write_bytes(path.read_bytes()[:50])
    with pytest.raises(AdapterError, match=rf"{path}: not a readable safetensors file"):
        TSEmbedModel.from_pretrained(saved)


@pytest.mark.parametrize("edited", ["tsembed_config.json", "adapters/moe_lora_config.json"])
def test_model_and_adapter_configs_must_agree(saved, edited):
    path = saved / edited
    data = json.loads(path.read_text())
    moe = data["moe"] if "moe" in data else data["config"]
    moe["num_experts"] = 8
    path.write_text(json.dumps(data))
    with pytest.raises(ConfigError, match=r"tsembed_config.json \(moe\) and .*moe_lora_config.json \(config\) "
                                          r"disagree: num_experts: [48] vs [48]"):
        TSEmbedModel.from_pretrained(saved)


def test_adapters_beside_a_model_config_without_them_are_an_error(saved):
    path = saved / "tsembed_config.json"
    path.write_text(json.dumps({**json.loads(path.read_text()), "moe": None}))
    with pytest.raises(ConfigError, match=r"no adapters \(moe: null\) but .*moe_lora_config.json holds some"):
        TSEmbedModel.from_pretrained(saved)


@pytest.mark.parametrize("content, message", [
    ("[]", "holds a JSON list, not an object"),
    ('"sha256"', "holds a JSON str, not an object"),
    ("garbage{", "not valid JSON"),
    (b"\xff\xfe{}", "not valid JSON"),
    ('{"format": "tsembed-checksums", "sha256": []}', "expected {'format'"),
    ('{"format": "tsembed-checksums", "sha256": {"adapters/moe_lora.safetensors": 5}}', "not a 64-digit hex"),
])
def test_a_garbled_checksums_file_is_a_clear_error(saved, content, message):
    """D10: `[]` used to raise AttributeError ('list' object has no attribute 'get')."""
    path = saved / CHECKSUMS_NAME
    path.write_bytes(content if isinstance(content, bytes) else content.encode())
    with pytest.raises(AdapterError, match=rf"{path}: .*{re.escape(message)}"):
        TSEmbedModel.from_pretrained(saved)

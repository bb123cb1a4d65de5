"""`tsembed export --format sentence-transformers`: the real offline default (all-MiniLM-L6-v2) with a merged
expert, loaded by SentenceTransformer offline, gives tsembed's own vectors (cosine >= 0.9999)."""

from __future__ import annotations

import numpy as np
import pytest
import torch

from tsembed import Encoder
from tsembed.backbones.minilm_effnet import MINILM_TARGET_MODULES
from tsembed.cli import main
from tsembed.errors import ConfigError
from tsembed.inference.export import export_merged_expert
from tsembed.inference.export_st import export_sentence_transformers, instruction_prompt
from tsembed.model import ModelConfig, TSEmbedModel
from tsembed.moe import MoELoRAConfig, adapter_layers

from .conftest import build_model

st = pytest.importorskip("sentence_transformers")

EXPERT = 1
QUERY_INSTRUCTION = "Represent this sentence for searching relevant passages:"
TEXTS = [
    "A red apple on a wooden table.",
    "how many dogs are in the picture?",
    "The quick brown fox jumps over the lazy dog",
    "Paris is the capital of France.",
    "naïve café résumé — déjà vu",
    "東京は日本の首都です。",
    "🙂 grinning face with smiling eyes 🍎",
    "select the region showing a red heart",
    "x",
    "1234567890 3.14159 2.71828",
    "MIXED case Text With CAPITALS and lowercase",
    "Photosynthesis converts light energy into chemical energy stored in glucose.",
    "what colour is the background?",
    "a cat, a dog, and a bird sat on the fence; none of them moved.",
    "   leading and trailing spaces   ",
    "newline\nseparated\ttabbed text",
    "dark skin tone thumbs up",
    "C'est la vie! ¿Qué pasa? Was ist das?",
    "word " * 300,  # far past max_length: both truncate from the right at the same token
    "the same with dark skin tone",
]


@pytest.fixture(scope="module")
def minilm_model_dir(tmp_path_factory) -> str:
    """The real default backbone with 3 random-but-non-zero experts (+1 shared), saved."""
    torch.manual_seed(0)
    config = ModelConfig(
        backbone={"kind": "minilm-effnet", "disk_cache": False},
        moe=MoELoRAConfig(target_modules=MINILM_TARGET_MODULES, num_experts=3, rank=4, top_k=1, level="sequence",
                          num_shared_experts=1),
        query_instruction=QUERY_INSTRUCTION,
    )
    model = TSEmbedModel.from_config(config)
    with torch.no_grad():
        for layer in adapter_layers(model.backbone).values():
            layer.lora_B.normal_(0.0, 0.05)  # B starts at zero: make every expert change the output
    return str(model.save_pretrained(tmp_path_factory.mktemp("minilm") / "model"))


def _cosines(a: np.ndarray, b: np.ndarray) -> np.ndarray:
    a = a / np.linalg.norm(a, axis=1, keepdims=True)
    b = b / np.linalg.norm(b, axis=1, keepdims=True)
    return (a * b).sum(axis=1)


def test_sentence_transformers_export_matches_tsembed(minilm_model_dir, tmp_path):
    out = tmp_path / "st"
    assert main(["export", "--model", minilm_model_dir, "--expert", str(EXPERT), "--format",
                 "sentence-transformers", "--out", str(out)]) == 0
    merged = Encoder.from_pretrained(export_merged_expert(minilm_model_dir, tmp_path / "merged", EXPERT))
    model = st.SentenceTransformer(str(out), device="cpu", local_files_only=True)

    plain = _cosines(model.encode(TEXTS, batch_size=7), merged.encode(TEXTS, batch_size=5))
    queries = _cosines(model.encode(TEXTS, prompt_name="query"), merged.encode_query(TEXTS))
    print(f"min cosine: plain {plain.min():.9f}, query prompt {queries.min():.9f}")  # reported in the PR
    assert plain.min() >= 0.9999 and queries.min() >= 0.9999
    other = Encoder.from_pretrained(export_merged_expert(minilm_model_dir, tmp_path / "other", EXPERT + 1))
    assert _cosines(model.encode(TEXTS), other.encode(TEXTS)).min() < 0.9999  # the expert really is merged in

    card = (out / "README.md").read_text()
    assert "library_name: sentence-transformers" in card and "Text only" in card
    assert model.prompts["query"] == QUERY_INSTRUCTION + " " and not model.prompts.get("document")


def test_export_refuses_backbones_sentence_transformers_cannot_represent(tmp_path, capsys):
    src = build_model().save_pretrained(tmp_path / "toy")
    with pytest.raises(ConfigError, match=r"backbone 'toy-image' cannot be exported.*image tokens.*--format tsembed"):
        export_sentence_transformers(src, tmp_path / "st", 0)
    assert main(["export", "--model", str(src), "--peft", "--format", "sentence-transformers", "--out",
                 str(tmp_path / "x")]) == 1
    assert "--format sentence-transformers exports one merged expert" in capsys.readouterr().err


def test_instruction_prompts_are_prefixes():
    assert instruction_prompt("Find:") == "Find: "
    assert instruction_prompt("Query: {text}") == "Query: "
    assert instruction_prompt("Is {text} a fruit?") is None


def test_peft_export_names_the_base_by_hub_id_or_relative_path(minilm_model_dir, tmp_path, tiny_bert_dir):
    import json
    from pathlib import Path

    from tsembed.inference.export import export_peft

    adapter = export_peft(minilm_model_dir, tmp_path / "peft", [EXPERT])[0]
    config = json.loads((adapter / "adapter_config.json").read_text())
    assert config["base_model_name_or_path"] == "sentence-transformers/all-MiniLM-L6-v2"  # not site-packages

    local = TSEmbedModel.from_config(ModelConfig(
        backbone={"kind": "minilm-effnet", "text_model": str(tiny_bert_dir), "image_size": 64,
                  "num_visual_tokens": 4, "max_length": 48, "disk_cache": False},
        moe=MoELoRAConfig(target_modules=MINILM_TARGET_MODULES, num_experts=2, rank=2, level="sequence")))
    adapter = export_peft(local.save_pretrained(tmp_path / "local"), tmp_path / "peft-local", [0])[0]
    base = json.loads((adapter / "adapter_config.json").read_text())["base_model_name_or_path"]
    assert not Path(base).is_absolute() and (adapter / base).resolve() == Path(tiny_bert_dir).resolve()
    assert (adapter.parent / "tsembed_export.json").is_file()
    assert not (Path(local.save_pretrained(tmp_path / "again")) / "adapters" / "adapter_config.json").exists()

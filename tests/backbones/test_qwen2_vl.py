"""Qwen2-VL / Qwen2.5-VL on tiny random checkpoints saved with save_pretrained and reloaded offline."""

import json
from pathlib import Path

import pytest
import torch
from PIL import Image

from tsembed.backbones import Qwen2VLBackbone, build_backbone, pool
from tsembed.errors import ConfigError, DataError
from tsembed.inputs import EmbedInput
from tsembed.moe import MoELoRAConfig, attach, collect_routing


@pytest.fixture(params=["qwen2_vl", "qwen2_5_vl"])
def qwen_dir(request: pytest.FixtureRequest) -> Path:
    return request.getfixturevalue(f"tiny_{request.param}_dir")


def embed(backbone: Qwen2VLBackbone, inputs: list[EmbedInput]) -> torch.Tensor:
    with torch.no_grad():
        out = backbone(**backbone.prepare(inputs))
    return pool(out.hidden_states, out.attention_mask, backbone.default_pooling)


def test_placeholder_becomes_vision_tokens(tiny_qwen2_vl_dir, backbone_test_images) -> None:
    b = Qwen2VLBackbone(str(tiny_qwen2_vl_dir))
    wide = Image.new("RGB", (200, 90), (10, 200, 30))
    prepared = b.prepare([EmbedInput("Which fruit? <|image_1|> Answer:", wide), EmbedInput("plain text")])
    grid = prepared["image_grid_thw"]
    pads = int(grid.prod()) // 4  # merge_size 2 → 2×2 patches per token
    tok = b.tokenizer

    def words(text: str) -> list[int]:
        return tok(text, add_special_tokens=False)["input_ids"]

    prefix, suffix = words("<|im_start|>user\n"), words("<|im_end|>\n<|im_start|>assistant\n<|endoftext|>")
    row = prepared["input_ids"][0][prepared["attention_mask"][0].bool()].tolist()
    image = [b.vision_start_id, *[b.image_pad_id] * pads, b.vision_end_id]
    assert row == [*prefix, *words("Which fruit? "), *image, *words(" Answer:"), *suffix]
    assert prepared["mm_token_type_ids"].sum() == pads
    assert prepared["pixel_values"].shape[0] == int(grid.prod())
    assert b.image_token == "<|vision_start|><|image_pad|><|vision_end|>"


def test_embeddings_with_moe_lora_attached(qwen_dir, backbone_test_images) -> None:
    b = Qwen2VLBackbone(str(qwen_dir))
    assert b.default_pooling == "last"
    inputs = [
        EmbedInput("a red apple"),
        EmbedInput(image=backbone_test_images[0]),
        EmbedInput(
            "Represent the given image with the following question: <|image_1|> what is it?", Image.new("RGB", (64, 64))
        ),
    ]
    before = embed(b, inputs)
    summary = attach(b, MoELoRAConfig(target_modules=b.default_target_modules, num_experts=4, rank=2))
    assert summary.num_modules == 2 * 7  # q, k, v, o, gate, up, down in each of 2 layers
    torch.testing.assert_close(embed(b, inputs), before)  # zero-initialised B: the base model at step 0
    out = b(**b.prepare(inputs))
    emb = pool(out.hidden_states, out.attention_mask, "last")
    assert emb.shape == (3, 64) and torch.isfinite(emb).all()
    assert collect_routing(b).signature.shape == (3, 14 * 4)
    emb.sum().backward()
    assert all(p.grad is not None for n, p in b.named_parameters() if n.endswith("lora_A"))


def test_right_padding_keeps_each_embedding_batch_independent(tiny_qwen2_vl_dir, backbone_test_images) -> None:
    b = Qwen2VLBackbone(str(tiny_qwen2_vl_dir))
    short = EmbedInput("cat")
    long = EmbedInput("a photo of a dog on the left of a car <|image_1|> what is it", backbone_test_images[2])
    together = embed(b, [short, long])
    torch.testing.assert_close(together[0], embed(b, [short])[0], atol=1e-5, rtol=1e-4)
    torch.testing.assert_close(together[1], embed(b, [long])[0], atol=1e-5, rtol=1e-4)


def test_truncation_shortens_text_not_image(tiny_qwen2_vl_dir) -> None:
    b = Qwen2VLBackbone(str(tiny_qwen2_vl_dir), max_length=40)
    prepared = b.prepare([EmbedInput("word " * 100 + "<|image_1|>" + " end" * 50, Image.new("RGB", (56, 56)))])
    ids = prepared["input_ids"][0]
    assert ids.shape[0] == 40 and int((ids == b.image_pad_id).sum()) == 4
    assert ids[-1].item() == b.suffix_ids[-1]  # the pooled <|endoftext|> survives
    with pytest.raises(DataError, match="input 0: the prompt and the image's"):
        Qwen2VLBackbone(str(tiny_qwen2_vl_dir), max_length=12).prepare([EmbedInput(image=Image.new("RGB", (112, 112)))])


def test_config_roundtrip_and_template(tiny_qwen2_5_vl_dir) -> None:
    b = Qwen2VLBackbone(str(tiny_qwen2_5_vl_dir), prompt_template="{text}<|endoftext|>", max_pixels=56 * 56)
    config = json.loads(json.dumps(b.config()))
    rebuilt = build_backbone(config)
    assert isinstance(rebuilt, Qwen2VLBackbone) and rebuilt.config() == b.config()
    prepared = rebuilt.prepare([EmbedInput(image=Image.new("RGB", (112, 112)))])
    assert prepared["image_grid_thw"].tolist() == [[1, 4, 4]]  # max_pixels override reached the processor
    assert prepared["input_ids"][0].tolist()[-1] == rebuilt.tokenizer.convert_tokens_to_ids("<|endoftext|>")


def test_bad_configs(tiny_qwen2_vl_dir, tiny_clip_dir, tmp_path) -> None:
    with pytest.raises(ConfigError, match="holds a 'clip' model"):
        Qwen2VLBackbone(str(tiny_clip_dir))
    with pytest.raises(ConfigError, match="not a local directory"):
        Qwen2VLBackbone(str(tmp_path / "missing"))
    with pytest.raises(ConfigError, match="exactly once"):
        Qwen2VLBackbone(str(tiny_qwen2_vl_dir), prompt_template="no slot")
    with pytest.raises(ConfigError, match="dtype must be one of"):
        Qwen2VLBackbone(str(tiny_qwen2_vl_dir), dtype="float64")

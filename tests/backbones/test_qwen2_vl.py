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


@pytest.mark.parametrize("level", ["sequence", "token"])
def test_task_hints_with_gradient_checkpointing_equal_without(tiny_qwen2_vl_dir, backbone_test_images, level) -> None:
    """The backward's recompute sees the forward's hints and masks (issue 23 §5: the hints were cleared before
    it, a CheckpointError), also when several forwards (queries, then targets) precede one backward."""
    from tsembed.model import ModelConfig, TSEmbedModel
    from tsembed.training.eans import EANSConfig
    from tsembed.training.objective import ContrastiveObjective, LossConfig
    from tsembed.training.step import ContrastiveBatch, contrastive_step

    hints = ("ret", "cls")
    queries = [EmbedInput(text="a picture of a cat", task="ret"), EmbedInput(image=backbone_test_images[0], task="cls"),
               EmbedInput(text="the sun")]
    targets = [EmbedInput(image=backbone_test_images[1], task="ret"), EmbedInput(text="cat", task="cls"),
               EmbedInput(text="a long sentence about a small tree on a hill", task="ret")]
    batch = ContrastiveBatch(queries, targets, torch.arange(3), torch.arange(3), torch.full((3,), -1))
    grads = []
    for checkpointing in (False, True):
        backbone = Qwen2VLBackbone(str(tiny_qwen2_vl_dir), gradient_checkpointing=checkpointing)
        moe = MoELoRAConfig(target_modules=backbone.default_target_modules, num_experts=2, rank=2, level=level,
                            task_hints=list(hints), task_hint_init=1.0)
        torch.manual_seed(0)
        model = TSEmbedModel(backbone, ModelConfig(backbone=backbone.config(), moe=moe)).train()
        objective = ContrastiveObjective(LossConfig(tau=0.1), EANSConfig(mode="off"))
        torch.manual_seed(1)
        contrastive_step(model, objective, batch, eans_active=False)  # queries and targets, then one backward
        grads.append({n: p.grad.clone() for n, p in model.named_parameters() if p.grad is not None})
    assert set(grads[0]) == set(grads[1]) and any("router.hint" in n for n in grads[0])
    for name, value in grads[0].items():
        torch.testing.assert_close(grads[1][name], value, rtol=1e-4, atol=1e-6, msg=name)


def test_run_gradient_checkpointing_reaches_a_backbone_built_without_it(tiny_qwen2_vl_dir) -> None:
    """``run.gradient_checkpointing`` calls ``enable_gradient_checkpointing`` on a built backbone: the decoder
    must leave the eval pin it had then, or HF never checkpoints (it checkpoints in training mode only)."""
    backbone = Qwen2VLBackbone(str(tiny_qwen2_vl_dir))
    backbone.enable_gradient_checkpointing()
    backbone.train()
    assert backbone.model.is_gradient_checkpointing
    visual = {id(m) for m in backbone.model.visual.modules()}
    layers = [m for m in backbone.model.modules()
              if getattr(m, "gradient_checkpointing", False) and id(m) not in visual]
    assert layers and all(m.training for m in layers)
    assert not backbone.model.visual.training  # the frozen vision tower stays in eval


def test_large_images_shrink_so_the_question_is_kept_whole(tiny_qwen2_vl_dir) -> None:
    """A tall page and a DocVQA-sized page with a 30-token question: the images give up tokens, the question
    none (issue 23 §4; the tiny processor allows 4 to 16 image tokens). It used to cut the question instead."""
    question = "what is the total amount due on this invoice page?"
    probe = Qwen2VLBackbone(str(tiny_qwen2_vl_dir))
    q_tokens = len(probe._encode([" " + question])[0])
    assert q_tokens >= 30
    # room for the prompt, <|vision_start|> / <|vision_end|>, the question, and 8 image tokens
    max_length = len(probe.prefix_ids) + len(probe.suffix_ids) + 2 + q_tokens + 8
    b = Qwen2VLBackbone(str(tiny_qwen2_vl_dir), max_length=max_length)
    inputs = [EmbedInput("<|image_1|> " + question, Image.new("RGB", (1000, 4000), "white")),
              EmbedInput("<|image_1|> " + question, Image.new("RGB", (1700, 2200), "gray")),
              EmbedInput("<|image_1|> short", Image.new("RGB", (1700, 2200), "gray"))]
    prepared = b.prepare(inputs)
    ids = prepared["input_ids"]
    assert ids.shape[1] <= max_length
    pads = (ids == b.image_pad_id).sum(dim=1).tolist()
    full = int((probe.prepare(inputs[2:])["input_ids"] == b.image_pad_id).sum())
    assert 4 <= pads[0] <= 8 and 4 <= pads[1] <= 8 and pads[2] == full > 8  # a short text leaves room for all
    for row in ids[:2].tolist():
        text = b.tokenizer.decode([t for t in row if t != b.image_pad_id])
        assert question in text  # every question token kept
    assert prepared["image_grid_thw"].prod(-1).div(4).tolist() == pads
    with torch.no_grad():
        out = b(**prepared)
    assert torch.isfinite(out.hidden_states).all()


def test_gradcache_runs_the_frozen_vision_tower_once_per_chunk(tiny_qwen2_vl_dir, backbone_test_images) -> None:
    """GradCache's second pass reuses the first pass's image features (issue 23 §7): same gradients as the
    full batch, and one vision forward per chunk with images instead of two."""
    from tsembed.model import ModelConfig, TSEmbedModel
    from tsembed.training.eans import EANSConfig
    from tsembed.training.objective import ContrastiveObjective, LossConfig
    from tsembed.training.step import ContrastiveBatch, contrastive_step

    queries = [EmbedInput(image=backbone_test_images[i]) for i in range(4)]
    targets = [EmbedInput(text=w) for w in ("smile", "heart", "star", "tree")]
    batch = ContrastiveBatch(queries, targets, torch.arange(4), torch.arange(4), torch.full((4,), -1))
    grads, calls = [], []
    for chunk in (None, 2):
        backbone = Qwen2VLBackbone(str(tiny_qwen2_vl_dir))
        moe = MoELoRAConfig(target_modules=backbone.default_target_modules, num_experts=2, rank=2)
        torch.manual_seed(0)
        model = TSEmbedModel(backbone, ModelConfig(backbone=backbone.config(), moe=moe)).train()
        count = [0]
        backbone.model.visual.register_forward_hook(lambda *_, c=count: c.__setitem__(0, c[0] + 1))
        objective = ContrastiveObjective(LossConfig(tau=0.1), EANSConfig(mode="off"))
        contrastive_step(model, objective, batch, eans_active=False, chunk_size=chunk)
        grads.append({n: p.grad.clone() for n, p in model.named_parameters() if p.grad is not None})
        calls.append(count[0])
    assert calls == [1, 2]  # full batch: one forward of the query chunk; GradCache: 2 image chunks, once each
    assert backbone._vision_cache is None  # nothing kept after the step
    for name, value in grads[0].items():
        torch.testing.assert_close(grads[1][name], value, rtol=1e-4, atol=1e-6, msg=name)


def test_auto_attention_is_sdpa_without_flash_attention(tiny_qwen2_vl_dir) -> None:
    b = Qwen2VLBackbone(str(tiny_qwen2_vl_dir), attn_implementation="auto")
    assert b.model.config._attn_implementation == "sdpa"  # no CUDA / flash_attn here
    assert b.config()["attn_implementation"] == "auto"  # saved as asked: another machine resolves it again

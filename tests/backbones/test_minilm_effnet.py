"""The default early-fusion backbone, on a tiny BERT text side (real frozen EfficientNet-Lite0)."""

import contextlib
import copy
import json
from pathlib import Path

import pytest
import torch
from PIL import Image

from tsembed.backbones import BACKBONES, MiniLMEfficientNetBackbone, VisionCacheWarning, build_backbone, pool
from tsembed.backbones.testing import build_tiny_minilm_effnet
from tsembed.errors import ConfigError, DataError
from tsembed.inputs import EmbedInput
from tsembed.moe import MoELoRAConfig, attach, collect_routing

T = 4  # visual tokens of the tiny configuration


def embed(backbone: MiniLMEfficientNetBackbone, inputs: list[EmbedInput]) -> torch.Tensor:
    with torch.no_grad():
        out = backbone(**backbone.prepare(inputs))
    return pool(out.hidden_states, out.attention_mask, backbone.default_pooling)


def captured_embeddings(backbone: MiniLMEfficientNetBackbone, prepared: dict) -> torch.Tensor:
    """The inputs_embeds the text encoder receives (after visual tokens are placed)."""
    seen = {}

    def grab(module: torch.nn.Module, args: tuple, kwargs: dict) -> None:
        seen["embeds"] = kwargs["inputs_embeds"]

    handle = backbone.text.register_forward_pre_hook(grab, with_kwargs=True)
    with torch.no_grad():
        backbone(**prepared)
    handle.remove()
    return seen["embeds"]


def test_placeholder_handling_in_a_mixed_batch(tiny_default_backbone, backbone_test_images) -> None:
    b = tiny_default_backbone
    img = backbone_test_images[0]
    prepared = b.prepare(
        [
            EmbedInput("a cat"),  # text only
            EmbedInput(image=img),  # image only
            EmbedInput("what <|image_1|> colour", img),  # image in the middle
            EmbedInput("represent the given image", img),  # no placeholder: image first
        ]
    )
    tok = b.tokenizer
    cls, sep, slot = tok.cls_token_id, tok.sep_token_id, b.image_token_id
    ids = prepared["input_ids"]
    rows = [r[m.bool()].tolist() for r, m in zip(ids, prepared["attention_mask"], strict=True)]

    def words(text: str) -> list[int]:
        return tok(text, add_special_tokens=False)["input_ids"]

    assert rows[0] == [cls, *words("a cat"), sep]
    assert rows[1] == [cls, *[slot] * T, sep]
    assert rows[2] == [cls, *words("what"), *[slot] * T, *words("colour"), sep]
    assert rows[3] == [cls, *[slot] * T, *words("represent the given image"), sep]
    assert torch.equal(prepared["token_type_ids"], (ids == slot).long())  # segment-B marks visual tokens
    assert prepared["image_digest"].shape == (3, 32) and prepared["pixel_values"].shape == (3, 3, 64, 64)


def test_visual_tokens_land_at_the_placeholder(tiny_default_backbone, backbone_test_images) -> None:
    b = tiny_default_backbone
    imgs = backbone_test_images
    prepared = b.prepare([EmbedInput("what <|image_1|> colour", imgs[1]), EmbedInput("x"), EmbedInput(image=imgs[2])])
    embeds = captured_embeddings(b, prepared)
    features = b.encode_images(
        prepared["image_features"], prepared["image_cached"], prepared["image_digest"], prepared["pixel_values"]
    )
    with torch.no_grad():
        tokens = b.projector(features)  # [2, T, D]
        words = b.text.embeddings.word_embeddings(prepared["input_ids"])
    slots = prepared["input_ids"] == b.image_token_id
    start = int(slots[0].nonzero()[0])
    assert start == 1 + len(b.tokenizer("what", add_special_tokens=False)["input_ids"])
    assert torch.equal(embeds[0, start : start + T], tokens[0])
    assert torch.equal(embeds[2, 1 : 1 + T], tokens[1])
    assert torch.equal(embeds[~slots], words[~slots])  # text positions keep their word embeddings


def test_truncation_never_cuts_visual_tokens(tiny_bert_dir, backbone_test_images) -> None:
    b = build_tiny_minilm_effnet(tiny_bert_dir, max_length=12)
    long_text = "the " * 50
    prepared = b.prepare([EmbedInput(f"{long_text}<|image_1|>{long_text}", backbone_test_images[0])])
    ids = prepared["input_ids"][0]
    assert ids.shape[0] == 12 and int((ids == b.image_token_id).sum()) == T
    assert ids[-1].item() == b.tokenizer.sep_token_id
    assert torch.isfinite(embed(b, [EmbedInput(f"{long_text}<|image_1|>", backbone_test_images[0])])).all()


def test_cache_cold_then_warm_gives_identical_embeddings(tiny_bert_dir, backbone_test_images, tmp_path) -> None:
    inputs = [EmbedInput("a <|image_1|>", p) for p in backbone_test_images[:3]]
    cold = build_tiny_minilm_effnet(tiny_bert_dir, cache_dir=str(tmp_path), disk_cache=True)
    assert not cold.prepare(inputs)["image_cached"].any()
    first = embed(cold, inputs)
    assert cold.cache.stats.writes == 3
    warm_prepared = cold.prepare(inputs)
    assert warm_prepared["image_cached"].all() and warm_prepared["pixel_values"].shape[0] == 0  # nothing decoded
    assert torch.equal(embed(cold, inputs), first)
    restarted = build_tiny_minilm_effnet(tiny_bert_dir, cache_dir=str(tmp_path), disk_cache=True)
    restarted.load_state_dict(cold.state_dict())
    assert torch.equal(embed(restarted, inputs), first)
    assert restarted.cache.stats.disk_hits == 3 and restarted.cache.stats.misses == 0


def test_corrupted_cache_entry_is_recomputed(tiny_bert_dir, backbone_test_images, tmp_path) -> None:
    inputs = [EmbedInput(image=backbone_test_images[4])]
    b = build_tiny_minilm_effnet(tiny_bert_dir, cache_dir=str(tmp_path), disk_cache=True)
    expected = embed(b, inputs)
    digest = b.prepare(inputs)["image_digest"][0]
    path = b.cache.path_for(bytes(digest.tolist()).hex())
    path.write_bytes(path.read_bytes()[:-100])  # truncated entry
    fresh = copy.deepcopy(b)
    fresh.cache.clear_memory()
    with pytest.warns(VisionCacheWarning, match="corrupted"):
        prepared = fresh.prepare(inputs)
    assert not prepared["image_cached"].any()
    with torch.no_grad():
        out = fresh(**prepared)
    assert torch.equal(pool(out.hidden_states, out.attention_mask, "mean"), expected)
    assert path.stat().st_size > 100  # rewritten


def test_same_image_as_path_or_pil_shares_features(tiny_default_backbone, backbone_test_images) -> None:
    b = tiny_default_backbone
    path = backbone_test_images[3]
    from_path, from_pil = embed(b, [EmbedInput(image=path)]), embed(b, [EmbedInput(image=Image.open(path))])
    torch.testing.assert_close(from_path, from_pil)


def test_only_projector_trains_and_frozen_parts_stay_in_eval(tiny_default_backbone) -> None:
    b = tiny_default_backbone
    trainable = {n.split(".")[0] for n, p in b.named_parameters() if p.requires_grad}
    assert trainable == {"projector"}
    b.train()
    assert b.projector.training and not b.text.training and not b.vision.training
    assert not any(m.training for m in b.text.modules()) and not any(m.training for m in b.vision.modules())
    summary = attach(b, MoELoRAConfig(target_modules=b.default_target_modules, num_experts=4, rank=2))
    assert summary.num_modules == 2 * 6  # q, k, v, attention output, intermediate, output per layer
    b.unfreeze_trainable_modules()
    names = {n for n, p in b.named_parameters() if p.requires_grad}
    assert names == {n for n in names if n.startswith("projector.") or ".lora_" in n or ".router." in n}
    assert any(n.startswith("projector.") for n in names)
    b.train()
    assert all(m.training for n, m in b.named_modules() if type(m).__name__ == "MoELoRALinear")
    assert set(b.trainable_state_dict()) == {f"projector.{k}" for k in b.projector.state_dict()}


def test_moe_lora_attached_forward_backward_and_routing(tiny_default_backbone, backbone_test_images) -> None:
    b = tiny_default_backbone
    inputs = [EmbedInput("a dog"), EmbedInput("what <|image_1|> colour", backbone_test_images[2])]
    before = embed(b, inputs)
    attach(b, MoELoRAConfig(target_modules=b.default_target_modules, num_experts=4, rank=2))
    b.unfreeze_trainable_modules()
    torch.testing.assert_close(embed(b, inputs), before)  # B = 0 at init: exactly the base model
    prepared = b.prepare(inputs)
    out = b(**prepared)
    routing = collect_routing(b)
    assert routing.signature.shape == (2, 12 * 4)
    pool(out.hidden_states, out.attention_mask, "mean").sum().backward()
    assert b.projector.proj[0].weight.grad is not None
    assert all(p.grad is not None for n, p in b.named_parameters() if ".router." in n)


def test_text_only_batch_keeps_projector_in_graph(tiny_default_backbone) -> None:
    b = tiny_default_backbone
    out = b(**b.prepare([EmbedInput("only text")]))
    out.hidden_states.sum().backward()
    assert all(p.grad is not None for p in b.projector.parameters())  # DDP needs every trainable param used


def test_config_roundtrip(tiny_default_backbone) -> None:
    config = json.loads(json.dumps(tiny_default_backbone.config()))
    assert config["kind"] == "minilm-effnet" and BACKBONES["minilm-effnet"] is MiniLMEfficientNetBackbone
    rebuilt = build_backbone(config)
    assert rebuilt.config() == tiny_default_backbone.config()
    rebuilt.load_state_dict(tiny_default_backbone.state_dict())
    inputs = [EmbedInput("hello world")]
    assert torch.equal(embed(rebuilt, inputs), embed(tiny_default_backbone, inputs))


def test_bad_options_and_inputs(tiny_bert_dir, tmp_path: Path) -> None:
    with pytest.raises(ConfigError, match="square"):
        build_tiny_minilm_effnet(tiny_bert_dir, num_visual_tokens=5)
    with pytest.raises(ConfigError, match="raise image_size"):
        build_tiny_minilm_effnet(tiny_bert_dir, num_visual_tokens=9)
    with pytest.raises(ConfigError, match="not a local directory"):
        MiniLMEfficientNetBackbone(text_model=str(tmp_path / "nope"))
    b = build_tiny_minilm_effnet(tiny_bert_dir)
    with pytest.raises(DataError, match=r"input 1: image file '.*missing.png' not found"):
        b.prepare([EmbedInput("ok"), EmbedInput(image=tmp_path / "missing.png")])
    (tmp_path / "bad.png").write_bytes(b"not a png")
    with pytest.raises(DataError, match="cannot be read as an image"):
        b.prepare([EmbedInput(image=tmp_path / "bad.png")])


@pytest.mark.slow  # the full-size pretrained all-MiniLM-L6-v2
def test_real_default_backbone_loads_offline_and_matches_minilm(default_backbone, backbone_test_images) -> None:
    """all-MiniLM-L6-v2 + EfficientNet-Lite0 from the installed packages; text embeddings are MiniLM's own."""
    b = default_backbone
    assert (b.hidden_size, b.num_visual_tokens, b.image_size) == (384, 16, 128)
    texts = ["A man is eating food.", "A cheetah is running behind its prey."]
    ours = embed(b, [EmbedInput(t) for t in texts])
    tokens = b.tokenizer(texts, padding=True, return_tensors="pt")
    with torch.no_grad():
        plain = b.text(**tokens).last_hidden_state
    torch.testing.assert_close(ours, pool(plain, tokens["attention_mask"], "mean"))  # inputs_embeds path is exact
    mixed = embed(b, [EmbedInput("<|image_1|> Represent the given image.", backbone_test_images[0])])
    assert mixed.shape == (1, 384) and torch.isfinite(mixed).all()
    summary = attach(b, MoELoRAConfig(target_modules=b.default_target_modules, num_experts=4, rank=8))
    assert summary.num_modules == 6 * 6
    torch.testing.assert_close(embed(b, [EmbedInput(texts[0])]), ours[:1])


def test_text_router_ignores_the_picture(tiny_default_backbone, backbone_test_images) -> None:
    """moe.router_input='text': an image query routes on its instruction, so the first adapted layer (whose
    input is the token embeddings) routes two pictures under one instruction identically."""
    b = tiny_default_backbone
    attach(b, MoELoRAConfig(target_modules=b.default_target_modules, num_experts=4, rank=2, level="sequence",
                            router_input="text", router_init_std=1.0))
    inputs = [EmbedInput("<|image_1|> find the same emoji", backbone_test_images[0]),
              EmbedInput("<|image_1|> find the same emoji", backbone_test_images[3]),
              EmbedInput("<|image_1|> find any emoji of the same colour", backbone_test_images[0])]
    with torch.no_grad():
        b(**b.prepare(inputs))
    first = next(iter(collect_routing(b).layer_probs.values()))  # [3, E]
    torch.testing.assert_close(first[0], first[1])
    assert not torch.allclose(first[0], first[2])


def test_frozen_projector_stays_frozen_and_is_still_saved(tiny_default_backbone) -> None:
    cfg = {**tiny_default_backbone.config(), "train_projector": False}
    b = build_backbone(cfg)
    assert not any(p.requires_grad for p in b.parameters())
    attach(b, MoELoRAConfig(target_modules=b.default_target_modules, num_experts=2, rank=2))
    b.unfreeze_trainable_modules()
    names = {n for n, p in b.named_parameters() if p.requires_grad}
    assert names and all(".lora_" in n or ".router." in n for n in names)
    assert set(b.trainable_state_dict()) == {f"projector.{k}" for k in b.projector.state_dict()}  # saved anyway
    assert build_backbone(b.config()).config()["train_projector"] is False


def test_gradcache_runs_the_frozen_cnn_once_per_image_even_past_the_memory_lru(tiny_bert_dir,
                                                                               backbone_test_images) -> None:
    """GradCache's second pass reuses the first pass's CNN features (issue 23 §7) when a step holds more images
    than the memory LRU (2 entries here, 8 images): the CNN runs once per image chunk, not twice, and the loss,
    signatures and gradients are exactly those of the path that reran it (and equal the full batch's)."""
    from unittest import mock

    from tsembed.model import ModelConfig, TSEmbedModel
    from tsembed.moe import MoELoRALinear
    from tsembed.training.eans import EANSConfig
    from tsembed.training.objective import ContrastiveObjective, LossConfig
    from tsembed.training.step import ContrastiveBatch, contrastive_step

    torch.manual_seed(0)
    backbone = build_tiny_minilm_effnet(tiny_bert_dir, memory_cache_items=2)
    moe = MoELoRAConfig(target_modules=backbone.default_target_modules, num_experts=2, rank=2)
    base = TSEmbedModel(backbone, ModelConfig(backbone=backbone.config(), moe=moe)).train()
    for layer in base.modules():
        if isinstance(layer, MoELoRALinear):
            torch.nn.init.normal_(layer.lora_B, std=0.05)
    queries = [EmbedInput(f"what is <|image_1|> {w}", backbone_test_images[i])
               for i, w in enumerate(("here", "there", "now", "then"))]
    targets = [EmbedInput(f"<|image_1|> {w}", backbone_test_images[4 + i])
               for i, w in enumerate(("smile", "heart", "star", "tree"))]
    batch = ContrastiveBatch(queries, targets, torch.arange(4), torch.arange(4), torch.full((4,), -1))
    results = {}
    for label, chunk, reuse in (("full", None, True), ("rerun", 2, False), ("reuse", 2, True)):
        model = copy.deepcopy(base)
        model.backbone.cache.clear_memory()
        calls = [0]
        model.backbone.vision.register_forward_hook(lambda *_, c=calls: c.__setitem__(0, c[0] + 1))
        objective = ContrastiveObjective(LossConfig(tau=0.1, load_balance_weight=0.1), EANSConfig(mode="off"))
        with mock.patch.object(MiniLMEfficientNetBackbone, "reuse_vision", None) if not reuse else \
                contextlib.nullcontext():
            out = contrastive_step(model, objective, batch, eans_active=False, chunk_size=chunk)
        grads = {n: p.grad.clone() for n, p in model.named_parameters() if p.grad is not None}
        results[label] = (out, grads, calls[0])
        assert model.backbone._step_features is None  # nothing kept after the step
    assert [results[k][2] for k in ("full", "rerun", "reuse")] == [2, 8, 4]
    (full, g_full, _), (rerun, g_rerun, _), (reuse, g_reuse, _) = results.values()
    assert reuse.loss == rerun.loss and reuse.load_balance == rerun.load_balance
    torch.testing.assert_close(reuse.query_signatures, rerun.query_signatures, rtol=0, atol=0)
    assert set(g_reuse) == set(g_rerun) == set(g_full) and any("projector" in n for n in g_reuse)
    for name, value in g_rerun.items():
        torch.testing.assert_close(g_reuse[name], value, rtol=1e-6, atol=1e-8, msg=name)
        torch.testing.assert_close(g_reuse[name], g_full[name], rtol=1e-4, atol=1e-6, msg=name)
    assert reuse.loss == pytest.approx(full.loss, rel=1e-5)

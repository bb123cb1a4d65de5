"""Qwen2-VL / Qwen2.5-VL as an embedding backbone (the TSEmbed paper's and MMEB's backbone family).

Loaded offline from a local directory through transformers (``AutoModel`` gives the bare
``Qwen2VLModel``/``Qwen2_5_VLModel``; a saved ``...ForConditionalGeneration`` checkpoint loads
without its LM head). Each input becomes ``prompt_template`` with ``{text}`` replaced by the input's
text, ``<|image_1|>`` replaced by ``<|vision_start|>`` + one ``<|image_pad|>`` per merged vision
patch + ``<|vision_end|>``. The default template is Qwen's chat format ending in ``<|endoftext|>``,
whose hidden state is the embedding (last-token pooling).

Ids are assembled here from the checkpoint's tokenizer and image processor instead of
``Qwen2VLProcessor.__call__``: the expansion rule is the processor's own (``grid_thw.prod() //
merge_size²`` pads per image), but this way truncation can shorten only the text and never cut an
image's tokens, and the processor's torchvision-only video component is not needed. An image whose tokens
would push its input past ``max_length`` is first downscaled to the tokens left after the whole text; only an
image already at the processor's minimum makes the text give way.
"""

from __future__ import annotations

import contextlib
import importlib.util
import math
from collections.abc import Iterator, Sequence
from typing import Any

import torch
from PIL import Image
from transformers import AutoImageProcessor, AutoModel, AutoTokenizer

from tsembed.backbones.base import Backbone, BackboneOutput
from tsembed.backbones.hf import (
    check_max_length,
    load_component,
    load_model,
    parse_dtype,
    pretrained_card_metadata,
    resolve_model_type,
)
from tsembed.backbones.images import load_image
from tsembed.backbones.placeholder import Segments, split_inputs
from tsembed.errors import ConfigError, DataError
from tsembed.inputs import EmbedInput
from tsembed.moe.routing import set_routing_mask

QWEN_CHAT_TEMPLATE = "<|im_start|>user\n{text}<|im_end|>\n<|im_start|>assistant\n<|endoftext|>"
QWEN_TARGET_MODULES = [
    r"model\.language_model\.layers\.\d+\.self_attn\.(q_proj|k_proj|v_proj|o_proj)",
    r"model\.language_model\.layers\.\d+\.mlp\.(gate_proj|up_proj|down_proj)",
]
SUPPORTED_MODEL_TYPES = ("qwen2_vl", "qwen2_5_vl")


def _attention(name: str, dtype: str) -> str:
    """``attn_implementation`` with ``"auto"`` resolved (see ``Qwen2VLBackbone``)."""
    if name != "auto":
        return name
    flash = importlib.util.find_spec("flash_attn") is not None and torch.cuda.is_available()
    return "flash_attention_2" if flash and dtype in ("bfloat16", "float16") else "sdpa"


def _shrunk(image: Any, factor: int, tokens: int) -> Any:
    """``image`` resized (aspect kept, sides multiples of ``factor``) to at most ``tokens`` merged patches."""
    width, height = image.size
    scale = math.sqrt(tokens * factor * factor / (width * height))
    w, h = max(1, math.floor(width * scale / factor)), max(1, math.floor(height * scale / factor))
    while w * h > tokens:  # flooring both sides keeps w·h ≤ tokens unless one side was clamped to 1
        if w >= h:
            w -= 1
        else:
            h -= 1
    return image.resize((max(w, 1) * factor, max(h, 1) * factor), Image.Resampling.BICUBIC)


class Qwen2VLBackbone(Backbone):
    """Qwen2-VL family decoder, last-token pooled (registry name ``qwen2-vl``).

    Args:
        path: local checkpoint directory (config, weights, tokenizer, image processor), or a Hub id found in
            the local Hugging Face cache (``tsembed.backbones.hf.resolve_pretrained``; never downloaded).
        max_length: tokens per input; text is truncated from the right, image tokens never.
        prompt_template: instruction format with one ``{text}`` slot.
        min_pixels, max_pixels: override the image processor's resize bounds (fewer pixels, fewer tokens).
        dtype: ``"float32"``, ``"bfloat16"`` or ``"float16"`` weights.
        attn_implementation: transformers attention backend (``"sdpa"``, ``"eager"``, ``"flash_attention_2"``,
            ...); ``"auto"``: flash-attention-2 when the ``flash_attn`` package is installed, CUDA is present and
            the weights are bf16 / fp16, else sdpa.
        gradient_checkpointing: recompute decoder layers in backward (large models on GPUs).
    """

    kind = "qwen2-vl"
    default_pooling = "last"
    image_token = "<|vision_start|><|image_pad|><|vision_end|>"

    def __init__(
        self,
        path: str,
        max_length: int = 1024,
        prompt_template: str = QWEN_CHAT_TEMPLATE,
        min_pixels: int | None = None,
        max_pixels: int | None = None,
        dtype: str = "float32",
        attn_implementation: str = "sdpa",
        gradient_checkpointing: bool = False,
    ) -> None:
        super().__init__()
        if prompt_template.count("{text}") != 1:
            raise ConfigError(f"prompt_template must contain '{{text}}' exactly once, got {prompt_template!r}")
        torch_dtype = parse_dtype(dtype)
        self._options: dict[str, Any] = {
            "path": str(path),
            "max_length": max_length,
            "prompt_template": prompt_template,
            "min_pixels": min_pixels,
            "max_pixels": max_pixels,
            "dtype": dtype,
            "attn_implementation": attn_implementation,
            "gradient_checkpointing": gradient_checkpointing,
        }
        directory, _ = resolve_model_type(path, "path", SUPPORTED_MODEL_TYPES, "qwen2-vl")
        self.model = load_model(
            AutoModel, directory, "path", dtype=torch_dtype, attn_implementation=_attention(attn_implementation, dtype)
        )
        self.tokenizer = load_component(AutoTokenizer, directory, "path")
        pixels = {k: v for k, v in (("min_pixels", min_pixels), ("max_pixels", max_pixels)) if v is not None}
        self.image_processor = load_component(AutoImageProcessor, directory, "path", **pixels)
        config = self.model.config
        check_max_length(max_length, getattr(config, "text_config", config), "the language model")
        self.hidden_size = int(config.text_config.hidden_size)
        self.default_target_modules = list(QWEN_TARGET_MODULES)
        self.max_length = max_length
        self.image_pad_id = int(config.image_token_id)
        self.vision_start_id, self.vision_end_id = int(config.vision_start_token_id), int(config.vision_end_token_id)
        if self.tokenizer.convert_tokens_to_ids("<|image_pad|>") != self.image_pad_id:
            raise ConfigError(
                f"path: tokenizer's <|image_pad|> id differs from config.image_token_id={self.image_pad_id}"
            )
        pad = self.tokenizer.pad_token_id
        self.pad_id = int(pad if pad is not None else config.text_config.pad_token_id or 0)
        prefix, suffix = prompt_template.split("{text}")
        self.prefix_ids = self._encode([prefix])[0]
        self.suffix_ids = self._encode([suffix])[0]
        self.freeze_pretrained()
        if gradient_checkpointing:
            self.enable_gradient_checkpointing()
        else:
            self.keep_in_eval([self.model])

    def enable_gradient_checkpointing(self) -> None:
        """Recompute the decoder layers in the backward (the backbone option, or ``run.gradient_checkpointing``).

        The recompute replays the routing state of its forward (``tsembed.moe.checkpoint_context``): task hints
        are cleared when a forward returns, and a full batch runs several forwards before its one backward.
        """
        from tsembed.moe import checkpoint_context

        visual = {id(m) for m in self.model.visual.modules()}  # the decoder must train for HF to checkpoint it
        self._always_eval = [m for m in self._always_eval if id(m) in visual]
        self.model.gradient_checkpointing_enable(
            gradient_checkpointing_kwargs={"use_reentrant": False, "context_fn": checkpoint_context(self)})
        # HF adds a hook (a local function) making the embeddings require grad, which only reentrant checkpointing
        # needs; it cannot be pickled, and DataLoader workers started by spawn / forkserver pickle the model
        if getattr(self.model, "_require_grads_hook", None) is not None:
            self.model.disable_input_require_grads()
        self.keep_in_eval([self.model.visual])  # checkpointing only runs in training mode

    def config(self) -> dict[str, Any]:
        return {"kind": self.kind, **self._options}

    def card_metadata(self) -> dict[str, Any]:
        return pretrained_card_metadata(self._options["path"], self.model.name_or_path)

    def _encode(self, texts: list[str]) -> list[list[int]]:
        if not texts:
            return []
        return self.tokenizer(texts, add_special_tokens=False, truncation=True, max_length=self.max_length)["input_ids"]

    @torch.no_grad()
    def prepare(self, inputs: Sequence[EmbedInput]) -> dict[str, torch.Tensor]:
        """Returns input_ids, attention_mask, mm_token_type_ids [B, L] (right padding), and when the
        batch has images, pixel_values [patches, C·T·P·P] and image_grid_thw [N, 3]."""
        segments = split_inputs(inputs)
        images = [load_image(seg.image, i) for i, seg in enumerate(segments) if seg.image is not None]
        batch: dict[str, torch.Tensor] = {}
        pads_per_image: list[int] = []
        encoded = self._encode([text for seg in segments for text in (seg.before, seg.after)])
        if images:
            vision = self.image_processor(images=images, return_tensors="pt")
            merge = int(self.image_processor.merge_size)
            pads_per_image = (vision["image_grid_thw"].prod(-1) // merge**2).tolist()
            fitted = self._fit_images(segments, encoded, images, pads_per_image)
            if fitted is not images:  # some image shrank to leave its text whole
                vision = self.image_processor(images=fitted, return_tensors="pt")
                pads_per_image = (vision["image_grid_thw"].prod(-1) // merge**2).tolist()
            batch["pixel_values"], batch["image_grid_thw"] = vision["pixel_values"], vision["image_grid_thw"]
        rows = self._token_rows(segments, pads_per_image, encoded)
        length = max(len(r) for r in rows)
        input_ids = torch.full((len(rows), length), self.pad_id, dtype=torch.long)
        attention_mask = torch.zeros((len(rows), length), dtype=torch.long)
        for i, row in enumerate(rows):
            input_ids[i, : len(row)] = torch.tensor(row)
            attention_mask[i, : len(row)] = 1
        batch["input_ids"], batch["attention_mask"] = input_ids, attention_mask
        batch["mm_token_type_ids"] = (input_ids == self.image_pad_id).int()  # 1 = image, as the processor marks it
        return batch

    def _fit_images(self, segments: list[Segments], encoded: list[list[int]], images: list, pads: list[int]) -> list:
        """``images`` with every image whose tokens would not leave room for its input's whole text within
        ``max_length`` downscaled (aspect kept) to the tokens that do (VLM2Vec cuts the text instead; a DocVQA
        page then leaves a question 2 tokens). The image keeps at least the processor's minimum; only when even
        that does not fit is the text cut (``_token_rows``). The same list when nothing needs to shrink."""
        factor = int(self.image_processor.patch_size) * int(self.image_processor.merge_size)
        fixed = len(self.prefix_ids) + len(self.suffix_ids) + 2  # + <|vision_start|> and <|vision_end|>
        out = list(images)
        index = 0
        for i, seg in enumerate(segments):
            if not seg.has_image:
                continue
            budget = self.max_length - fixed - len(encoded[2 * i]) - len(encoded[2 * i + 1])
            if pads[index] > budget >= 1:
                out[index] = _shrunk(images[index], factor, budget)
            index += 1
        return out if any(a is not b for a, b in zip(out, images, strict=True)) else images

    def _token_rows(self, segments: list[Segments], pads_per_image: list[int],
                    encoded: list[list[int]]) -> list[list[int]]:
        images = iter(pads_per_image)
        rows = []
        for i, seg in enumerate(segments):
            before, after = encoded[2 * i], encoded[2 * i + 1]
            image = (
                [self.vision_start_id, *[self.image_pad_id] * next(images), self.vision_end_id] if seg.has_image else []
            )
            budget = self.max_length - len(self.prefix_ids) - len(self.suffix_ids) - len(image)
            if budget < 0:
                raise DataError(
                    f"input {i}: the prompt and the image's {len(image)} tokens exceed max_length={self.max_length}; "
                    "raise max_length or lower max_pixels"
                )
            after = after[: max(budget - len(before), 0)]
            before = before[:budget]
            rows.append([*self.prefix_ids, *before, *image, *after, *self.suffix_ids])
        return rows

    def forward(  # type: ignore[override]
        self,
        input_ids: torch.Tensor,
        attention_mask: torch.Tensor,
        mm_token_type_ids: torch.Tensor,
        pixel_values: torch.Tensor | None = None,
        image_grid_thw: torch.Tensor | None = None,
    ) -> BackboneOutput:
        # image pads are already in the sequence; everything else is text (moe.router_input="text")
        set_routing_mask(self, attention_mask, text_mask=mm_token_type_ids == 0)
        encoded, pixel_values = self._kept_vision(pixel_values, image_grid_thw)
        out = self.model(
            input_ids=input_ids,
            attention_mask=attention_mask,
            mm_token_type_ids=mm_token_type_ids,
            pixel_values=pixel_values,
            image_grid_thw=image_grid_thw,
            mm_encoder_outputs=encoded,
            use_cache=False,
        )
        return BackboneOutput(hidden_states=out.last_hidden_state, attention_mask=attention_mask)

    @torch.compiler.disable  # the step's feature store stays eager under run.compile
    def _kept_vision(self, pixel_values: torch.Tensor | None,
                     image_grid_thw: torch.Tensor | None) -> tuple[dict | None, torch.Tensor | None]:
        """Inside ``reuse_vision``: (the image features, None), computed on the first sight of ``pixel_values``;
        else (None, ``pixel_values``) for the model's own tower."""
        cache = getattr(self, "_vision_cache", None)
        if cache is None or pixel_values is None:
            return None, pixel_values
        hit = cache.get(id(pixel_values))
        if hit is None or hit[0] is not pixel_values:
            with torch.no_grad():  # the tower is frozen: no gradient reaches or leaves it
                hit = cache[id(pixel_values)] = (
                    pixel_values, self.model.get_image_features(pixel_values, image_grid_thw, return_dict=True))
        return {"image": hit[1]}, None

    @contextlib.contextmanager
    def reuse_vision(self) -> Iterator[None]:
        """Within it, the vision tower runs once per ``pixel_values`` tensor: GradCache's second pass re-embeds
        each chunk with a graph, but the frozen tower's output is the same (about a quarter of an image input's
        FLOPs). The features are kept until the block ends (one step's images). A no-op when any vision weight
        trains."""
        if any(p.requires_grad for p in self.model.visual.parameters()):
            yield
            return
        self._vision_cache: dict[int, tuple] | None = {}
        try:
            yield
        finally:
            self._vision_cache = None

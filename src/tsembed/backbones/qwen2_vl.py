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
image's tokens, and the processor's torchvision-only video component is not needed.
"""

from __future__ import annotations

from collections.abc import Sequence
from typing import Any

import torch
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


class Qwen2VLBackbone(Backbone):
    """Qwen2-VL family decoder, last-token pooled (registry name ``qwen2-vl``).

    Args:
        path: local checkpoint directory (config, weights, tokenizer, image processor), or a Hub id found in
            the local Hugging Face cache (``tsembed.backbones.hf.resolve_pretrained``; never downloaded).
        max_length: tokens per input; text is truncated from the right, image tokens never.
        prompt_template: instruction format with one ``{text}`` slot.
        min_pixels, max_pixels: override the image processor's resize bounds (fewer pixels, fewer tokens).
        dtype: ``"float32"``, ``"bfloat16"`` or ``"float16"`` weights.
        attn_implementation: transformers attention backend (``"sdpa"``, ``"eager"``, ...).
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
            AutoModel, directory, "path", dtype=torch_dtype, attn_implementation=attn_implementation
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
            self.model.gradient_checkpointing_enable(gradient_checkpointing_kwargs={"use_reentrant": False})
            self.keep_in_eval([self.model.visual])  # checkpointing only runs in training mode
        else:
            self.keep_in_eval([self.model])

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
        if images:
            vision = self.image_processor(images=images, return_tensors="pt")
            batch["pixel_values"], batch["image_grid_thw"] = vision["pixel_values"], vision["image_grid_thw"]
            merge = int(self.image_processor.merge_size)
            pads_per_image = (vision["image_grid_thw"].prod(-1) // merge**2).tolist()
        rows = self._token_rows(segments, pads_per_image)
        length = max(len(r) for r in rows)
        input_ids = torch.full((len(rows), length), self.pad_id, dtype=torch.long)
        attention_mask = torch.zeros((len(rows), length), dtype=torch.long)
        for i, row in enumerate(rows):
            input_ids[i, : len(row)] = torch.tensor(row)
            attention_mask[i, : len(row)] = 1
        batch["input_ids"], batch["attention_mask"] = input_ids, attention_mask
        batch["mm_token_type_ids"] = (input_ids == self.image_pad_id).int()  # 1 = image, as the processor marks it
        return batch

    def _token_rows(self, segments: list[Segments], pads_per_image: list[int]) -> list[list[int]]:
        encoded = self._encode([text for seg in segments for text in (seg.before, seg.after)])
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
        out = self.model(
            input_ids=input_ids,
            attention_mask=attention_mask,
            mm_token_type_ids=mm_token_type_ids,
            pixel_values=pixel_values,
            image_grid_thw=image_grid_thw,
            use_cache=False,
        )
        return BackboneOutput(hidden_states=out.last_hidden_state, attention_mask=attention_mask)

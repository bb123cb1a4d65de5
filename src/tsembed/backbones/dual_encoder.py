"""CLIP / SigLIP dual encoders as one backbone, with late fusion for mixed text + image inputs.

Fusion rule: each tower's projected embedding is L2-normalised, and an input's output is the mean
of the normalised embeddings of the modalities it has (text only: the text embedding; image only:
the image embedding; both: their mean, i.e. the bisector of the two directions). The embedding
model normalises again after pooling. The ``<|image_1|>`` placeholder only says "this input has an
image": a dual encoder has no image position in its text, so the placeholder is dropped from the text.

Output shape: one fused "token" per input, ``hidden_states`` [B, 1, P] with ``attention_mask`` [B, 1]
of ones, so every pooling mode returns the fused vector.

Routing: MoE-LoRA may sit in both towers. Both towers always run on the whole batch (an input
without text reads an empty string, one without an image a zero image) and each tower's routing
mask marks only the inputs that really have that modality, so every adapted layer records routing
for all B inputs and the routing signature keeps one length, while absent modalities contribute
nothing to it.
"""

from __future__ import annotations

from collections.abc import Callable, Sequence
from dataclasses import dataclass
from typing import Any

import torch
import torch.nn.functional as F
from transformers import AutoImageProcessor, AutoModel, AutoTokenizer

from tsembed.backbones.base import Backbone, BackboneOutput
from tsembed.backbones.hf import (
    load_component,
    load_model,
    parse_dtype,
    pretrained_card_metadata,
    resolve_model_type,
)
from tsembed.backbones.images import load_image
from tsembed.backbones.placeholder import split_inputs
from tsembed.errors import ConfigError
from tsembed.inputs import EmbedInput
from tsembed.moe.routing import set_routing_mask

DUAL_TARGET_MODULES = [
    r"model\.(text_model|vision_model)\.(\w+\.)?encoder\.layers\.\d+\.self_attn\.(q_proj|k_proj|v_proj|out_proj)",
    r"model\.(text_model|vision_model)\.(\w+\.)?encoder\.layers\.\d+\.mlp\.(fc1|fc2)",
]


@dataclass(frozen=True)
class DualFamily:
    """What differs between CLIP-like checkpoints.

    pad_to_max_length: the text tower was trained on fixed-length padded text (SigLIP pools the last position).
    text_attention_mask: the text tower was trained with an attention mask (SigLIP was not).
    embed_dim: output size of the projected embeddings.
    """

    pad_to_max_length: bool
    text_attention_mask: bool
    embed_dim: Callable[[Any], int]


FAMILIES: dict[str, DualFamily] = {
    "clip": DualFamily(False, True, lambda model: model.text_projection.out_features),
    "siglip": DualFamily(True, False, lambda model: model.text_model.head.out_features),
}


class DualEncoderBackbone(Backbone):
    """CLIP or SigLIP from a local directory, late-fused (registry name ``dual-encoder``).

    Args:
        path: local checkpoint directory (config, weights, tokenizer, image processor), or a Hub id found in
            the local Hugging Face cache (never downloaded).
        max_length: text tokens; None means the text tower's position limit (77 CLIP, 64 SigLIP).
        dtype: ``"float32"``, ``"bfloat16"`` or ``"float16"`` weights.
    """

    kind = "dual-encoder"
    default_pooling = "mean"
    image_token = None

    def __init__(self, path: str, max_length: int | None = None, dtype: str = "float32") -> None:
        super().__init__()
        torch_dtype = parse_dtype(dtype)
        self._options: dict[str, Any] = {"path": str(path), "max_length": max_length, "dtype": dtype}
        directory, model_type = resolve_model_type(path, "path", FAMILIES, "dual-encoder")
        self.family = FAMILIES[model_type]
        self.model = load_model(AutoModel, directory, "path", dtype=torch_dtype)
        self.tokenizer = load_component(AutoTokenizer, directory, "path")
        self.image_processor = load_component(AutoImageProcessor, directory, "path")
        text_config, vision_config = self.model.config.text_config, self.model.config.vision_config
        limit = int(text_config.max_position_embeddings)
        if max_length is not None and not 2 <= max_length <= limit:
            raise ConfigError(f"max_length must be between 2 and the text tower's {limit} positions, got {max_length}")
        self.max_length = max_length or limit
        self.image_size = int(vision_config.image_size)
        self.vision_length = _vision_sequence_length(self.model.vision_model)
        self.hidden_size = int(self.family.embed_dim(self.model))
        self.default_target_modules = list(DUAL_TARGET_MODULES)
        self.freeze_pretrained()
        self.keep_in_eval([self.model])

    def config(self) -> dict[str, Any]:
        return {"kind": self.kind, **self._options}

    def card_metadata(self) -> dict[str, Any]:
        return pretrained_card_metadata(self._options["path"], self.model.name_or_path)

    @torch.no_grad()
    def prepare(self, inputs: Sequence[EmbedInput]) -> dict[str, torch.Tensor]:
        """Returns input_ids, attention_mask [B, L]; pixel_values [B, 3, S, S] (zeros where no image);
        has_text, has_image [B] bool."""
        segments = split_inputs(inputs)
        texts = [seg.text for seg in segments]
        padding = "max_length" if self.family.pad_to_max_length else "longest"
        tokens = self.tokenizer(
            texts,
            padding=padding,
            truncation=True,
            max_length=self.max_length,
            return_tensors="pt",
            return_attention_mask=True,
        )
        pixel_values = torch.zeros(len(segments), 3, self.image_size, self.image_size)
        rows = [i for i, seg in enumerate(segments) if seg.image is not None]
        if rows:
            images = [load_image(segments[i].image, i) for i in rows]  # type: ignore[arg-type]
            pixel_values[rows] = self.image_processor(images=images, return_tensors="pt")["pixel_values"].float()
        return {
            "input_ids": tokens["input_ids"],
            "attention_mask": tokens["attention_mask"],
            "pixel_values": pixel_values,
            "has_text": torch.tensor([bool(t) for t in texts]),
            "has_image": torch.tensor([seg.image is not None for seg in segments]),
        }

    def forward(  # type: ignore[override]
        self,
        input_ids: torch.Tensor,
        attention_mask: torch.Tensor,
        pixel_values: torch.Tensor,
        has_text: torch.Tensor,
        has_image: torch.Tensor,
    ) -> BackboneOutput:
        has_text, has_image = has_text.bool(), has_image.bool()
        batch = input_ids.shape[0]
        set_routing_mask(self, attention_mask * has_text.unsqueeze(1))  # text tower sees [B, L_text]
        text_mask = attention_mask if self.family.text_attention_mask else None
        text = self.model.get_text_features(input_ids=input_ids, attention_mask=text_mask).pooler_output  # [B, P]
        vision_mask = has_image.unsqueeze(1).expand(batch, self.vision_length).long()
        set_routing_mask(self, vision_mask)  # vision tower sees [B, L_patches]
        pixels = pixel_values.to(self.model.dtype)
        image = self.model.get_image_features(pixel_values=pixels).pooler_output  # [B, P]
        fused = fuse_embeddings(text, image, has_text, has_image)  # [B, P]
        ones = torch.ones(batch, 1, dtype=attention_mask.dtype, device=attention_mask.device)
        return BackboneOutput(hidden_states=fused.unsqueeze(1), attention_mask=ones)


def fuse_embeddings(
    text: torch.Tensor, image: torch.Tensor, has_text: torch.Tensor, has_image: torch.Tensor
) -> torch.Tensor:
    """Mean of the L2-normalised embeddings [B, P] of the modalities each input has."""
    weights_text = has_text.to(text.dtype).unsqueeze(1)  # [B, 1]
    weights_image = has_image.to(image.dtype).unsqueeze(1)  # [B, 1]
    total = F.normalize(text, dim=-1) * weights_text + F.normalize(image, dim=-1) * weights_image
    return total / (weights_text + weights_image).clamp_min(1.0)  # [B, P]


def _vision_sequence_length(vision_model: torch.nn.Module) -> int:
    """Tokens the vision encoder layers see (patches, plus CLIP's class token)."""
    for module in vision_model.modules():
        if hasattr(module, "num_positions") and hasattr(module, "patch_embedding"):
            return int(module.num_positions)
    raise ConfigError(f"cannot find the patch embeddings of {type(vision_model).__name__}")

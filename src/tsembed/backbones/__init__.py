"""Backbones: processed inputs → hidden states, for early-fusion models and dual encoders (docs/design.md §4)."""

from tsembed.backbones.base import Backbone, BackboneOutput
from tsembed.backbones.dual_encoder import DualEncoderBackbone, fuse_embeddings
from tsembed.backbones.minilm_effnet import MiniLMEfficientNetBackbone
from tsembed.backbones.placeholder import IMAGE_PLACEHOLDER
from tsembed.backbones.pooling import POOLING, get_pool_fn, pool
from tsembed.backbones.qwen2_vl import Qwen2VLBackbone
from tsembed.backbones.registry import BACKBONES, DEFAULT_BACKBONE, build_backbone
from tsembed.backbones.vision_cache import VisionCacheWarning, VisionFeatureCache

__all__ = [
    "BACKBONES",
    "DEFAULT_BACKBONE",
    "IMAGE_PLACEHOLDER",
    "POOLING",
    "Backbone",
    "BackboneOutput",
    "DualEncoderBackbone",
    "MiniLMEfficientNetBackbone",
    "Qwen2VLBackbone",
    "VisionCacheWarning",
    "VisionFeatureCache",
    "build_backbone",
    "fuse_embeddings",
    "get_pool_fn",
    "pool",
]

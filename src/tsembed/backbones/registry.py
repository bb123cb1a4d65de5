"""Backbone registry: a plain name → class dict, and ``build_backbone`` from a ``config()`` dict."""

from __future__ import annotations

import inspect
from typing import Any

from tsembed.backbones.base import Backbone
from tsembed.backbones.dual_encoder import DualEncoderBackbone
from tsembed.backbones.minilm_effnet import MiniLMEfficientNetBackbone
from tsembed.backbones.qwen2_vl import Qwen2VLBackbone
from tsembed.errors import ConfigError

BACKBONES: dict[str, type[Backbone]] = {
    MiniLMEfficientNetBackbone.kind: MiniLMEfficientNetBackbone,
    Qwen2VLBackbone.kind: Qwen2VLBackbone,
    DualEncoderBackbone.kind: DualEncoderBackbone,
}
DEFAULT_BACKBONE = MiniLMEfficientNetBackbone.kind


def check_backbone_config(config: Any, where: str = "backbone config") -> tuple[type[Backbone], dict[str, Any]]:
    """The backbone class and its options for ``{"kind": name, **options}``, checked without building anything, so
    a training config fails when it is loaded, not minutes later when the model is built.

    Raises:
        ConfigError: no or unknown kind (valid kinds listed), or options the backbone does not take (``where`` names
            the config key in the message).
    """
    if not isinstance(config, dict) or "kind" not in config:
        raise ConfigError(f"{where} needs a 'kind' key; valid kinds: {sorted(BACKBONES)}")
    options = dict(config)
    kind = options.pop("kind")
    if kind not in BACKBONES:
        raise ConfigError(f"{where}: unknown backbone kind {kind!r}; valid kinds: {sorted(BACKBONES)}")
    cls = BACKBONES[kind]
    allowed = [name for name in inspect.signature(cls.__init__).parameters if name != "self"]
    unknown = sorted(set(options) - set(allowed))
    if unknown:
        raise ConfigError(f"{where}: backbone {kind!r} has no options {unknown}; allowed options: {allowed}")
    return cls, options


def build_backbone(config: dict[str, Any]) -> Backbone:
    """Build a backbone from ``{"kind": name, **options}`` (what ``Backbone.config()`` returns).

    Raises:
        ConfigError: see ``check_backbone_config``.
    """
    cls, options = check_backbone_config(config)
    return cls(**options)

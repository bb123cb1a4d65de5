from pathlib import Path

import pytest
import torch
from efficientnet_lite_pytorch.utils import Conv2dStaticSamePadding
from torch import nn

from tsembed.backbones.efficientnet import EfficientNetLiteFeatures, grid_tokens
from tsembed.errors import ConfigError


@pytest.fixture(scope="module")
def pixels() -> torch.Tensor:
    torch.manual_seed(0)
    return torch.randn(1, 3, 64, 64)


def test_plain_conv_swap_gives_identical_outputs(pixels: torch.Tensor) -> None:
    reference = EfficientNetLiteFeatures(64, plain_convs=False, fold_bn=False, channels_last=False)
    swapped = EfficientNetLiteFeatures(64, plain_convs=True, fold_bn=False, channels_last=False)
    kinds = [type(m) for m in swapped.modules()]
    assert kinds.count(nn.Conv2d) == 44  # every 1×1 and stride-1 depthwise conv
    assert kinds.count(Conv2dStaticSamePadding) == 5  # stem + the four stride-2 depthwise convs
    with torch.no_grad():
        assert torch.equal(reference(pixels), swapped(pixels))


def test_default_fast_path_matches_reference(pixels: torch.Tensor) -> None:
    reference = EfficientNetLiteFeatures(64, plain_convs=False, fold_bn=False, channels_last=False)
    fast = EfficientNetLiteFeatures(64)  # plain convs + folded batch norm + channels-last
    assert not any(isinstance(m, nn.BatchNorm2d) for m in fast.modules())
    with torch.no_grad():
        expected, got = reference(pixels), fast(pixels)
    assert got.shape == (1, 1280, 2, 2)
    torch.testing.assert_close(got, expected, rtol=1e-4, atol=1e-4)


def test_frozen_and_in_eval_mode() -> None:
    tower = EfficientNetLiteFeatures(64)
    assert not any(p.requires_grad for p in tower.parameters()) and not tower.training


def test_grid_tokens_pools_row_major() -> None:
    fmap = torch.arange(16, dtype=torch.float32).view(1, 1, 4, 4)
    assert grid_tokens(fmap, 2).flatten().tolist() == [2.5, 4.5, 10.5, 12.5]
    assert grid_tokens(fmap, 4).shape == (1, 16, 1)


def test_bad_settings_are_config_errors(tmp_path: Path) -> None:
    with pytest.raises(ConfigError, match="multiple of 32"):
        EfficientNetLiteFeatures(100)
    with pytest.raises(ConfigError, match="not found"):
        EfficientNetLiteFeatures(64, weights_path=tmp_path / "missing.pth")
    torch.save({"x": torch.zeros(1)}, tmp_path / "bad.pth")
    with pytest.raises(ConfigError, match="not an EfficientNet-Lite0 state dict"):
        EfficientNetLiteFeatures(64, weights_path=tmp_path / "bad.pth")

import pytest
import torch

from tsembed.backbones.pooling import POOLING, pool
from tsembed.errors import ConfigError

# Three rows of four tokens with 1-d hidden states 1, 2, 3, 4 (scaled per row) and different padding.
HIDDEN = torch.tensor([[1.0, 2.0, 3.0, 4.0], [10.0, 20.0, 30.0, 40.0], [100.0, 200.0, 300.0, 400.0]]).unsqueeze(-1)
RIGHT_LEFT_FULL = torch.tensor([[1, 1, 0, 0], [0, 1, 1, 1], [1, 1, 1, 1]])


def test_last_token_handles_right_and_left_padding() -> None:
    # row 0 right-padded: last real token is position 1; row 1 left-padded: position 3; row 2 full: 3
    assert pool(HIDDEN, RIGHT_LEFT_FULL, "last").squeeze(-1).tolist() == [2.0, 40.0, 400.0]


def test_cls_is_first_real_token_under_left_padding() -> None:
    assert pool(HIDDEN, RIGHT_LEFT_FULL, "cls").squeeze(-1).tolist() == [1.0, 20.0, 100.0]


def test_mean_ignores_pads() -> None:
    assert pool(HIDDEN, RIGHT_LEFT_FULL, "mean").squeeze(-1).tolist() == [1.5, 30.0, 250.0]


def test_mean_of_all_pad_row_is_zero_not_nan() -> None:
    out = pool(torch.ones(1, 3, 2), torch.zeros(1, 3, dtype=torch.long), "mean")
    assert torch.equal(out, torch.zeros(1, 2))


def test_pooling_keeps_gradients_and_dims() -> None:
    hidden = torch.randn(2, 5, 7, requires_grad=True)
    mask = torch.tensor([[1, 1, 1, 0, 0], [1, 1, 1, 1, 1]])
    for mode in POOLING:
        out = pool(hidden, mask, mode)
        assert out.shape == (2, 7)
        out.sum().backward()


def test_unknown_mode_lists_valid_modes() -> None:
    with pytest.raises(ConfigError, match="valid pooling modes: \\['cls', 'last', 'mean'\\]"):
        pool(HIDDEN, RIGHT_LEFT_FULL, "max")


def test_shape_mismatch_is_reported() -> None:
    with pytest.raises(ValueError, match="hidden \\[B, L, D\\] and mask \\[B, L\\]"):
        pool(HIDDEN, RIGHT_LEFT_FULL[:, :3], "mean")

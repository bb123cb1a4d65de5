"""Pooling: one vector per input from a backbone's hidden states (docs/design.md §3.1).

Every function takes hidden states [B, L, D] and an attention mask [B, L] (1 = real token, 0 = pad)
and works for left and right padding alike, so backbones may pad on either side.
"""

from __future__ import annotations

from collections.abc import Callable

import torch

from tsembed.errors import ConfigError


def last_token_pool(hidden: torch.Tensor, mask: torch.Tensor) -> torch.Tensor:
    """The hidden state of each row's last real token (decoders: the only token that saw everything)."""
    length = mask.shape[1]
    last = length - 1 - mask.flip(-1).long().argmax(dim=-1)  # [B]: first 1 from the right
    return hidden[torch.arange(hidden.shape[0], device=hidden.device), last.to(hidden.device)]  # [B, D]


def first_token_pool(hidden: torch.Tensor, mask: torch.Tensor) -> torch.Tensor:
    """The hidden state of each row's first real token (the [CLS] token, also under left padding)."""
    first = mask.long().argmax(dim=-1)  # [B]
    return hidden[torch.arange(hidden.shape[0], device=hidden.device), first.to(hidden.device)]  # [B, D]


def mean_pool(hidden: torch.Tensor, mask: torch.Tensor) -> torch.Tensor:
    """Mean over each row's real tokens (pads count zero; an all-pad row pools to zeros)."""
    weights = mask.to(device=hidden.device, dtype=hidden.dtype).unsqueeze(-1)  # [B, L, 1]
    return (hidden * weights).sum(dim=1) / weights.sum(dim=1).clamp_min(1.0)  # [B, D]


PoolFn = Callable[[torch.Tensor, torch.Tensor], torch.Tensor]
POOLING: dict[str, PoolFn] = {"last": last_token_pool, "mean": mean_pool, "cls": first_token_pool}


def get_pool_fn(mode: str) -> PoolFn:
    """The pooling function registered as ``mode``.

    Raises:
        ConfigError: ``mode`` is not one of ``POOLING``.
    """
    try:
        return POOLING[mode]
    except KeyError:
        raise ConfigError(f"unknown pooling {mode!r}; valid pooling modes: {sorted(POOLING)}") from None


def pool(hidden: torch.Tensor, mask: torch.Tensor, mode: str) -> torch.Tensor:
    """Pool hidden states [B, L, D] under mask [B, L] with ``mode`` ("last" | "mean" | "cls") to [B, D]."""
    if hidden.dim() != 3 or tuple(mask.shape) != tuple(hidden.shape[:2]):
        raise ValueError(
            f"pool expects hidden [B, L, D] and mask [B, L]; got {tuple(hidden.shape)} and {tuple(mask.shape)}"
        )
    return get_pool_fn(mode)(hidden, mask)

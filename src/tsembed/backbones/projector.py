"""The trainable bridge from frozen vision features to the text encoder's embedding space (LLaVA-style)."""

from __future__ import annotations

import torch
from torch import nn

from tsembed.errors import ConfigError

PROJECTORS = ("mlp", "linear")


class VisualProjector(nn.Module):
    """Vision tokens [N, T, C] → text-space tokens [N, T, D].

    LayerNorm on the input (CNN features are unnormalised and spiky), then a linear map or a
    two-layer GELU MLP, plus a learned embedding per grid cell so the text encoder can tell cells
    apart beyond their sequence position (spatial questions: "what is left of ...").

    Args:
        in_dim: vision channels C.
        out_dim: text hidden size D.
        num_tokens: tokens per image T (grid cells).
        kind: ``"mlp"`` or ``"linear"``.
    """

    def __init__(self, in_dim: int, out_dim: int, num_tokens: int, kind: str = "mlp") -> None:
        super().__init__()
        if kind not in PROJECTORS:
            raise ConfigError(f"projector must be one of {PROJECTORS}, got {kind!r}")
        self.norm = nn.LayerNorm(in_dim)
        if kind == "mlp":
            self.proj: nn.Module = nn.Sequential(nn.Linear(in_dim, out_dim), nn.GELU(), nn.Linear(out_dim, out_dim))
        else:
            self.proj = nn.Linear(in_dim, out_dim)
        self.cell_embedding = nn.Parameter(torch.randn(num_tokens, out_dim) * 0.02)

    def forward(self, features: torch.Tensor) -> torch.Tensor:
        return self.proj(self.norm(features)) + self.cell_embedding  # [N, T, D]

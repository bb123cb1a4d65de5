"""The trainable bridge from frozen vision features to the text encoder's embedding space (LLaVA-style)."""

from __future__ import annotations

import copy

import torch
from torch import nn

from tsembed.errors import ConfigError
from tsembed.moe.kmeans import spherical_kmeans
from tsembed.moe.router import Router
from tsembed.moe.routers import topk_gates

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


class ProjectorMixture(nn.Module):
    """K full projectors, one chosen per image by a router that reads the image's instruction.

    Why (docs/results/conflict §9): conditions that need different things from the image ("the same emoji
    in any colour" vs "any emoji of this colour") compete in the one projector every input shares, which
    no language-layer expert covers; low-rank deltas of the projector did not separate them, a full
    projector per condition did. The projector itself sees only image features, so the router reads a
    frozen sentence embedding of the input's text (``route`` [N, R], L2-normalised by the backbone).

    Top-1 with the detached-probability gate of ``tsembed.moe.routers.topk_gates``: each image's tokens
    are exactly its expert's output (gate value 1) and the router still gets the task loss's gradient.
    Every expert starts as a copy of ``base``, so at initialisation the mixture computes what ``base`` does.

    Args:
        base: the projector every expert starts from.
        num_experts: K ≥ 2.
        route_dim: size R of the routing embedding.
    """

    def __init__(self, base: VisualProjector, num_experts: int, route_dim: int) -> None:
        super().__init__()
        if num_experts < 2:
            raise ConfigError(f"a projector mixture needs at least 2 experts, got {num_experts}")
        self.experts = nn.ModuleList(copy.deepcopy(base) for _ in range(num_experts))
        self.router = Router(route_dim, num_experts)

    @property
    def num_experts(self) -> int:
        return len(self.experts)

    def own_router_parameters(self) -> list[nn.Parameter]:
        """The projector router's weight (``moe.routers.RouterOwner``): it gets the router learning rate."""
        return self.router.own_router_parameters()

    def gates(self, route: torch.Tensor) -> torch.Tensor:
        """Top-1 gates [N, K] for routing embeddings [N, R]: one non-zero entry of value 1 per row."""
        return topk_gates(self.router(route)[1], 1, 1.0)

    def choose(self, route: torch.Tensor) -> torch.Tensor:
        """The expert [N] each routing embedding goes to."""
        with torch.no_grad():
            return self.gates(route).argmax(dim=-1)

    def forward(self, features: torch.Tensor, route: torch.Tensor) -> torch.Tensor:
        if route.shape[0] != features.shape[0]:
            raise ValueError(f"{features.shape[0]} images but {route.shape[0]} routing embeddings")
        gates = self.gates(route)  # [N, K]
        chosen = gates.argmax(dim=-1)
        tokens: torch.Tensor | None = None
        for k, expert in enumerate(self.experts):
            rows = (chosen == k).nonzero().flatten()
            if rows.numel() == 0:
                continue
            out = expert(features[rows]) * gates[rows, k].to(features.dtype).view(-1, 1, 1)  # [n, T, D]
            if tokens is None:
                tokens = out.new_zeros(features.shape[0], *out.shape[1:])
            tokens = tokens.index_copy(0, rows, out)
        if tokens is None:  # no images
            tokens = self.experts[0](features)
        if not torch.is_grad_enabled():
            return tokens
        # unchosen experts stay in the graph with a zero contribution, so DDP sees every parameter used
        return tokens + 0.0 * sum(p.sum() for p in self.parameters()).to(tokens.dtype)

    @torch.no_grad()
    def init_router(self, route: torch.Tensor, seed: int, scale: float = 10.0) -> torch.Tensor:
        """Router rows = the centroids of a spherical k-means over routing embeddings [n, R] (distinct
        instructions), times ``scale``, so each instruction starts at its cluster's expert.

        With fewer distinct instructions than experts the spare experts get zero rows (never chosen until
        the router learns to). Returns each embedding's cluster [n].
        """
        centroids, assign = spherical_kmeans(route.float(), min(self.num_experts, route.shape[0]), seed)
        self.router.start_at(centroids, scale)
        return assign

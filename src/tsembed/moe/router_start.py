"""A k-means start for learned routers: each router begins where its own inputs cluster (docs/design.md §3.2).

Why: a router drawn at random (std 0.02) gives near-uniform probabilities, so top-1 choices are decided by noise
at first; every expert then trains on a mix of tasks, the experts stay alike, and the router has nothing to tell
apart (the claim study's routers ended at 0.97 of the maximum entropy). Starting each router at a spherical
k-means of what it reads over the training data (``MoELoRALinear.router_features``, centred on their mean) sends
inputs that look alike to one expert from the first step; training then moves the routers from there.

The centroids are taken of the centred features and then made orthogonal to the mean's direction, so a router with
no bias still scores only how an input departs from the average input: a logit is ``scale · ĉ_k · (u − ū)``.
"""

from __future__ import annotations

from collections.abc import Callable, Iterator
from contextlib import contextmanager

import torch
from torch import nn

from tsembed.moe.kmeans import spherical_kmeans
from tsembed.moe.layer import MoELoRALinear

#: Feature rows kept per layer (a token-level router reads every token; a sample is enough for the centroids).
MAX_ROWS = 8192


@contextmanager
def capturing_router_features(layers: dict[str, MoELoRALinear],
                              max_rows: int = MAX_ROWS) -> Iterator[dict[str, list[torch.Tensor]]]:
    """Within it, every forward of the model appends each learned router's input features to the yielded lists
    (layer name -> [n, d] chunks, at most ``max_rows`` rows per layer; token-level routers keep only the tokens
    their mask marks)."""
    found: dict[str, list[torch.Tensor]] = {name: [] for name, layer in layers.items() if layer.router is not None}
    handles = []

    def hook(name: str, layer: MoELoRALinear) -> Callable[[nn.Module, tuple], None]:
        def grab(_: nn.Module, args: tuple) -> None:
            x = args[0]
            if sum(c.shape[0] for c in found[name]) >= max_rows:
                return
            x3 = x.unsqueeze(1) if x.dim() == 2 else x
            mask = layer._state.mask_for(x3.shape[0], x3.shape[1], name) if x.dim() == 3 else None
            features = layer.router_features(x3.detach().float(), mask)
            if features.dim() == 3:  # token level: the real tokens only
                features = features[mask] if mask is not None else features.flatten(0, 1)
            found[name].append(features.cpu())
        return grab

    for name in found:
        handles.append(layers[name].register_forward_pre_hook(hook(name, layers[name])))
    try:
        yield found
    finally:
        for handle in handles:
            handle.remove()


@torch.no_grad()
def start_routers_at_clusters(layers: dict[str, MoELoRALinear], features: dict[str, torch.Tensor], seed: int,
                              margin: float, positives: dict[str, torch.Tensor] | None = None
                              ) -> dict[str, torch.Tensor]:
    """Set each learned router's rows to spherical k-means centroids (one per routed expert) of its inputs'
    departures from their mean, and return each layer's cluster per row [n].

    ``features`` [n, d] per layer; with ``positives`` (the same layers, [n, d], row i the positive of query i) a
    query and its positive are one point (the sum of their unit departures, each from its own side's mean), so a
    pair starts in one expert however differently queries and targets are worded. The centroids are made
    orthogonal to the side means (a router has no bias: what every input shares must not pick an expert) and
    scaled so that an input of average spread at its centroid's direction gets logit ``margin``. Null-expert rows,
    and experts beyond the number of distinct points, start at zero.

    Raises:
        ValueError: a learned router has no feature row (the sample never reached it), or a layer's positives do
            not pair one to one with its queries.
    """
    assignments: dict[str, torch.Tensor] = {}
    for name, layer in layers.items():
        if layer.router is None:
            continue
        sides = [features.get(name)] + ([positives.get(name)] if positives is not None else [])
        if any(rows is None or rows.shape[0] == 0 for rows in sides):
            raise ValueError(f"MoE layer {name!r}: no router input was captured; run the sample through the model")
        sides = [rows.float() for rows in sides]  # type: ignore[union-attr]
        if len({rows.shape[0] for rows in sides}) > 1:
            raise ValueError(f"MoE layer {name!r}: {sides[0].shape[0]} queries but {sides[1].shape[0]} positives")
        means = [rows.mean(dim=0) for rows in sides]
        departures = [rows - mean for rows, mean in zip(sides, means, strict=True)]
        points = sum(nn.functional.normalize(d, dim=-1) for d in departures)
        spread = float(torch.cat(departures).norm(dim=-1).mean())
        k = min(layer.num_experts, int(torch.unique(points, dim=0).shape[0]))
        if spread == 0.0:  # one input repeated: nothing to cluster, every route starts alike
            layer.router.start_at(torch.zeros(0, points.shape[1]), 1.0)
            assignments[name] = torch.zeros(points.shape[0], dtype=torch.long)
            continue
        centroids, assign = spherical_kmeans(points, k, seed)
        basis, _ = torch.linalg.qr(torch.stack(means, dim=1))  # [d, sides]: the side means' span
        centroids = centroids - (centroids @ basis) @ basis.T
        layer.router.start_at(centroids, margin / spread)
        assignments[name] = assign
    return assignments

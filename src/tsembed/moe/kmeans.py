"""Spherical k-means: the one clustering that starts routers (a learned router's k-means start, the pilot embeddings
of composed experts)."""

from __future__ import annotations

import torch


def spherical_kmeans(points: torch.Tensor, k: int, seed: int,
                     iterations: int = 50) -> tuple[torch.Tensor, torch.Tensor]:
    """k-means on the unit sphere (cosine), k-means++ seeding; deterministic per seed.

    Returns unit centroids [k, R] and each point's cluster [n].
    """
    if not 1 <= k <= points.shape[0]:
        raise ValueError(f"k must be in [1, {points.shape[0]}], got {k}")
    x = torch.nn.functional.normalize(points, dim=-1)
    generator = torch.Generator().manual_seed(seed)
    first = int(torch.randint(points.shape[0], (1,), generator=generator))
    centroids = x[first : first + 1]
    while centroids.shape[0] < k:  # k-means++: next seed drawn ∝ squared cosine distance to the nearest
        distance = (1 - (x @ centroids.T).max(dim=-1).values).clamp_min(0) ** 2
        if float(distance.sum()) == 0:
            distance = torch.ones_like(distance)
        pick = int(torch.multinomial(distance, 1, generator=generator))
        centroids = torch.cat([centroids, x[pick : pick + 1]])
    assign = (x @ centroids.T).argmax(dim=-1)
    for _ in range(iterations):
        updated = torch.stack([
            torch.nn.functional.normalize(x[assign == c].sum(dim=0), dim=-1) if bool((assign == c).any())
            else centroids[c]
            for c in range(k)
        ])
        new_assign = (x @ updated.T).argmax(dim=-1)
        centroids = updated
        if torch.equal(new_assign, assign):
            break
        assign = new_assign
    return centroids, assign

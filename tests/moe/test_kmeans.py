"""Spherical k-means (``tsembed.moe.kmeans``), what the pilot routers of composed models start from."""

from __future__ import annotations

import pytest
import torch

from tsembed.moe.kmeans import spherical_kmeans


def test_spherical_kmeans_finds_separated_clusters_deterministically() -> None:
    torch.manual_seed(0)
    centres = torch.eye(3, 5) * 10
    points = torch.cat([centres[c] + torch.randn(7, 5) for c in range(3)])
    truth = torch.arange(3).repeat_interleave(7)
    _, assign = spherical_kmeans(points, 3, seed=1)
    for c in range(3):  # each true cluster lands in one found cluster, all distinct
        assert len(set(assign[truth == c].tolist())) == 1
    assert len(set(assign.tolist())) == 3
    assert torch.equal(spherical_kmeans(points, 3, seed=1)[1], assign)
    with pytest.raises(ValueError, match="k must be"):
        spherical_kmeans(points, 22, seed=0)

"""The k-means router start: each learned router begins at clusters of its own inputs."""

import pytest
import torch
from torch import nn

from tsembed.errors import ConfigError
from tsembed.moe import MoELoRAConfig, attach, collect_routing, set_routing_mask
from tsembed.moe.attach import adapter_layers
from tsembed.moe.router_start import capturing_router_features, start_routers_at_clusters

D = 16


def clustered_inputs(per_cluster: int = 6, clusters: int = 4, length: int = 5, seed: int = 0):
    """Inputs [n, L, D] around one large shared offset (as hidden states are), plus one direction per cluster."""
    g = torch.Generator().manual_seed(seed)
    offset = 20 * torch.randn(D, generator=g)
    directions = 3 * torch.randn(clusters, D, generator=g)
    x = torch.stack([offset + directions[c] + 0.3 * torch.randn(length, D, generator=g)
                     for c in range(clusters) for _ in range(per_cluster)])
    labels = torch.arange(clusters).repeat_interleave(per_cluster)
    return x, labels


def adapted(level: str = "sequence", nulls: int = 0) -> nn.Module:
    torch.manual_seed(0)
    model = nn.Sequential(nn.Linear(D, D), nn.Linear(D, D))
    attach(model, MoELoRAConfig(target_modules=["0", "1"], num_experts=4, rank=2, top_k=1, level=level,
                                num_null_experts=nulls, router_start="kmeans"))
    return model


def test_each_cluster_starts_in_its_own_expert_with_a_confident_router():
    model = adapted()
    layers = adapter_layers(model)
    x, labels = clustered_inputs()
    with capturing_router_features(layers) as found:
        model(x)
    assert set(found) == {"0", "1"} and found["0"][0].shape == (24, D)  # sequence level: one row per input
    start_routers_at_clusters(layers, {n: torch.cat(c) for n, c in found.items()}, seed=0, margin=4.0)
    model(x)
    probs = collect_routing(model).layer_probs["0"]  # [24, 4]
    top1 = probs.argmax(dim=-1)
    for c in range(4):  # one expert per cluster, a different one for each
        assert (top1[labels == c] == top1[labels == c][0]).all()
    assert len(set(top1.tolist())) == 4
    assert float(probs.detach().max(dim=-1).values.min()) > 0.8  # decisive from the first step
    weight = layers["0"].router.weight
    mean = torch.cat(found["0"]).mean(0)
    torch.testing.assert_close(weight @ nn.functional.normalize(mean, dim=0), torch.zeros(4), atol=1e-4, rtol=0)
    assert not layers["0"]._forward_pre_hooks  # the capture hooks are gone


def test_random_start_is_near_uniform_for_contrast():
    model = adapted()
    x, _ = clustered_inputs()
    model(x)
    assert float(collect_routing(model).layer_probs["0"].detach().max(dim=-1).values.max()) < 0.8


def test_token_level_captures_only_masked_tokens_and_null_rows_start_at_zero():
    model = adapted(level="token", nulls=1)
    layers = adapter_layers(model)
    x, _ = clustered_inputs(per_cluster=2)
    mask = torch.ones(8, 5, dtype=torch.long)
    mask[:, 3:] = 0
    set_routing_mask(model, mask)
    model._forward_pre_hooks.clear()  # keep the mask set above (the root hook would reset it)
    model._forward_pre_hooks_with_kwargs.clear()
    with capturing_router_features(layers) as found:
        model(x)
    assert torch.cat(found["1"]).shape == (8 * 3, D)
    start_routers_at_clusters(layers, {n: torch.cat(c) for n, c in found.items()}, seed=0, margin=4.0)
    assert torch.count_nonzero(layers["0"].router.weight[4]) == 0  # the null route


def test_a_layer_the_sample_never_reached_is_an_error():
    model = adapted()
    with pytest.raises(ValueError, match="no router input was captured"):
        start_routers_at_clusters(adapter_layers(model), {}, seed=0, margin=4.0)


def test_config_checks_the_start():
    with pytest.raises(ConfigError, match="router_start must be one of"):
        MoELoRAConfig(target_modules=["0"], router_start="zeros")
    with pytest.raises(ConfigError, match="router_start_margin"):
        MoELoRAConfig(target_modules=["0"], router_start_margin=0)

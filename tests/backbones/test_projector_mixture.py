"""The routed projector mixture (conflict §9): exact against a per-expert loop, k-means start, backbone plumbing."""

from __future__ import annotations

import copy

import pytest
import torch

from tsembed.backbones import build_backbone, pool
from tsembed.backbones.projector import ProjectorMixture, VisualProjector
from tsembed.backbones.testing import build_tiny_minilm_effnet
from tsembed.errors import ConfigError
from tsembed.inputs import EmbedInput
from tsembed.moe.kmeans import spherical_kmeans

C, D, T = 12, 8, 4


def perturbed_mixture(k: int = 3, route_dim: int = 6) -> ProjectorMixture:
    torch.manual_seed(0)
    mixture = ProjectorMixture(VisualProjector(C, D, T), k, route_dim)
    with torch.no_grad():
        for expert in mixture.experts:  # make the experts differ, as after training
            for p in expert.parameters():
                p.add_(torch.randn_like(p) * 0.3)
        mixture.router.weight.normal_()
    return mixture


def test_mixture_starts_as_its_base_projector() -> None:
    torch.manual_seed(0)
    base = VisualProjector(C, D, T)
    mixture = ProjectorMixture(base, 4, 6)
    features, route = torch.randn(5, T, C), torch.randn(5, 6)
    torch.testing.assert_close(mixture(features, route), base(features), rtol=1e-6, atol=1e-6)


def test_each_image_gets_exactly_its_chosen_expert() -> None:
    mixture = perturbed_mixture()
    features, route = torch.randn(9, T, C), torch.randn(9, 6)
    chosen = mixture.choose(route)
    assert len(set(chosen.tolist())) > 1  # the test covers more than one expert
    reference = torch.stack([mixture.experts[int(k)](features[i : i + 1])[0] for i, k in enumerate(chosen)])
    torch.testing.assert_close(mixture(features, route), reference, rtol=1e-6, atol=1e-6)


def test_router_gets_the_task_gradient_and_unchosen_experts_none() -> None:
    mixture = perturbed_mixture(k=3)
    features = torch.randn(6, T, C)
    route = mixture.router.weight[0].detach().expand(6, -1).clone()  # every image to expert 0
    assert mixture.choose(route).tolist() == [0] * 6
    mixture(features, route).pow(2).sum().backward()
    assert mixture.router.weight.grad is not None and mixture.router.weight.grad.abs().sum() > 0
    assert all(float(p.grad.abs().sum()) > 0 for p in mixture.experts[0].parameters())
    for expert in mixture.experts[1:]:  # in the graph (DDP) but with a zero gradient
        assert all(p.grad is not None and float(p.grad.abs().sum()) == 0 for p in expert.parameters())


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


def test_init_router_sends_each_point_to_its_cluster_and_spares_unused_experts() -> None:
    mixture = perturbed_mixture(k=4, route_dim=5)
    points = torch.nn.functional.normalize(torch.eye(2, 5) + 0.01, dim=-1)  # two distinct instructions
    assign = mixture.init_router(points, seed=0)
    assert torch.equal(mixture.choose(points), assign)
    assert sorted(assign.tolist()) == [0, 1]
    assert float(mixture.router.weight[2:].detach().abs().sum()) == 0


@pytest.fixture(scope="module")
def routed_backbone_session(tiny_bert_dir):
    return build_tiny_minilm_effnet(tiny_bert_dir, projector_experts=3)


@pytest.fixture
def routed_backbone(routed_backbone_session):
    return copy.deepcopy(routed_backbone_session)


def test_backbone_routes_images_by_their_instruction(routed_backbone, backbone_test_images) -> None:
    b = routed_backbone
    img = backbone_test_images
    colour = ["<|image_1|> find any emoji of the same colour", "<|image_1|> represent the colour of the emoji"]
    shape = ["<|image_1|> the same emoji in any colour please", "<|image_1|> represent the emoji itself now"]
    inputs = [EmbedInput(t, img[i % 4]) for i, t in enumerate(colour + shape)] + [EmbedInput("text only")]
    assignment = b.init_routing(inputs, seed=0)
    assert set(assignment) == {EmbedInput(t).text.replace("<|image_1|> ", "") for t in colour + shape}
    prepared = b.prepare(inputs)
    assert prepared["image_route"].shape == (4, b.hidden_size)  # one per image, none for the text-only input
    chosen = b.projector.choose(prepared["image_route"])
    assert chosen.tolist() == [assignment[t.text.replace("<|image_1|> ", "")] for t in inputs[:4]]
    # each image's visual tokens are exactly its expert's projection of its features
    out = b(**prepared)
    features = b.encode_images(prepared["image_features"], prepared["image_cached"], prepared["image_digest"],
                               prepared["pixel_values"])
    seen = {}
    handle = b.text.register_forward_pre_hook(lambda m, a, k: seen.update(embeds=k["inputs_embeds"]), with_kwargs=True)
    with torch.no_grad():
        b(**prepared)
    handle.remove()
    slots = prepared["input_ids"] == b.image_token_id
    tokens = seen["embeds"][slots].view(4, -1, b.hidden_size)
    for i, k in enumerate(chosen.tolist()):
        torch.testing.assert_close(tokens[i], b.projector.experts[k](features[i : i + 1])[0], rtol=1e-5, atol=1e-5)
    pool(out.hidden_states, out.attention_mask, "mean").sum().backward()
    assert b.projector.router.weight.grad is not None


def test_text_only_batch_keeps_every_mixture_parameter_in_graph(routed_backbone) -> None:
    out = routed_backbone(**routed_backbone.prepare([EmbedInput("a cat"), EmbedInput("a dog")]))
    out.hidden_states.sum().backward()
    assert all(p.grad is not None for p in routed_backbone.projector.parameters())


def test_routed_backbone_roundtrips_through_its_config(routed_backbone, backbone_test_images) -> None:
    b = routed_backbone
    b.init_routing([EmbedInput("<|image_1|> colour", backbone_test_images[0]),
                    EmbedInput("<|image_1|> shape", backbone_test_images[1])], seed=0)
    assert b.config()["projector_experts"] == 3
    rebuilt = build_backbone({**b.config(), "disk_cache": False})
    rebuilt.load_trainable_state_dict(b.trainable_state_dict())
    inputs = [EmbedInput("<|image_1|> colour", backbone_test_images[0]), EmbedInput("shape", backbone_test_images[2])]
    with torch.no_grad():
        a, r = b(**b.prepare(inputs)), rebuilt(**rebuilt.prepare(inputs))
    torch.testing.assert_close(a.hidden_states, r.hidden_states, rtol=0, atol=0)
    assert not any(name.startswith("_route_text") for name, _ in b.named_parameters())


@pytest.mark.parametrize("options, message", [
    ({"projector_experts": 0}, "projector_experts must be an integer"),
    ({"projector_experts": True}, "projector_experts must be an integer"),
    ({"projector_experts": 2, "train_projector": False}, "needs train_projector=true"),
])
def test_bad_mixture_options(tiny_bert_dir, options, message) -> None:
    with pytest.raises(ConfigError, match=message):
        build_tiny_minilm_effnet(tiny_bert_dir, **options)

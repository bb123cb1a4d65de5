"""The pilot router and the pilot-routed MoE layer, against plain references."""

from __future__ import annotations

import pytest
import torch
from torch import nn

from tsembed.errors import AdapterError, ConfigError
from tsembed.moe import MoELoRAConfig, MoELoRALinear, attach
from tsembed.moe.pilot import FLOOR_TOLERANCE, NO_FLOOR, PilotRouter, fit_pilots, pilot_floor
from tsembed.moe.routing import adapters_bypassed, set_routing_gates


def _pilots() -> torch.Tensor:
    eye = torch.eye(4)
    return torch.stack([torch.stack([eye[0], eye[1]]), torch.stack([eye[2], torch.zeros(4)])])  # expert 1: 1 pilot


def test_top1_is_one_hot_on_the_nearest_pilot_and_padding_never_wins():
    router = PilotRouter(_pilots())
    # the third input is closer to expert 0's pilots than to expert 1's, but its cosine to expert 1's zero padding
    # row (0) would beat both if padding counted
    x = torch.tensor([[0.1, 1.0, 0.0, 0.0], [0.0, 0.0, 1.0, 0.2], [-1.0, -0.2, -1.0, 0.0]])
    assert router(x).tolist() == [[1.0, 0.0], [0.0, 1.0], [1.0, 0.0]]
    assert router.affinity(x)[2].max() < 0


def test_top_k_weights_are_a_softmax_of_the_affinities():
    router = PilotRouter(_pilots(), top_k=2, temperature=0.5)
    x = torch.tensor([[1.0, 0.0, 1.0, 0.0]])
    affinity = router.affinity(x)[0]
    torch.testing.assert_close(router(x)[0], torch.softmax(affinity / 0.5, dim=-1))


def test_extended_and_kept_keep_each_experts_pilots():
    router = PilotRouter(_pilots())
    bigger = router.extended(torch.eye(4)[3:4].repeat(3, 1))
    assert bigger.pilots.shape == (3, 3, 4)
    assert torch.equal(bigger.pilots[:2, :2], router.pilots) and bigger.pilots[:2, 2].abs().sum() == 0
    assert torch.equal(bigger.kept([2, 0]).pilots[1], bigger.pilots[0])
    with pytest.raises(AdapterError, match="top_k"):
        PilotRouter(_pilots(), top_k=3)


def test_save_and_load_round_trip(tmp_path):
    router = PilotRouter(_pilots(), temperature=0.1)
    router.save(tmp_path / "p.safetensors")
    loaded = PilotRouter.load(tmp_path / "p.safetensors", num_experts=2, top_k=1)
    assert torch.equal(loaded.pilots, router.pilots) and loaded.temperature == 0.1
    with pytest.raises(AdapterError, match=r"p.safetensors: pilots of shape \(2, 2, 4\), expected \[3, k, dim\]"):
        PilotRouter.load(tmp_path / "p.safetensors", num_experts=3, top_k=1)


def test_fit_pilots_finds_each_cluster():
    points = torch.cat([torch.eye(3)[i].repeat(5, 1) + 0.01 * torch.randn(5, 3) for i in range(3)])
    pilots = fit_pilots(points, 3)
    assert sorted(pilots.argmax(dim=-1).tolist()) == [0, 1, 2]


def test_pilot_config_is_sequence_level_topk_without_nulls_hints_or_shared():
    MoELoRAConfig(target_modules=["x"], router="pilot", level="sequence", top_k=1, expert_names=["a", "b", "c", "d"])
    with pytest.raises(ConfigError, match=r"moe.level='token' \(needs 'sequence'\)"):
        MoELoRAConfig(target_modules=["x"], router="pilot")
    with pytest.raises(ConfigError, match="num_null_experts"):
        MoELoRAConfig(target_modules=["x"], router="pilot", level="sequence", num_null_experts=1)
    with pytest.raises(ConfigError, match="expert_names"):
        MoELoRAConfig(target_modules=["x"], expert_names=["a", "a", "b", "c"])
    with pytest.raises(ConfigError, match="moe.router must be one of"):
        MoELoRAConfig(target_modules=["x"], router="oracle")


class _Net(nn.Module):
    def __init__(self) -> None:
        super().__init__()
        self.proj = nn.Linear(6, 5)

    def forward(self, x: torch.Tensor, attention_mask: torch.Tensor | None = None) -> torch.Tensor:
        return self.proj(x)


def _pilot_net(experts: int = 3) -> tuple[_Net, MoELoRALinear]:
    torch.manual_seed(0)
    net = _Net()
    attach(net, MoELoRAConfig(target_modules=["proj"], num_experts=experts, rank=2, alpha=3.0, router="pilot",
                              level="sequence", top_k=1))
    layer = net.proj
    torch.nn.init.normal_(layer.lora_B, std=0.5)
    return net, layer


def test_the_layer_adds_each_gated_expert_like_a_per_expert_loop_and_owns_no_router():
    net, layer = _pilot_net()
    assert layer.router is None and layer.own_router_parameters() == [] and "router.weight" not in (
        layer.adapter_parameters())
    x = torch.randn(4, 3, 6)
    gates = torch.tensor([[1.0, 0, 0], [0, 0.3, 0.7], [0, 0, 1.0], [0.5, 0.5, 0]])
    set_routing_gates(net, gates)
    out = net(x)
    r = layer.rank
    expected = layer.base_layer(x)
    for b in range(4):
        for e in range(3):
            a, bb = layer.lora_A[e * r:(e + 1) * r], layer.lora_B[:, e * r:(e + 1) * r]
            expected[b] = expected[b] + gates[b, e] * layer.scaling * (x[b] @ a.T @ bb.T)
    torch.testing.assert_close(out, expected)
    out.sum().backward()  # the experts train through the dispatch
    assert layer.lora_A.grad is not None and layer.lora_A.grad[2:4].abs().sum() > 0
    with adapters_bypassed(net):
        torch.testing.assert_close(net(x), layer.base_layer(x))
    set_routing_gates(net, None)
    with pytest.raises(AdapterError, match="pilot router"):
        net(x)


def _with_fallback(floors: list[float]) -> PilotRouter:
    pilots = torch.cat([_pilots(), torch.zeros(1, 2, 4)])  # expert 2: no pilots
    return PilotRouter(pilots, fallback=2, floors=torch.tensor(floors))


def test_an_input_below_its_nearest_experts_floor_goes_to_the_fallback():
    router = _with_fallback([0.9, 0.5, NO_FLOOR])
    x = torch.tensor([[1.0, 0.1, 0.0, 0.0],    # near expert 0 (cos 0.995 >= 0.9): expert 0
                      [1.0, 1.0, 0.0, 0.0],    # nearest is expert 0 but at cos 0.71 < 0.9: fallback
                      [0.0, 0.0, 1.0, 1.0],    # expert 1 at cos 0.71 >= 0.5: expert 1
                      [0.0, 0.0, 0.3, 1.0]])   # expert 1 at cos 0.29 < 0.5: fallback
    assert router(x).argmax(dim=-1).tolist() == [0, 2, 1, 2]
    assert router(x).sum(dim=-1).tolist() == [1.0] * 4
    assert router.affinity(x)[:, 2].eq(float("-inf")).all()  # the fallback never wins on affinity


def test_fallback_survives_save_extend_and_prune(tmp_path):
    router = _with_fallback([0.9, 0.5, NO_FLOOR])
    router.save(tmp_path / "p.safetensors")
    loaded = PilotRouter.load(tmp_path / "p.safetensors", num_experts=3, top_k=1)
    assert loaded.fallback == 2 and torch.equal(loaded.floors, router.floors)
    bigger = router.extended(torch.eye(4)[3:4], floor=0.7)
    assert bigger.fallback == 2 and torch.equal(bigger.floors[:3], router.floors)
    assert bigger.floors[3] == pytest.approx(0.7)
    x = torch.tensor([[0.0, 0.0, 0.0, 1.0], [0.0, 0.2, 0.0, 1.0]])
    assert bigger(x).argmax(dim=-1).tolist() == [3, 3]  # the new expert takes its own inputs
    without = bigger.kept([0, 1, 3])  # the fallback pruned: nothing falls back any more
    assert without.fallback is None and (without.floors == NO_FLOOR).all()
    assert without(torch.tensor([[1.0, 1.0, 0.0, 0.0]])).argmax(dim=-1).tolist() == [0]
    assert bigger.kept([2, 0]).fallback == 0


def test_fallback_settings_are_checked():
    with pytest.raises(AdapterError, match="has pilots"):
        PilotRouter(_pilots(), fallback=0)
    with pytest.raises(AdapterError, match="floors without a fallback"):
        PilotRouter(_pilots(), floors=torch.tensor([0.5, 0.5]))
    with pytest.raises(AdapterError, match="one entry per expert"):
        _with_fallback([0.5, 0.5])


def test_an_input_repeating_a_training_input_at_the_floor_is_recognised_whatever_its_rounding():
    """Repeated training instructions put the quantile exactly on one of their affinities; the same instruction
    embedded in another batch (a cosine off by rounding) must still reach its expert."""
    pilots = torch.stack([torch.eye(4)[:1], torch.eye(4)[1:2], torch.zeros(1, 4)])
    near = torch.tensor([0.9, 0.43589, 0.0, 0.0])  # cosine 0.9 to expert 0's pilot
    own = PilotRouter(pilots[:1]).affinity(torch.cat([near.repeat(3, 1), torch.eye(4)[:1].repeat(7, 1)]))[:, 0]
    floor = pilot_floor(own, 0.05)  # the quantile is 0.9, the repeated instruction's own affinity
    assert floor == pytest.approx(0.9 - FLOOR_TOLERANCE, abs=1e-6)
    router = PilotRouter(pilots, fallback=2, floors=torch.tensor([floor, 0.5, NO_FLOOR]))
    rounded = (near + torch.tensor([0.0, 2e-6, 0.0, 0.0]))[None]  # a hair further from the pilot
    assert router.affinity(rounded)[0, 0] < torch.quantile(own, 0.05)  # below the bare quantile...
    assert router(rounded).argmax(dim=-1).tolist() == [0]  # ...and still recognised
    assert router(torch.tensor([[0.8, 0.6, 0.0, 0.0]])).argmax(dim=-1).tolist() == [2]  # clearly below: falls back

import math

import pytest
import torch
from torch import nn

from tsembed.errors import AdapterError
from tsembed.moe import (
    MoELoRAConfig,
    attach,
    aux_losses,
    balance,
    collect_routing,
    load_balance_loss,
    router_z_loss,
    routing_signature,
    set_routing_mask,
    signature_size,
    top1_shares,
)
from tsembed.moe import routing as routing_module


class TinyEncoder(nn.Module):
    """Two linears over [B, L, d]; takes attention_mask like HF models do."""

    def __init__(self) -> None:
        super().__init__()
        self.a = nn.Linear(6, 6)
        self.b = nn.Linear(6, 6)

    def forward(self, x: torch.Tensor, attention_mask: torch.Tensor | None = None) -> torch.Tensor:
        return self.b(torch.relu(self.a(x)))


def test_balanced_router_gives_one():
    probs = torch.tensor([[0.7, 0.3], [0.3, 0.7]])
    assert load_balance_loss(probs).item() == pytest.approx(1.0)


def test_load_balance_hand_computed():
    # f = (1, 0) (both units pick expert 0), P = (0.65, 0.35): L = 2 * (1 * 0.65 + 0 * 0.35) = 1.3
    probs = torch.tensor([[0.7, 0.3], [0.6, 0.4]])
    assert load_balance_loss(probs).item() == pytest.approx(1.3)


def test_z_loss_hand_computed():
    logits = torch.tensor([[0.0, 0.0], [math.log(3.0), 0.0]])
    expected = (math.log(2.0) ** 2 + math.log(4.0) ** 2) / 2
    assert router_z_loss(logits).item() == pytest.approx(expected)


def test_signature_is_normalized_centred_concat():
    sig = routing_signature([torch.tensor([[1.0, 0.0]]), torch.tensor([[0.0, 1.0]])])
    torch.testing.assert_close(sig, torch.tensor([[0.5, -0.5, -0.5, 0.5]]))
    # near-uniform routers: uncentred cosines would all be ≈ 1; centred ones keep the preferences apart
    a = routing_signature([torch.tensor([[0.26, 0.24, 0.25, 0.25]])])
    b = routing_signature([torch.tensor([[0.24, 0.26, 0.25, 0.25]])])
    assert float(a @ b.T) == pytest.approx(-1.0)
    assert routing_signature([torch.tensor([[1.0]])]).abs().sum() == 0  # one expert: no signal, no NaN


@pytest.mark.parametrize("level", ["token", "sequence"])
def test_signature_and_aux_losses_ignore_padding(level):
    torch.manual_seed(0)
    model = TinyEncoder()
    attach(model, MoELoRAConfig(target_modules=["a", "b"], num_experts=3, rank=2, level=level, router_init_std=1.0))
    x = torch.randn(2, 4, 6)
    padded = torch.cat([x, torch.randn(2, 3, 6) * 50], dim=1)  # wild values in pad positions
    mask = torch.cat([torch.ones(2, 4), torch.zeros(2, 3)], dim=1).long()

    model(x)
    clean = collect_routing(model)
    model(padded, attention_mask=mask)  # picked up by the root pre-hook
    with_pads = collect_routing(model)
    torch.testing.assert_close(with_pads.signature, clean.signature)
    torch.testing.assert_close(with_pads.load_balance_loss, clean.load_balance_loss)
    torch.testing.assert_close(with_pads.z_loss, clean.z_loss)
    assert clean.signature.shape == (2, 6)
    torch.testing.assert_close(clean.signature.norm(dim=-1), torch.ones(2))


def test_aux_losses_summed_over_layers_match_hand_computation():
    torch.manual_seed(0)
    model = TinyEncoder()
    attach(model, MoELoRAConfig(target_modules=["a", "b"], num_experts=3, rank=2, level="token"))
    x = torch.randn(2, 4, 6)
    model(x)
    out = collect_routing(model)
    expected_bal = expected_z = 0.0
    for layer in (model.a, model.b):
        inp = x if layer is model.a else torch.relu(model.a(x))
        logits = (inp @ layer.router.weight.T).reshape(-1, 3)
        probs = torch.softmax(logits, dim=-1)
        share = torch.stack([(probs.argmax(-1) == e).float().mean() for e in range(3)])
        expected_bal += 3 * float((share * probs.mean(0)).sum().detach())
        expected_z += float((torch.logsumexp(logits, -1) ** 2).mean().detach())
    assert out.load_balance_loss.item() == pytest.approx(expected_bal, rel=1e-5)
    assert out.z_loss.item() == pytest.approx(expected_z, rel=1e-5)
    assert list(out.layer_probs) == ["a", "b"]


def test_mask_of_wrong_length_is_a_clear_error():
    model = TinyEncoder()
    attach(model, MoELoRAConfig(target_modules=["a"]))
    with pytest.raises(AdapterError, match="set_routing_mask"):
        model(torch.randn(2, 4, 6), attention_mask=torch.ones(2, 3))


def test_explicit_mask_overrides_and_each_forward_starts_fresh():
    model = TinyEncoder()
    attach(model, MoELoRAConfig(target_modules=["a"]))
    set_routing_mask(model, torch.ones(5, 5))
    model(torch.randn(2, 4, 6))  # pre-hook resets the stale mask: no error
    with pytest.raises(AdapterError, match="no MoE-LoRA adapters"):
        collect_routing(nn.Linear(2, 2))


def test_layer_without_real_tokens_adds_no_nan():
    model = TinyEncoder()
    attach(model, MoELoRAConfig(target_modules=["a"], level="token"))
    model(torch.randn(2, 3, 6), attention_mask=torch.zeros(2, 3))
    out = collect_routing(model)
    assert torch.isfinite(out.load_balance_loss) and torch.isfinite(out.z_loss)


def test_balance_hand_computed_and_batched_over_layers():
    # f = (1, 0), P = (0.65, 0.35): 2 * 0.65 = 1.3; f = P = (0.5, 0.5): 1 (balanced)
    share = torch.tensor([[1.0, 0.0], [0.5, 0.5]])
    mean = torch.tensor([[0.65, 0.35], [0.5, 0.5]])
    torch.testing.assert_close(balance(share, mean), torch.tensor([1.3, 1.0]))


def test_aux_losses_from_stats_equal_the_pure_losses_on_the_units():
    """The additive-stats path (training, GradCache, DDP) against load_balance_loss / router_z_loss."""
    torch.manual_seed(0)
    model = TinyEncoder()
    attach(model, MoELoRAConfig(target_modules=["a", "b"], num_experts=3, rank=2, level="token", router_init_std=1.0))
    mask = torch.tensor([[1, 1, 1, 0], [1, 1, 0, 0]])
    model(torch.randn(2, 4, 6), attention_mask=mask)
    records = routing_module.get_routing_state(model).records
    stats = collect_routing(model).layer_stats
    units = {name: s.num_units for name, s in stats.items()}
    balance_loss, z = aux_losses([stats], top1_shares({n: s.top1_counts for n, s in stats.items()}, units), units)
    expected_bal = sum(load_balance_loss(r.probs[r.mask]) for r in records.values())
    expected_z = sum(router_z_loss(r.logits[r.mask]) for r in records.values())
    assert units == {"a": 5, "b": 5}
    torch.testing.assert_close(balance_loss, expected_bal)
    torch.testing.assert_close(z, expected_z)


def test_aux_losses_are_computed_only_when_read(monkeypatch):
    calls = []
    real = routing_module.layer_stats
    monkeypatch.setattr(routing_module, "layer_stats", lambda record: calls.append(1) or real(record))
    model = TinyEncoder()
    attach(model, MoELoRAConfig(target_modules=["a", "b"]))
    model(torch.randn(2, 4, 6))
    out = collect_routing(model)
    assert calls == [] and out.signature.shape == (2, 8)  # an inference forward pays for no statistics
    out.load_balance_loss, out.z_loss, out.layer_stats  # noqa: B018 - read them
    assert len(calls) == 2  # once per layer, then cached


def test_signature_size_is_the_signature_length():
    model = TinyEncoder()
    attach(model, MoELoRAConfig(target_modules=["a", "b"], num_experts=3))
    model(torch.randn(2, 4, 6))
    assert signature_size(model) == collect_routing(model).signature.shape[1] == 6


def test_a_model_pickles_after_a_forward_with_gradient():
    """A DataLoader worker started by spawn pickles the model; the last forward's routing records (tensors with
    gradient history) must not travel with it."""
    import pickle

    from torch import nn

    from tsembed.moe import MoELoRAConfig, attach

    net = nn.Sequential(nn.Linear(4, 4))
    attach(net, MoELoRAConfig(target_modules=["0"], num_experts=2, rank=2))
    net(torch.randn(2, 3, 4)).sum().backward()
    assert net.tsembed_routing_state.records  # the forward left its records
    copy = pickle.loads(pickle.dumps(net))
    assert copy.tsembed_routing_state.records == {} and copy(torch.randn(1, 3, 4)).shape == (1, 3, 4)

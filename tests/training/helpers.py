"""Shared builders for training tests."""

from __future__ import annotations

import torch

from tests.toy_backbone import ToyBackbone
from tsembed.inputs import EmbedInput
from tsembed.model import ModelConfig, TSEmbedModel
from tsembed.moe import MoELoRAConfig, MoELoRALinear
from tsembed.training.step import ContrastiveBatch

WORDS = "red green blue cat dog fish tree house car sun moon star one two three four five six".split()


def toy_model(seed: int = 0, level: str = "token", task_hints: tuple[str, ...] = (), shared: int = 0,
              nulls: int = 0, target_routing: str = "own") -> TSEmbedModel:
    """target_routing 'query' routes sequences top-1 (what it needs); otherwise top-2 at ``level``."""
    backbone = ToyBackbone(seed=seed)
    query = target_routing == "query"
    moe = MoELoRAConfig(target_modules=backbone.default_target_modules, num_experts=4, rank=2,
                        level="sequence" if query else level, top_k=1 if query else 2, router_init_std=0.5,
                        task_hints=list(task_hints), num_shared_experts=shared, num_null_experts=nulls,
                        target_routing=target_routing)
    model = TSEmbedModel(backbone, ModelConfig(backbone=backbone.config(), moe=moe))
    torch.manual_seed(seed + 1)
    for layer in model.modules():
        if isinstance(layer, MoELoRALinear):
            torch.nn.init.normal_(layer.lora_B, std=0.05)
    return model.train()


def toy_batch(n: int = 8, hard: int = 2, seed: int = 0) -> ContrastiveBatch:
    g = torch.Generator().manual_seed(seed)

    def sentence() -> str:
        return " ".join(WORDS[i] for i in torch.randint(len(WORDS), (int(torch.randint(2, 7, (1,), generator=g)),),
                                                         generator=g))

    queries = [EmbedInput(text="query: " + sentence()) for _ in range(n)]
    targets = [EmbedInput(text=sentence()) for _ in range(n + hard)]
    owner = torch.tensor([-1] * n + [i % n for i in range(hard)])
    target_ids = torch.arange(n + hard) + 100 * seed
    if n > 1:
        targets[n - 1] = targets[0]  # a duplicate positive: the same-content guard must mask it
        target_ids[n - 1] = target_ids[0]
    return ContrastiveBatch(queries, targets, torch.arange(n) + 100 * seed, target_ids, owner)


def grads(model: torch.nn.Module) -> dict[str, torch.Tensor]:
    return {n: p.grad.clone() for n, p in model.named_parameters() if p.grad is not None}


def assert_grads_close(actual: dict[str, torch.Tensor], expected: dict[str, torch.Tensor]) -> None:
    """Gradients agree up to float32 summation order.

    Chunked and full passes add the same terms in a different order, and the order also changes with the
    number of intra-op threads, so an element near zero can differ by ~1e-6 of the tensor's largest entry.
    The absolute tolerance therefore scales with that entry; a real error (a missing or doubled term) is
    orders of magnitude larger.
    """
    assert set(actual) == set(expected), set(actual) ^ set(expected)
    for name, want in expected.items():
        scale = float(want.abs().max()) or 1.0
        torch.testing.assert_close(actual[name], want, atol=1e-5 * scale, rtol=1e-4, msg=name)

"""One contrastive training step, full-batch or through GradCache (DESIGN §3.4, issue: GradCache).

GradCache (Gao et al., 2021) embeds the batch in chunks without a graph, computes the loss and its
gradient with respect to the embeddings, then re-runs each chunk with a graph and back-propagates
those cached gradients. The result equals the full-batch loss and gradients (signatures and MoE
auxiliary losses included) while only one chunk's activations are alive at a time. It runs the same
on one process and on many; nothing falls back to a full batch when there is a single GPU.
"""

from __future__ import annotations

import contextlib
from collections.abc import Iterator
from dataclasses import dataclass, field

import torch

from tsembed.model import EmbeddingOutput, TSEmbedModel, move_batch
from tsembed.moe import aux_losses, top1_shares
from tsembed.training.distributed import all_reduce_sum, world_size
from tsembed.training.objective import ContrastiveObjective, ExpertUsage


@dataclass
class ContrastiveBatch:
    """One rank's share of a step: N queries, T = N positives + H hard negatives (in that order)."""

    queries: list
    targets: list
    query_ids: torch.Tensor  # [N] training-row ids (query signature bank)
    target_ids: torch.Tensor  # [T] content ids (target signature bank, same-content guard)
    target_owner: torch.Tensor  # [T] owning query of each hard negative, -1 for positives
    dataset: str | None = None

    def __post_init__(self) -> None:
        n, t = len(self.queries), len(self.targets)
        if t < n or self.target_ids.shape[0] != t or self.target_owner.shape[0] != t or self.query_ids.shape[0] != n:
            raise ValueError(f"inconsistent batch: {n} queries, {t} targets, ids {tuple(self.target_ids.shape)}")


@dataclass
class StepOutput:
    loss: float
    contrastive: float
    load_balance: float
    z_loss: float
    query_signatures: torch.Tensor | None
    target_signatures: torch.Tensor | None
    logs: dict[str, float] = field(default_factory=dict)


def _chunks(items: list, size: int | None) -> list[list]:
    size = size or max(len(items), 1)
    return [items[i : i + size] for i in range(0, len(items), size)]


@contextlib.contextmanager
def _rng_replay(state: dict | None) -> Iterator[dict]:
    """Capture (state None) or replay the RNG so a chunk's re-run sees the same dropout and jitter."""
    saved = {"cpu": torch.get_rng_state(), "cuda": torch.cuda.get_rng_state_all() if torch.cuda.is_available() else []}
    if state is not None:
        torch.set_rng_state(state["cpu"])
        if state["cuda"]:
            torch.cuda.set_rng_state_all(state["cuda"])
    yield saved
    if state is not None:  # a replay must not change what comes after it
        torch.set_rng_state(saved["cpu"])
        if saved["cuda"]:
            torch.cuda.set_rng_state_all(saved["cuda"])


def _totals(outputs: list[EmbeddingOutput]) -> tuple[dict[str, torch.Tensor], dict[str, int]]:
    """Top-1 counts and unit counts per layer over all chunks and all ranks."""
    counts: dict[str, torch.Tensor] = {}
    units: dict[str, int] = {}
    for out in outputs:
        assert out.routing is not None
        for name, s in out.routing.layer_stats.items():
            counts[name] = counts.get(name, 0) + s.top1_counts
            units[name] = units.get(name, 0) + s.num_units
    names = list(counts)
    packed = all_reduce_sum(torch.stack([counts[n].float() for n in names]))  # [layers, E]
    unit_tensor = all_reduce_sum(torch.tensor([float(units[n]) for n in names]))
    return {n: packed[i] for i, n in enumerate(names)}, {n: int(unit_tensor[i]) for i, n in enumerate(names)}


def _shares(outputs: list[EmbeddingOutput], usage: ExpertUsage | None,
            commit: bool) -> tuple[dict[str, torch.Tensor], dict[str, int]]:
    """The top-1 shares f_e the balance loss uses (this step's, or the running ones) and units per layer."""
    counts, units = _totals(outputs)
    shares = top1_shares(counts, units)
    return (shares if usage is None else usage.update(shares, commit)), units


def _output(total, contrastive, lb, z, q_sig, t_sig, logs) -> StepOutput:
    return StepOutput(total.item(), contrastive.item(), lb.detach().item(), z.detach().item(), q_sig, t_sig, logs)


def contrastive_step(
    model: TSEmbedModel,
    objective: ContrastiveObjective,
    batch: ContrastiveBatch,
    eans_active: bool,
    chunk_size: int | None = None,
    backward: bool = True,
    usage: ExpertUsage | None = None,
) -> StepOutput:
    """Compute the loss of ``batch`` and (if ``backward``) accumulate its gradients into the model.

    ``chunk_size`` None embeds the batch in one pass with a graph; an integer uses GradCache. ``usage``
    (``loss.load_balance_window`` > 1) supplies the running top-1 shares of the balance loss; a step that
    does not train (``backward=False``) reads it without updating it.
    """
    device = next(model.parameters()).device
    q_prepared = [move_batch(model.prepare(c), device) for c in _chunks(batch.queries, chunk_size)]
    t_prepared = [move_batch(model.prepare(c), device) for c in _chunks(batch.targets, chunk_size)]
    ids, owner = batch.target_ids.to(device), batch.target_owner.to(device)
    lb_w, z_w = objective.loss_config.load_balance_weight, objective.loss_config.z_loss_weight
    scale = world_size()  # DDP averages gradients over ranks; the aux surrogate is a sum over ranks

    def combine(outputs: list[EmbeddingOutput]) -> tuple[torch.Tensor, torch.Tensor | None]:
        emb = torch.cat([o.embeddings for o in outputs])
        sig = None if outputs[0].routing is None else torch.cat([o.routing.signature for o in outputs])
        return emb, sig

    if chunk_size is None:
        q_out = [model(**p) for p in q_prepared]
        t_out = [model(**p) for p in t_prepared]
        (q, q_sig), (t, t_sig) = combine(q_out), combine(t_out)
        result = objective(q, t, q_sig, t_sig, ids, owner, eans_active)
        lb = z = torch.zeros((), device=device)
        if model.has_adapters:
            shares, units = _shares(q_out + t_out, usage, backward)
            lb, z = aux_losses([o.routing.layer_stats for o in q_out + t_out], shares, units)
        total = (result.loss + lb_w * lb + z_w * z).detach()
        if backward:
            (result.loss + scale * (lb_w * lb + z_w * z)).backward()
        return _output(total, result.loss, lb, z, q_sig, t_sig, result.logs)

    # GradCache pass 1: embeddings and routing statistics without a graph
    rng_states: list[dict] = []
    outputs: list[EmbeddingOutput] = []
    with torch.no_grad():
        for prepared in q_prepared + t_prepared:
            with _rng_replay(None) as state:
                rng_states.append(state)
                outputs.append(model(**prepared))
    n_q = len(q_prepared)
    (q, q_sig), (t, t_sig) = combine(outputs[:n_q]), combine(outputs[n_q:])
    q_leaf, t_leaf = q.detach().requires_grad_(True), t.detach().requires_grad_(True)
    result = objective(q_leaf, t_leaf, q_sig, t_sig, ids, owner, eans_active)
    lb = z = torch.zeros((), device=device)
    shares: dict[str, torch.Tensor] = {}
    units: dict[str, int] = {}
    if model.has_adapters:
        shares, units = _shares(outputs, usage, backward)
        lb, z = aux_losses([o.routing.layer_stats for o in outputs], shares, units)
    total = (result.loss + lb_w * lb + z_w * z).detach()
    if backward:
        result.loss.backward()  # gradients w.r.t. the cached embeddings (and a learnable τ)
        grads = list(torch.split(q_leaf.grad, [o.embeddings.shape[0] for o in outputs[:n_q]]))
        grads += list(torch.split(t_leaf.grad, [o.embeddings.shape[0] for o in outputs[n_q:]]))
        # pass 2: re-run each chunk with a graph, replaying its RNG, and push the cached gradient through
        for prepared, state, grad in zip(q_prepared + t_prepared, rng_states, grads, strict=True):
            with _rng_replay(state):
                out = model(**prepared)
            surrogate = (out.embeddings * grad).sum()
            if model.has_adapters:
                chunk_lb, chunk_z = aux_losses([out.routing.layer_stats], shares, units)
                surrogate = surrogate + scale * (lb_w * chunk_lb + z_w * chunk_z)
            surrogate.backward()
    return _output(total, result.loss, lb, z, q_sig, t_sig, result.logs)


"""One contrastive training step, full-batch or through GradCache (docs/design.md §3.4, issue: GradCache).

GradCache (Gao et al., 2021) embeds the batch in chunks without a graph, computes the loss and its
gradient with respect to the embeddings, then re-runs each chunk with a graph and back-propagates
those cached gradients. The result equals the full-batch loss and gradients (signatures and MoE
auxiliary losses included) while only one chunk's activations are alive at a time. It runs the same
on one process and on many; nothing falls back to a full batch when there is a single GPU.
"""

from __future__ import annotations

import contextlib
from collections.abc import Callable, Iterator
from dataclasses import dataclass, field, replace
from typing import Any

import torch
from torch import nn
from torch.nn.parallel import DistributedDataParallel

from tsembed.model import EmbeddingOutput, TSEmbedModel, move_batch, prepared_size
from tsembed.moe import chosen_routes, forced_routes, top1_shares
from tsembed.precision import autocast
from tsembed.training.auxiliary import RoutingTerms, step_total
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


@dataclass
class PreparedBatch:
    """A batch's inputs as the backbone takes them (CPU tensors), in GradCache chunks (one chunk: no GradCache).

    Built off the training thread by ``tsembed.training.data.StepBatches`` (tokenising, image decoding);
    ``contrastive_step`` only moves it to the device.
    """

    queries: list[dict]
    targets: list[dict]
    # length bucketing: the batch index of each position in chunk order (None: the batch's own order)
    query_order: list[int] | None = None
    target_order: list[int] | None = None

    def pin_memory(self) -> PreparedBatch:
        """Page-locked copies, so host-to-GPU copies run asynchronously (called by the DataLoader)."""
        def pin(chunks: list[dict]) -> list[dict]:
            return [{k: v.pin_memory() if isinstance(v, torch.Tensor) else v for k, v in c.items()} for c in chunks]
        return replace(self, queries=pin(self.queries), targets=pin(self.targets))

    def with_targets(self, chunks: list[dict], count: int) -> PreparedBatch:
        """These chunks of ``count`` more targets (mined negatives) appended after the batch's own."""
        order = None
        if self.target_order is not None:
            order = self.target_order + list(range(len(self.target_order), len(self.target_order) + count))
        return replace(self, targets=self.targets + chunks, target_order=order)


def prepare_chunks(model: TSEmbedModel, inputs: list, chunk_size: int | None) -> list[dict]:
    """``model.prepare`` of each GradCache chunk of ``inputs`` (CPU work: tokenising, loading images)."""
    return [model.prepare(c) for c in _chunks(inputs, chunk_size)]


def bucket_order(inputs: list, chunk_size: int | None) -> list[int] | None:
    """An order that puts inputs of similar length into the same GradCache chunk (text-only apart from those
    with an image, then by text length), so a chunk pads to less; None when there is one chunk or it changes
    nothing. The loss and gradients do not depend on it (``contrastive_step`` restores the batch order)."""
    if chunk_size is None or len(inputs) <= chunk_size:
        return None
    order = sorted(range(len(inputs)), key=lambda i: (getattr(inputs[i], "image", None) is not None,
                                                     len(getattr(inputs[i], "text", None) or "")))
    return None if order == list(range(len(inputs))) else order


def _ordered(inputs: list, order: list[int] | None) -> list:
    return inputs if order is None else [inputs[i] for i in order]


def prepare_batch(model: TSEmbedModel, batch: ContrastiveBatch, chunk_size: int | None) -> PreparedBatch:
    q_order, t_order = bucket_order(batch.queries, chunk_size), bucket_order(batch.targets, chunk_size)
    return PreparedBatch(prepare_chunks(model, _ordered(batch.queries, q_order), chunk_size),
                         prepare_chunks(model, _ordered(batch.targets, t_order), chunk_size), q_order, t_order)


class ContrastiveTask(nn.Module):
    """The embedding model and the objective as one module, so that DDP wraps a whole step (open_clip's
    ``TrainingTask``); the bare model stays what ``encode`` and the server call.

    DDP finds the parameters a step used by walking back from what its forward returned, and a parameter
    used outside that forward (e.g. a learnable τ in the loss) breaks its bookkeeping. So ``forward`` embeds
    chunks *and* applies ``head`` to them: the loss of a full batch, or GradCache's per-chunk surrogate.
    The forward passes run under autocast in ``precision`` (``run.precision``); the loss stays fp32.
    """

    def __init__(self, model: TSEmbedModel, objective: ContrastiveObjective, precision: str = "fp32") -> None:
        super().__init__()
        self.model, self.objective, self.precision = model, objective, precision

    def embed(self, prepared: dict, routes: dict[str, torch.Tensor] | None = None) -> EmbeddingOutput:
        with autocast(_device(self.model), self.precision), forced_routes(self.model.backbone, routes):
            return self.model(**prepared)

    def forward(self, chunks: list[dict], head: Callable[[list[EmbeddingOutput]], Any],
                routes: ChunkRoutes | None = None) -> Any:
        outputs: list[EmbeddingOutput] = []
        for i, chunk in enumerate(chunks):
            outputs.append(self.embed(chunk, None if routes is None else routes(i, outputs)))
        return head(outputs)


#: The routes a chunk must be embedded with, given its index and the outputs of the chunks before it (None: routed
#: by itself); how targets take their queries' experts (moe.target_routing="query").
ChunkRoutes = Callable[[int, list[EmbeddingOutput]], "dict[str, torch.Tensor] | None"]


def target_chunk_routes(query_outputs: list[EmbeddingOutput], query_order: torch.Tensor | None,
                        target_owner: torch.Tensor, target_order: torch.Tensor | None,
                        target_sizes: list[int]) -> list[dict[str, torch.Tensor]]:
    """Each target chunk's routes: every target takes the top-1 expert, layer by layer, of the query it belongs to
    (a positive: the query of its row; a hard negative: ``target_owner``). Chunks are in bucketed order (``*_order``:
    the batch index at each position), as the step embeds them."""
    per_chunk = [chosen_routes(o.routing) for o in query_outputs if o.routing is not None]
    if len(per_chunk) != len(query_outputs):
        raise ValueError("target routing 'query' needs the queries' routing: does the model have adapters?")
    routes = {name: torch.cat([c[name] for c in per_chunk]) for name in per_chunk[0]}  # queries, chunk order
    if query_order is not None:  # back to batch order
        routes = {name: r.new_empty(r.shape).index_copy_(0, query_order, r) for name, r in routes.items()}
    positions = torch.arange(target_owner.shape[0], device=target_owner.device)
    owner = torch.where(target_owner >= 0, target_owner, positions)  # positives come first, one per query
    if target_order is not None:
        owner = owner[target_order]
    owner = owner.to(next(iter(routes.values())).device)
    return [{name: r[part] for name, r in routes.items()} for part in torch.split(owner, target_sizes)]


def _device(module: nn.Module) -> torch.device:
    return next(module.parameters()).device


def _bare(task: nn.Module) -> ContrastiveTask:
    return task.module if isinstance(task, DistributedDataParallel) else task


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
    # on the counts' device: NCCL reduces no CPU tensor (gloo does, so only tests/training/device_guard.py sees it)
    unit_tensor = all_reduce_sum(torch.tensor([float(units[n]) for n in names], device=packed.device))
    return {n: packed[i] for i, n in enumerate(names)}, {n: int(unit_tensor[i]) for i, n in enumerate(names)}


def _shares(model: TSEmbedModel, outputs: list[EmbeddingOutput], usage: ExpertUsage | None,
            commit: bool) -> tuple[dict[str, torch.Tensor], dict[str, int]]:
    """The top-1 shares f_e the balance loss uses (this step's, or the running ones) and units per layer; none
    for a model without adapters."""
    if not model.has_adapters:
        return {}, {}
    counts, units = _totals(outputs)
    shares = top1_shares(counts, units)
    return (shares if usage is None else usage.update(shares, commit)), units


def _routing_terms(outputs: list[EmbeddingOutput], shares: dict[str, torch.Tensor], units: dict[str, int],
                   device: torch.device) -> RoutingTerms:
    stats = [o.routing.layer_stats for o in outputs] if shares else []
    return RoutingTerms.of(stats, shares, units, device)


def _output(result, routing: RoutingTerms, config, q_sig, t_sig) -> StepOutput:
    """What the step reports: the total (one rank's view, ``ranks`` = 1) and its parts."""
    total = step_total(result.loss, routing, config).detach()
    return StepOutput(total.item(), result.loss.item(), routing.load_balance.detach().item(),
                      routing.z_loss.detach().item(), q_sig, t_sig, result.logs)


def contrastive_step(
    model: TSEmbedModel,
    objective: ContrastiveObjective,
    batch: ContrastiveBatch,
    eans_active: bool,
    chunk_size: int | None = None,
    backward: bool = True,
    usage: ExpertUsage | None = None,
    *,
    prepared: PreparedBatch | None = None,
    task: nn.Module | None = None,
    scaler: torch.amp.GradScaler | None = None,
) -> StepOutput:
    """Compute the loss of ``batch`` and (if ``backward``) accumulate its gradients into the model.

    ``chunk_size`` None embeds the batch in one pass with a graph; an integer uses GradCache. ``usage``
    (``loss.load_balance_window`` > 1) supplies the running top-1 shares of the balance loss; a step that
    does not train (``backward=False``) reads it without updating it.

    ``prepared``: the batch already prepared in those chunks (e.g. by DataLoader workers); None prepares it here.
    ``task``: a ``ContrastiveTask`` over ``model`` and ``objective``, possibly wrapped in DDP, which then
    averages the gradients over ranks during the backward (the last GradCache chunk's); None: a plain fp32 one.
    ``scaler``: fp16's gradient scaler; every backward is scaled by it, the caller unscales before stepping.
    """
    task = task if task is not None else ContrastiveTask(model, objective)
    if _bare(task).model is not model or _bare(task).objective is not objective:
        raise ValueError("task must wrap the model and objective given to contrastive_step")
    if not backward:  # no backward follows, so DDP must not wait for one
        task = _bare(task)
    scale = scaler.scale if scaler is not None else (lambda loss: loss)
    device = _device(model)
    prepared = prepared if prepared is not None else prepare_batch(model, batch, chunk_size)
    q_prepared = [move_batch(p, device) for p in prepared.queries]
    t_prepared = [move_batch(p, device) for p in prepared.targets]
    n_q = len(q_prepared)
    ids, owner = batch.target_ids.to(device), batch.target_owner.to(device)
    ranks = world_size()  # gradients are averaged over ranks; the routing terms are sums over ranks

    q_order, t_order = _index(prepared.query_order, device), _index(prepared.target_order, device)

    def combine(outputs: list[EmbeddingOutput], order: torch.Tensor | None) -> tuple[torch.Tensor,
                                                                                     torch.Tensor | None]:
        """Chunks' embeddings and signatures concatenated, in the batch's order (bucketing undone)."""
        emb = torch.cat([o.embeddings for o in outputs])
        sig = None if outputs[0].routing is None else torch.cat([o.routing.signature for o in outputs])
        if order is not None:
            inverse = torch.empty_like(order)
            inverse[order] = torch.arange(order.shape[0], device=order.device)
            emb, sig = emb[inverse], None if sig is None else sig[inverse]
        return emb, sig

    t_sizes = [prepared_size(p) for p in t_prepared]
    if chunk_size is None:
        routes = None
        if model.query_routed:
            cache: list = []

            def routes(i: int, outputs: list[EmbeddingOutput]) -> dict[str, torch.Tensor] | None:
                if i < n_q:
                    return None
                if not cache:
                    cache.extend(target_chunk_routes(outputs[:n_q], q_order, owner, t_order, t_sizes))
                return cache[i - n_q]

        def full_loss(outputs: list[EmbeddingOutput]) -> tuple:
            (q, q_sig), (t, t_sig) = combine(outputs[:n_q], q_order), combine(outputs[n_q:], t_order)
            result = objective(q, t, q_sig, t_sig, ids, owner, eans_active)
            shares, units = _shares(model, outputs, usage, backward)
            routing = _routing_terms(outputs, shares, units, device)
            return step_total(result.loss, routing, objective.loss_config, ranks), result, routing, q_sig, t_sig

        trained, result, routing, q_sig, t_sig = task(q_prepared + t_prepared, full_loss, routes)
        if backward:
            scale(trained).backward()
        return _output(result, routing, objective.loss_config, q_sig, t_sig)

    # GradCache pass 1: embeddings and routing statistics without a graph (a frozen vision tower's features are
    # kept for pass 2: the backbone's reuse_vision, e.g. Qwen2VLBackbone's and MiniLMEfficientNetBackbone's)
    reuse = getattr(model.backbone, "reuse_vision", None)
    with reuse() if reuse is not None else contextlib.nullcontext():
        return _gradcache(model, objective, batch, eans_active, backward, usage, task, scale, q_prepared,
                          t_prepared, ids, owner, combine, ranks, q_order, t_order, t_sizes)


def _index(order: list[int] | None, device: torch.device) -> torch.Tensor | None:
    return None if order is None else torch.tensor(order, dtype=torch.long, device=device)


def _gradcache(model, objective, batch, eans_active, backward, usage, task, scale, q_prepared, t_prepared, ids,
               owner, combine, ranks, q_order, t_order, t_sizes) -> StepOutput:
    """GradCache's two passes (``contrastive_step`` with a ``chunk_size``)."""
    device = _device(model)
    n_q = len(q_prepared)
    bare = _bare(task)
    rng_states: list[dict] = []
    outputs: list[EmbeddingOutput] = []
    chunk_routes: list[dict[str, torch.Tensor] | None] = [None] * n_q
    with torch.no_grad():
        for i, chunk in enumerate(q_prepared + t_prepared):
            if i == n_q and model.query_routed:
                chunk_routes += target_chunk_routes(outputs, q_order, owner, t_order, t_sizes)
            with _rng_replay(None) as state:
                rng_states.append(state)
                outputs.append(bare.embed(chunk, chunk_routes[i] if i < len(chunk_routes) else None))
    (q, q_sig), (t, t_sig) = combine(outputs[:n_q], q_order), combine(outputs[n_q:], t_order)
    q_leaf, t_leaf = q.detach().requires_grad_(True), t.detach().requires_grad_(True)
    result = objective(q_leaf, t_leaf, q_sig, t_sig, ids, owner, eans_active)
    shares, units = _shares(model, outputs, usage, backward)
    routing = _routing_terms(outputs, shares, units, device)
    if backward:
        # gradients w.r.t. the cached embeddings (and a learnable τ), scaled like every backward of the step
        scale(result.loss).backward()
        # back in chunk order (bucketing) before splitting by chunk
        q_grad = q_leaf.grad if q_order is None else q_leaf.grad[q_order]
        t_grad = t_leaf.grad if t_order is None else t_leaf.grad[t_order]
        grads = list(torch.split(q_grad, [o.embeddings.shape[0] for o in outputs[:n_q]]))
        grads += list(torch.split(t_grad, [o.embeddings.shape[0] for o in outputs[n_q:]]))

        def surrogate(grad: torch.Tensor) -> Callable[[list[EmbeddingOutput]], torch.Tensor]:
            def head(chunk_outputs: list[EmbeddingOutput]) -> torch.Tensor:
                (out,) = chunk_outputs
                value = (out.embeddings * grad).sum()  # grad is already scaled
                if shares:  # this chunk's share of the routing terms, weighted as in the full-batch loss
                    chunk = _routing_terms([out], shares, units, device)
                    value = value + scale(chunk.weighted(objective.loss_config, ranks))
                return value
            return head

        routes = chunk_routes + [None] * (len(outputs) - len(chunk_routes))
        _backward_chunks(task, q_prepared + t_prepared, rng_states, [surrogate(g) for g in grads], routes)
    return _output(result, routing, objective.loss_config, q_sig, t_sig)


def _backward_chunks(task: nn.Module, chunks: list[dict], rng_states: list[dict], heads: list[Callable],
                     routes: list[dict[str, torch.Tensor] | None]) -> None:
    """GradCache pass 2: re-run each chunk with a graph, replaying its RNG, and back-propagate its head.

    Under DDP the gradients accumulate locally (``no_sync``) and are averaged during the last chunk's backward,
    bucket by bucket as they become ready: one reduction per step, overlapping that backward.
    """
    ddp = isinstance(task, DistributedDataParallel)
    for i, (chunk, state, head, chunk_routes) in enumerate(zip(chunks, rng_states, heads, routes, strict=True)):
        with task.no_sync() if ddp and i < len(chunks) - 1 else contextlib.nullcontext():
            with _rng_replay(state):
                value = task([chunk], head, None if chunk_routes is None else lambda _i, _o, r=chunk_routes: r)
            value.backward()

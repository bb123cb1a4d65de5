"""Two gloo processes must give the loss and gradients of one process with the concatenated batch."""

import os
import socket

import pytest
import torch
import torch.distributed as dist
import torch.multiprocessing as mp

from tsembed.training.eans import EANSConfig
from tsembed.training.objective import ContrastiveObjective, LossConfig
from tsembed.training.step import ContrastiveBatch, contrastive_step

from .helpers import grads, toy_batch, toy_model


def _combined(world: int) -> tuple[list[ContrastiveBatch], ContrastiveBatch]:
    """The ranks' batches and their concatenation (all positives first, then all hard negatives)."""
    n, hard = 4, 2
    parts = [toy_batch(n=n, hard=hard, seed=r) for r in range(world)]
    queries = [q for p in parts for q in p.queries]
    targets = [t for p in parts for t in p.targets[:n]] + [t for p in parts for t in p.targets[n:]]
    ids = torch.cat([p.target_ids[:n] for p in parts] + [p.target_ids[n:] for p in parts])
    owner = torch.cat([torch.full((n * world,), -1)] + [p.target_owner[n:] + r * n for r, p in enumerate(parts)])
    query_ids = torch.cat([p.query_ids for p in parts])
    return parts, ContrastiveBatch(queries, targets, query_ids, ids, owner)


def _worker(rank: int, world: int, port: int, chunk, out_path: str) -> None:
    os.environ.update(MASTER_ADDR="127.0.0.1", MASTER_PORT=str(port))
    torch.set_num_threads(1)
    dist.init_process_group("gloo", rank=rank, world_size=world)
    try:
        model = toy_model()
        objective = ContrastiveObjective(LossConfig(tau=0.05, load_balance_weight=0.1), EANSConfig(mode="weight"))
        parts, _ = _combined(world)
        out = contrastive_step(model, objective, parts[rank], eans_active=True, chunk_size=chunk)
        g = grads(model)
        for value in g.values():  # what DDP does: average gradients over ranks
            dist.all_reduce(value)
            value /= world
        losses = [torch.zeros(1) for _ in range(world)]
        dist.all_gather(losses, torch.tensor([out.contrastive]))
        if rank == 0:
            torch.save({"grads": g, "loss": float(torch.cat(losses).mean())}, out_path)
    finally:
        dist.destroy_process_group()


def _free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


@pytest.mark.slow  # starts two processes
@pytest.mark.parametrize("chunk", [None, 3])
def test_two_processes_equal_one_process_with_whole_batch(tmp_path, chunk):
    world = 2
    out_path = str(tmp_path / "rank0.pt")
    mp.start_processes(_worker, args=(world, _free_port(), chunk, out_path), nprocs=world, start_method="spawn")
    result = torch.load(out_path)

    model = toy_model()
    objective = ContrastiveObjective(LossConfig(tau=0.05, load_balance_weight=0.1), EANSConfig(mode="weight"))
    _, whole = _combined(world)
    single = contrastive_step(model, objective, whole, eans_active=True)
    assert result["loss"] == pytest.approx(single.contrastive, rel=1e-5)
    expected = grads(model)
    assert set(result["grads"]) == set(expected)
    for name, value in expected.items():
        torch.testing.assert_close(result["grads"][name], value, atol=1e-6, rtol=1e-4, msg=name)

"""Two gloo processes must give the loss and gradients of one process with the concatenated batch."""

import json
import math
import os
import socket
from pathlib import Path

import pytest
import torch
import torch.distributed as dist
import torch.multiprocessing as mp
from torch.nn.parallel import DistributedDataParallel

from tsembed.training.distributed import wrap_ddp
from tsembed.training.eans import EANSConfig
from tsembed.training.objective import ContrastiveObjective, LossConfig
from tsembed.training.step import ContrastiveBatch, ContrastiveTask, contrastive_step
from tsembed.training.trainer import Trainer, init_distributed, shutdown_distributed

from .device_guard import VirtualDevice
from .helpers import assert_grads_close, grads, toy_batch, toy_model

DEVICE = torch.device("cpu")  # the training device; VirtualDevice keeps host tensors out of the collectives


def _combined(world: int, step: int = 0, hard: tuple[int, ...] = (2, 2)) -> tuple[list[ContrastiveBatch],
                                                                                 ContrastiveBatch]:
    """The ranks' batches (rank r with hard[r] hard negatives) and their concatenation (all positives first,
    then all hard negatives)."""
    n = 4
    parts = [toy_batch(n=n, hard=hard[r], seed=r + 10 * step) for r in range(world)]
    queries = [q for p in parts for q in p.queries]
    targets = [t for p in parts for t in p.targets[:n]] + [t for p in parts for t in p.targets[n:]]
    ids = torch.cat([p.target_ids[:n] for p in parts] + [p.target_ids[n:] for p in parts])
    owner = torch.cat([torch.full((n * world,), -1)] + [p.target_owner[n:] + r * n for r, p in enumerate(parts)])
    query_ids = torch.cat([p.query_ids for p in parts])
    return parts, ContrastiveBatch(queries, targets, query_ids, ids, owner)


def _in_process_group(rank: int, world: int, port: int, body, *args) -> None:
    """``body(rank, world, *args)`` in a gloo group started as torchrun starts one, then the group goes.

    DDP must go first (see ``shutdown_distributed``; destroying the group under a live DDP deadlocked about
    one run in ten): ``body`` keeps its DDP objects to itself, so they are freed when it returns.
    """
    os.environ.update(MASTER_ADDR="127.0.0.1", MASTER_PORT=str(port), WORLD_SIZE=str(world), RANK=str(rank),
                      LOCAL_RANK=str(rank))
    torch.set_num_threads(1)
    init_distributed()
    try:
        with VirtualDevice(DEVICE):  # what NCCL refuses fails here too
            body(rank, world, *args)
    finally:
        shutdown_distributed()


def _step_body(rank: int, world: int, chunk, out_path: str, hard: tuple[int, ...]) -> None:
    model = toy_model().to(DEVICE)
    objective = ContrastiveObjective(LossConfig(tau=0.05, load_balance_weight=0.1),
                                     EANSConfig(mode="weight")).to(DEVICE)
    parts, _ = _combined(world, hard=hard)
    task = wrap_ddp(ContrastiveTask(model, objective), DEVICE)  # DDP averages the gradients
    out = contrastive_step(model, objective, parts[rank], eans_active=True, chunk_size=chunk, task=task)
    g = grads(model)
    losses = [torch.zeros(1, device=DEVICE) for _ in range(world)]
    dist.all_gather(losses, torch.tensor([out.contrastive], device=DEVICE))
    if rank == 0:
        torch.save({"grads": g, "loss": float(torch.cat(losses).mean())}, out_path)


def _free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


@pytest.mark.slow  # starts two processes
@pytest.mark.parametrize(("chunk", "hard"), [(None, (2, 2)), (3, (2, 2)), (3, (2, 0)), (None, (0, 3))])
def test_two_processes_equal_one_process_with_whole_batch(tmp_path, chunk, hard):
    """Also with uneven hard negatives (one rank's rows have none, as when MMEB-train mixes subsets with and
    without ``neg_*``): the gathers pad to the largest rank and drop the padding."""
    world = 2
    out_path = str(tmp_path / "rank0.pt")
    mp.start_processes(_in_process_group, args=(world, _free_port(), _step_body, chunk, out_path, hard),
                       nprocs=world, start_method="spawn")
    result = torch.load(out_path)

    model = toy_model()
    objective = ContrastiveObjective(LossConfig(tau=0.05, load_balance_weight=0.1), EANSConfig(mode="weight"))
    _, whole = _combined(world, hard=hard)
    single = contrastive_step(model, objective, whole, eans_active=True)
    assert result["loss"] == pytest.approx(single.contrastive, rel=1e-5)
    expected = grads(model)
    assert_grads_close(result["grads"], expected)


STEPS = 3


def _train(model, objective, batches: list[ContrastiveBatch], task=None) -> list[float]:
    """A few AdamW steps through GradCache (chunks of 3) with a learnable τ; the contrastive loss of each."""
    params = [p for p in model.parameters() if p.requires_grad] + [objective.log_tau]
    optimizer = torch.optim.AdamW(params, lr=1e-2)
    losses = []
    for batch in batches:
        out = contrastive_step(model, objective, batch, eans_active=True, chunk_size=3, task=task)
        optimizer.step()
        optimizer.zero_grad(set_to_none=True)
        losses.append(out.contrastive)
    return losses


def _objective() -> ContrastiveObjective:
    return ContrastiveObjective(LossConfig(tau=0.05, load_balance_weight=0.1, learnable_tau=True),
                                EANSConfig(mode="weight"))


def _ddp_steps_body(rank: int, world: int, out_path: str) -> None:
    model, objective = toy_model().to(DEVICE), _objective().to(DEVICE)
    task = wrap_ddp(ContrastiveTask(model, objective), DEVICE)
    losses = _train(model, objective, [_combined(world, s)[0][rank] for s in range(STEPS)], task)
    gathered = [torch.zeros(STEPS, device=DEVICE) for _ in range(world)]
    dist.all_gather(gathered, torch.tensor(losses, device=DEVICE))
    if rank == 0:
        state = {n: p.detach().clone() for n, p in model.named_parameters() if p.requires_grad}
        torch.save({"state": state, "tau": objective.log_tau.detach().clone(),
                    "losses": torch.stack(gathered).mean(0)}, out_path)


@pytest.mark.slow  # starts two processes
def test_ddp_training_with_gradcache_and_a_learnable_tau_equals_one_process(tmp_path):
    """Several optimiser steps: a learnable τ (used outside DDP's forward by GradCache's first pass) and
    parameters used only by earlier chunks are averaged too, or the ranks' weights drift apart."""
    world = 2
    out_path = str(tmp_path / "rank0.pt")
    mp.start_processes(_in_process_group, args=(world, _free_port(), _ddp_steps_body, out_path), nprocs=world,
                       start_method="spawn")
    result = torch.load(out_path)

    model, objective = toy_model(), _objective()
    losses = _train(model, objective, [_combined(world, s)[1] for s in range(STEPS)])
    torch.testing.assert_close(result["losses"], torch.tensor(losses), rtol=1e-4, atol=1e-5)
    torch.testing.assert_close(result["tau"], objective.log_tau.detach(), rtol=1e-4, atol=1e-6)
    for name, value in model.named_parameters():
        if value.requires_grad:
            torch.testing.assert_close(result["state"][name], value.detach(), rtol=1e-4, atol=1e-5, msg=name)


def _trainer_body(rank: int, world: int, config, out_path: str) -> None:
    trainer = Trainer(config, model=toy_model())
    assert isinstance(trainer.task, DistributedDataParallel)
    # each rank's own bank would see its own drift: rank 1's says "stable" from the start, rank 0's never
    trainer.target_bank.drift = lambda: 1.0 if rank == 0 else 0.0
    trainer.fit()
    flat = torch.cat([p.detach().flatten() for p in trainer.trainable])
    banks = torch.cat([trainer.target_bank.signatures.flatten(), trainer.query_bank.signatures.flatten()]).to(DEVICE)
    replicas = [torch.zeros_like(flat) for _ in range(world)]
    dist.all_gather(replicas, flat)
    bank_copies = [torch.zeros_like(banks) for _ in range(world)]
    dist.all_gather(bank_copies, banks)
    switch = [torch.zeros(1, device=DEVICE) for _ in range(world)]
    dist.all_gather(switch, torch.tensor([float(trainer.switch_step)], device=DEVICE))
    if rank == 0:
        torch.save({"replicas": replicas, "banks": bank_copies, "switch": [int(x) for x in switch],
                    "losses": [r["loss"] for r in trainer.history],
                    "targets": [r["num_targets"] for r in trainer.history]}, out_path)


@pytest.mark.slow  # starts two processes, each with a DataLoader worker
def test_trainer_under_two_processes_keeps_the_replicas_identical(tmp_path):
    """The trainer as torchrun runs it: DDP over model + objective, GradCache, DataLoader workers, EANS stage 2
    (``mine``) after a ``stability`` switch, one dataset with hard negatives and one without (uneven targets)."""
    from .test_trainer import make_config, write_train_files

    files = write_train_files(tmp_path)
    path = Path(files[1]["path"])  # "animals" without hard negatives
    path.write_text("".join(json.dumps({**json.loads(line), "neg_text": ""}) + "\n"
                            for line in path.read_text().splitlines()))
    config = make_config(files, tmp_path, data={"num_workers": 1, "batch_size": 4},
                         run={"chunk_size": 3}, loss={"learnable_tau": True}, eans={"mode": "mine"},
                         schedule={"stage1_steps": 5, "switch": "stability", "min_stage1_steps": 2,
                                   "stability_interval": 1, "stability_threshold": 0.6})
    out_path = str(tmp_path / "rank0.pt")
    mp.start_processes(_in_process_group, args=(2, _free_port(), _trainer_body, config, out_path), nprocs=2,
                       start_method="spawn")
    result = torch.load(out_path)
    assert len(result["losses"]) == 6 and all(math.isfinite(x) for x in result["losses"])
    assert result["switch"] == [2, 2]  # both ranks switch on the mean drift 0.5 < 0.6, at the same step
    assert len(set(result["targets"])) > 1  # steps with and without hard negatives (and mined ones)
    torch.testing.assert_close(result["replicas"][1], result["replicas"][0], rtol=0, atol=0)
    torch.testing.assert_close(result["banks"][1], result["banks"][0], rtol=0, atol=0)
    assert (tmp_path / "run" / "model" / "tsembed_config.json").is_file()  # rank 0 saved the model


def _nan_body(rank: int, world: int, config, out_dir: str) -> None:
    from tsembed.training.trainer import TrainingDiverged

    trainer = Trainer(config, model=toy_model())
    if rank == 1:  # this rank's loss only becomes NaN
        trainer.objective.log_tau.data = torch.tensor(math.nan, device=DEVICE)
    try:
        trainer.fit()
        message = "no error"
    except TrainingDiverged as error:
        message = str(error)
    Path(out_dir, f"rank{rank}.txt").write_text(message)


@pytest.mark.slow  # starts two processes
def test_a_nan_on_one_rank_stops_every_rank_at_that_step(tmp_path):
    """Not only the rank that saw it: the others would wait in their next collective until NCCL's timeout."""
    from .test_trainer import make_config, write_train_files

    config = make_config(write_train_files(tmp_path), tmp_path, data={"batch_size": 4})
    mp.start_processes(_in_process_group, args=(2, _free_port(), _nan_body, config, str(tmp_path)), nprocs=2,
                       start_method="spawn")
    for r in range(2):
        message = (tmp_path / f"rank{r}.txt").read_text()
        assert message.startswith("loss is") and "at step 0" in message, message
        assert f"rank {r}, non-finite on rank(s) [1]" in message


def _resume_body(rank: int, world: int, config_a, config_b, out_path: str) -> None:
    Trainer(config_a, model=toy_model()).fit()
    draws = {"uninterrupted": torch.rand(4)}  # each rank's generator after the last step
    resumed = Trainer(config_b, model=toy_model())
    resumed.fit(resume=str(Path(config_a.run.output_dir) / "checkpoint-0000002"))
    draws["resumed"] = torch.rand(4)
    gathered = {k: [torch.zeros(4, device=DEVICE) for _ in range(world)] for k in draws}
    for key, value in draws.items():
        dist.all_gather(gathered[key], value.to(DEVICE))
    if rank == 0:
        torch.save(gathered, out_path)


@pytest.mark.slow  # starts two processes
def test_resume_under_two_processes_gives_each_rank_its_own_generators(tmp_path):
    """A checkpoint holds every rank's generators, and a resumed rank continues its own stream (the one its
    dropout and router jitter would have drawn), not rank 0's."""
    from tsembed.training.checkpoint import load_state

    from .test_trainer import make_config, write_train_files

    files = write_train_files(tmp_path)
    sections = {"data": {"batch_size": 4}, "schedule": {"steps": 3, "stage1_steps": 1},
                "run": {"checkpoint_every": 2}}
    config_a = make_config(files, tmp_path / "a", **sections)
    config_b = make_config(files, tmp_path / "b", **sections)
    out_path = str(tmp_path / "rank0.pt")
    mp.start_processes(_in_process_group, args=(2, _free_port(), _resume_body, config_a, config_b, out_path),
                       nprocs=2, start_method="spawn")
    draws = torch.load(out_path)
    assert len(load_state(tmp_path / "a" / "run" / "checkpoint-0000002")["rng_ranks"]) == 2
    assert not torch.equal(draws["uninterrupted"][0], draws["uninterrupted"][1])  # the ranks' streams differ
    for r in range(2):
        torch.testing.assert_close(draws["resumed"][r], draws["uninterrupted"][r], rtol=0, atol=0)

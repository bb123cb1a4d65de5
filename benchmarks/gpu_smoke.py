"""One-shot GPU check of the multi-GPU training path on a tiny random Qwen2-VL (issues 15, 23), in about a minute.

It opens a real NCCL process group (2 processes when there are 2+ GPUs, else 1: DDP, the cross-rank gathers and
the all-reduces run either way, and NCCL refuses any CPU tensor a collective is given, the bug class gloo hides)
and runs, on every rank:

* ``nccl_collectives``: all-reduce, the size gather, and the padded gathers with and without gradient on CUDA
  tensors with a different number of rows per rank (uneven hard negatives);
* ``train``: a few `Trainer` steps of a 2-layer Qwen2-VL (random weights, written and loaded offline like a real
  checkpoint): bf16 base, bf16 autocast, MoE-LoRA with task hints, GradCache, gradient checkpointing, DataLoader
  workers, EANS ``mine`` after a ``stability`` switch, one dataset with hard negatives and one without. Checks:
  finite losses, every adapter tensor moved, replicas bit-identical across ranks, the same switch step on all;
* ``encode_eval``: the trained model encodes the queries and positives of a training file (``embed_items``,
  bf16 autocast) and scores recall@1 among them: finite, unit-norm embeddings;
* ``resume``: a new ``Trainer`` resumes from the checkpoint two steps before the end and repeats the last two
  losses.

Each check prints PASS or FAIL; the last line is a JSON object; the exit status is 1 when a check fails.
Without CUDA it prints SKIP and exits 0 (``--cpu`` runs the same checks on 2 gloo processes, fp32: a test of
this script, not of the GPU path).

    python benchmarks/gpu_smoke.py [--steps 8] [--batch 8] [--chunk 4] [--workers 2] [--cpu]
"""

from __future__ import annotations

import argparse
import json
import os
import socket
import sys
import tempfile
import time
import traceback
from pathlib import Path

import torch
import torch.distributed as dist
import torch.multiprocessing as mp

LABELS = ["smile", "heart", "star", "tree", "cat", "fire", "moon", "flag"]
CHECKS = ("nccl_collectives", "train", "encode_eval", "resume")


def write_rows(root: Path, images: list[Path]) -> list[dict]:
    """Two MMEB-format train files over the test images, 16 rows each: image → label (with a hard negative)
    and label → image (without), each declaring its task."""
    prompts = ("<|image_1|> Represent the given image.", "<|image_1|> What does this picture show?")
    rows = {
        "i2t": [{"qry": p, "qry_image_path": img.name, "pos_text": label, "pos_image_path": "",
                 "neg_text": LABELS[(i + 1) % len(LABELS)], "neg_image_path": ""}
                for p in prompts for i, (img, label) in enumerate(zip(images, LABELS, strict=False))],
        "t2i": [{"qry": f"{p} {label}", "qry_image_path": "", "pos_text": "<|image_1|> Represent the given image.",
                 "pos_image_path": img.name, "neg_text": "", "neg_image_path": ""}
                for p in ("Find an image of", "Show me a") for img, label in zip(images, LABELS, strict=False)],
    }
    files = []
    for name, items in rows.items():
        path = root / f"{name}.jsonl"
        path.write_text("".join(json.dumps(r) + "\n" for r in items))
        files.append({"name": name, "path": str(path), "image_root": str(images[0].parent), "task": name})
    return files


def make_config(root: Path, checkpoint: Path, files: list[dict], args: argparse.Namespace, cuda: bool):
    from tsembed.configtools import from_dict
    from tsembed.training.config import TrainConfig

    return from_dict(TrainConfig, {
        "model": {
            "backbone": {"kind": "qwen2-vl", "path": str(checkpoint), "dtype": "bfloat16" if cuda else "float32",
                         "max_length": 64},
            "moe": {"num_experts": 4, "rank": 4, "alpha": 8, "top_k": 2, "level": "sequence", "jitter": 0.01,
                    "adapter_dtype": "float32", "task_hints": ["i2t", "t2i"]},
        },
        "data": {"train_files": files, "batch_size": args.batch, "num_workers": args.workers,
                 "homogeneous": True},
        "loss": {"tau": 0.05},
        "eans": {"mode": "mine", "mine_m": 1},
        "schedule": {"steps": args.steps, "stage1_steps": args.steps - 2, "switch": "stability",
                     "min_stage1_steps": 2, "stability_interval": 1, "stability_threshold": 1e9},
        "optim": {"lr": 2e-3, "warmup_steps": 2},
        "run": {"output_dir": str(root / "run"), "chunk_size": args.chunk, "precision": "bf16" if cuda else "fp32",
                "gradient_checkpointing": True, "checkpoint_every": args.steps - 2, "progress": False,
                "tensorboard": False, "seed": 0},
    })


def check_collectives(device: torch.device) -> dict:
    from tsembed.training.distributed import all_reduce_sum, gather_no_grad, gather_sizes, gather_with_grad

    r, w = dist.get_rank(), dist.get_world_size()
    total = all_reduce_sum(torch.ones(3, device=device) * (r + 1))
    assert torch.equal(total.cpu(), torch.full((3,), float(w * (w + 1) / 2))), total
    local = torch.full((r + 1, 4), float(r), device=device, requires_grad=True)  # rank r: r + 1 rows
    sizes = gather_sizes(local.shape[0], device)
    assert sizes == [i + 1 for i in range(w)], sizes
    gathered = gather_with_grad(local, sizes)
    assert gathered.shape[0] == sum(sizes) and gathered.device.type == device.type
    gathered.sum().backward()
    assert torch.equal(local.grad.cpu(), torch.full_like(local.grad.cpu(), float(w))), local.grad  # summed
    ids = gather_no_grad(torch.arange(r + 1, device=device), sizes)
    assert ids.tolist() == [i for s in sizes for i in range(s)], ids
    return {"world_size": w, "sizes": sizes}


def check_train(root: Path, args: argparse.Namespace, cuda: bool, device: torch.device) -> tuple[dict, object]:
    from tsembed.moe import adapter_state_dict
    from tsembed.training.trainer import Trainer

    trainer = Trainer(make_config(root, root / "tiny-qwen2-vl", json.loads((root / "files.json").read_text()),
                                  args, cuda))
    before = {k: v.detach().clone() for k, v in adapter_state_dict(trainer.model.backbone).items()}
    if cuda:
        torch.cuda.reset_peak_memory_stats()
    start = time.perf_counter()
    trainer.fit()
    seconds = time.perf_counter() - start
    after = adapter_state_dict(trainer.model.backbone)
    losses = [r["loss"] for r in trainer.history]
    assert losses and all(torch.isfinite(torch.tensor(losses))), losses
    unmoved = sorted(k for k in before if torch.equal(after[k].detach(), before[k]))
    assert not unmoved, f"adapter tensors that did not move: {unmoved[:5]}"
    flat = torch.cat([p.detach().float().flatten() for p in trainer.trainable])
    replicas = [torch.empty_like(flat) for _ in range(dist.get_world_size())]
    dist.all_gather(replicas, flat)
    assert all(torch.equal(x, replicas[0]) for x in replicas), "replicas differ across ranks"
    switches = [torch.empty(1, device=device) for _ in range(dist.get_world_size())]
    dist.all_gather(switches, torch.tensor([float(trainer.switch_step or -1)], device=device))
    switch_steps = [int(x.item()) for x in switches]
    assert len(set(switch_steps)) == 1 and switch_steps[0] >= 0, f"stage switch per rank: {switch_steps}"
    return {"steps": len(losses), "loss_first": round(losses[0], 4), "loss_last": round(losses[-1], 4),
            "switch_step": switch_steps[0],
            "targets_per_step": sorted({int(r["num_targets"]) for r in trainer.history}),
            "seconds": round(seconds, 1), "samples_per_s_last": round(trainer.history[-1]["samples_per_s"], 2),
            "peak_memory_mb": round(torch.cuda.max_memory_allocated(device) / 2**20, 1) if cuda else None,
            "adapter_tensors_moved": len(before)}, trainer


def check_encode(trainer, cuda: bool) -> dict:
    from tsembed.encoding import embed_items
    from tsembed.precision import autocast

    data = trainer.data
    rows = list(range(min(len(data), 16)))
    queries = [data.query_input(i) for i in rows]
    positives = [data.targets[data.positive_ids[i]] for i in rows]
    with autocast(trainer.device, trainer.config.run.precision):
        q = embed_items(trainer.model, queries, batch_size=8).embeddings.float()
        t = embed_items(trainer.model, positives, batch_size=8).embeddings.float()
    assert torch.isfinite(q).all() and torch.isfinite(t).all(), "non-finite embeddings"
    norms = torch.cat([q, t]).norm(dim=-1)
    assert torch.allclose(norms, torch.ones_like(norms), atol=1e-3), norms
    recall = float(((q @ t.T).argmax(dim=1) == torch.arange(len(rows))).float().mean())
    return {"items": len(rows) * 2, "recall_at_1": round(recall, 3)}


def check_resume(root: Path, args: argparse.Namespace, cuda: bool, trainer) -> dict:
    """Resume the run from its checkpoint 2 steps before the end (every rank its own generators): the last two
    losses match the uninterrupted run's (bitwise on CPU; within bf16 kernel nondeterminism on GPU)."""
    from tsembed.training.trainer import Trainer

    config = trainer.config
    resumed = Trainer(config)
    resumed.fit(resume=str(Path(config.run.output_dir) / f"checkpoint-{args.steps - 2:07d}"))
    expected = [r["loss"] for r in trainer.history[-2:]]
    got = [r["loss"] for r in resumed.history]
    tolerance = 2e-2 if cuda else 1e-6
    close = len(got) == 2 and all(abs(a - b) <= tolerance * max(1.0, abs(b))
                                  for a, b in zip(got, expected, strict=True))
    assert close, f"resumed losses {got} vs uninterrupted {expected}"
    return {"resumed_losses": [round(x, 5) for x in got], "uninterrupted_losses": [round(x, 5) for x in expected]}


def rank_main(rank: int, world: int, port: int, root: str, args: argparse.Namespace) -> None:
    """One rank: joins the group as torchrun would, runs the checks in order, writes its results."""
    cuda = not args.cpu
    os.environ.update(MASTER_ADDR="127.0.0.1", MASTER_PORT=str(port), WORLD_SIZE=str(world), RANK=str(rank),
                      LOCAL_RANK=str(rank))
    from tsembed.training.trainer import init_distributed, shutdown_distributed

    if world > 1:
        init_distributed()  # NCCL on CUDA, bound to this rank's GPU
    elif cuda:  # one GPU: a 1-process NCCL group, so DDP and every collective still run
        torch.cuda.set_device(0)
        dist.init_process_group("nccl", device_id=torch.device("cuda", 0))
    else:
        dist.init_process_group("gloo")
    device = torch.device("cuda", rank) if cuda else torch.device("cpu")
    results: dict[str, dict] = {}
    trainer = None
    root_path = Path(root)
    for name in CHECKS:
        start = time.perf_counter()
        try:
            if name == "nccl_collectives":
                detail = check_collectives(device)
            elif name == "train":
                detail, trainer = check_train(root_path, args, cuda, device)
            elif name == "resume":
                if trainer is None:
                    raise RuntimeError("training failed; nothing to resume")
                detail = check_resume(root_path, args, cuda, trainer)
            else:
                if trainer is None:
                    raise RuntimeError("training failed; nothing to encode")
                detail = check_encode(trainer, cuda)
            results[name] = {"ok": True, **detail}
        except Exception as error:  # report every check, whatever fails first
            results[name] = {"ok": False, "error": f"{type(error).__name__}: {error}",
                             "traceback": traceback.format_exc(limit=6)}
        results[name]["check_s"] = round(time.perf_counter() - start, 1)
    (root_path / f"rank{rank}.json").write_text(json.dumps(results))
    del trainer
    shutdown_distributed()


def _free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--steps", type=int, default=8)
    parser.add_argument("--batch", type=int, default=8)
    parser.add_argument("--chunk", type=int, default=4, help="GradCache chunk")
    parser.add_argument("--workers", type=int, default=2, help="DataLoader workers")
    parser.add_argument("--cpu", action="store_true", help="2 gloo processes on CPU, fp32 (tests this script)")
    args = parser.parse_args()
    if args.steps < 4:
        parser.error("--steps must be at least 4 (the resume check starts 2 steps before the end)")
    if not args.cpu and not torch.cuda.is_available():
        print("SKIP: no CUDA device; this is a GPU check (--cpu runs the same checks on gloo to test the script)")
        print(json.dumps({"ok": None, "skipped": "no CUDA device"}))
        sys.exit(0)
    from tsembed.backbones.testing import save_tiny_qwen2_vl, write_test_images

    world = 2 if args.cpu else min(2, torch.cuda.device_count())
    start = time.perf_counter()
    with tempfile.TemporaryDirectory() as tmp:
        root = Path(tmp)
        save_tiny_qwen2_vl(root / "tiny-qwen2-vl")
        (root / "files.json").write_text(json.dumps(write_rows(root, write_test_images(root / "images"))))
        mp.start_processes(rank_main, args=(world, _free_port(), str(root), args), nprocs=world,
                           start_method="spawn")
        per_rank = [json.loads((root / f"rank{r}.json").read_text()) for r in range(world)]
    device = "cpu (gloo)" if args.cpu else torch.cuda.get_device_name(0)
    summary: dict = {"device": device, "world_size": world, "backend": "gloo" if args.cpu else "nccl"}
    for name in CHECKS:
        ok = all(r[name]["ok"] for r in per_rank)
        failed = [(i, r[name]) for i, r in enumerate(per_rank) if not r[name]["ok"]]
        print(f"{'PASS' if ok else 'FAIL'} {name} ({per_rank[0][name]['check_s']} s)")
        for i, result in failed:
            print(f"  rank {i}: {result['error']}\n{result['traceback']}")
        summary[name] = {k: v for k, v in per_rank[0][name].items() if k != "traceback"}
        summary[f"{name}_ok"] = ok
    summary["ok"] = all(summary[f"{n}_ok"] for n in CHECKS)
    summary["total_s"] = round(time.perf_counter() - start, 1)
    print(json.dumps(summary))
    sys.exit(0 if summary["ok"] else 1)


if __name__ == "__main__":
    main()

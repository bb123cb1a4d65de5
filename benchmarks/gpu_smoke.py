"""GPU smoke test of the real-scale training path on a tiny random Qwen2-VL (issue 15).

The path `qwen2vl_mmeb.yaml` takes, shrunk to seconds: a Qwen2-VL checkpoint (2 layers, random weights,
written to a temporary directory and loaded offline like a real one) with MoE-LoRA on every attention and MLP
projection, image and text queries, GradCache chunks, gradient checkpointing and DataLoader workers; on CUDA
the base is bf16 and the forward passes run under bf16 autocast, on a CPU everything is fp32. It trains
`--steps` steps through the `Trainer` and checks that

* the contrastive loss falls (mean of the last five steps below the mean of the first five), and
* every adapter tensor (lora_A, lora_B, router) moved, with the share of changed entries reported,

then prints peak memory (CUDA: max allocated; CPU: peak resident set) and samples/s (median over the steps
after the first five). The exit status is 1 when a check fails.

    python benchmarks/gpu_smoke.py [--steps 30] [--batch 8] [--chunk 4] [--workers 2]

The last line is a JSON object.
"""

from __future__ import annotations

import argparse
import json
import resource
import statistics
import sys
import tempfile
from pathlib import Path

import torch

from tsembed.backbones.testing import save_tiny_qwen2_vl, write_test_images
from tsembed.configtools import from_dict
from tsembed.moe import adapter_state_dict
from tsembed.training.config import TrainConfig
from tsembed.training.trainer import Trainer

LABELS = ["smile", "heart", "star", "tree", "cat", "fire", "moon", "flag"]


def write_rows(root: Path, images: list[Path]) -> list[dict]:
    """Two MMEB-format train files over the test images: image → label and label → image, 16 rows each."""
    files = []
    prompts = ("<|image_1|> Represent the given image.", "<|image_1|> What does this picture show?")
    rows = {
        "i2t": [{"qry": p, "qry_image_path": img.name, "pos_text": label, "pos_image_path": "",
                 "neg_text": LABELS[(i + 1) % len(LABELS)], "neg_image_path": ""}
                for p in prompts for i, (img, label) in enumerate(zip(images, LABELS, strict=False))],
        "t2i": [{"qry": f"{p} {label}", "qry_image_path": "", "pos_text": "<|image_1|> Represent the given image.",
                 "pos_image_path": img.name, "neg_text": "", "neg_image_path": ""}
                for p in ("Find an image of", "Show me a") for img, label in zip(images, LABELS, strict=False)],
    }
    for name, items in rows.items():
        path = root / f"{name}.jsonl"
        path.write_text("".join(json.dumps(r) + "\n" for r in items))
        files.append({"name": name, "path": str(path), "image_root": str(images[0].parent)})
    return files


def make_config(root: Path, checkpoint: Path, files: list[dict], args: argparse.Namespace, cuda: bool) -> TrainConfig:
    return from_dict(TrainConfig, {
        "model": {
            "backbone": {"kind": "qwen2-vl", "path": str(checkpoint), "dtype": "bfloat16" if cuda else "float32",
                         "gradient_checkpointing": True, "max_length": 64},
            "moe": {"num_experts": 4, "rank": 4, "alpha": 8, "top_k": 2, "level": "sequence", "jitter": 0.01,
                    "adapter_dtype": "float32"},
        },
        "data": {"train_files": files, "batch_size": args.batch, "num_workers": args.workers},
        "loss": {"tau": 0.05},
        "eans": {"mode": "weight"},
        "schedule": {"steps": args.steps, "stage1_steps": args.steps // 2},
        "optim": {"lr": args.lr, "warmup_steps": 3},
        "run": {"output_dir": str(root / "run"), "chunk_size": args.chunk, "precision": "bf16" if cuda else "fp32",
                "checkpoint_every": 10**6, "progress": False, "tensorboard": False, "seed": 0},
    })


def peak_memory_mb(cuda: bool) -> float:
    if cuda:
        return torch.cuda.max_memory_allocated() / 2**20
    return resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 2**10  # KiB on Linux


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--steps", type=int, default=30)
    parser.add_argument("--batch", type=int, default=8)
    parser.add_argument("--chunk", type=int, default=4, help="GradCache chunk")
    parser.add_argument("--workers", type=int, default=2, help="DataLoader workers")
    parser.add_argument("--lr", type=float, default=2e-3)
    args = parser.parse_args()
    cuda = torch.cuda.is_available()
    torch.manual_seed(0)
    with tempfile.TemporaryDirectory() as tmp:
        root = Path(tmp)
        checkpoint = save_tiny_qwen2_vl(root / "tiny-qwen2-vl")
        files = write_rows(root, write_test_images(root / "images"))
        trainer = Trainer(make_config(root, checkpoint, files, args, cuda))
        before = {k: v.detach().clone() for k, v in adapter_state_dict(trainer.model.backbone).items()}
        if cuda:
            torch.cuda.reset_peak_memory_stats()
        trainer.fit()
        after = adapter_state_dict(trainer.model.backbone)

    history = trainer.history
    losses = [r["contrastive"] for r in history]
    first, last = statistics.mean(losses[:5]), statistics.mean(losses[-5:])
    moved = {k: float((after[k].detach() != before[k]).float().mean()) for k in before}
    unmoved = sorted(k for k, share in moved.items() if share == 0.0)
    dtypes = sorted({str(v.dtype).removeprefix("torch.") for v in after.values()})
    entries = sum(v.numel() for v in before.values())
    changed_share = sum(moved[k] * before[k].numel() for k in before) / entries
    speed = statistics.median(r["samples_per_s"] for r in history[5:]) if len(history) > 5 else None
    device = torch.cuda.get_device_name(0) if cuda else "cpu"
    print(f"{device}: {len(history)} steps, batch {args.batch}, GradCache chunk {args.chunk}, "
          f"precision {trainer.config.run.precision}, base {trainer.config.model.backbone['dtype']}, adapters {dtypes}")
    print(f"  contrastive loss: first 5 steps {first:.4f} -> last 5 steps {last:.4f}")
    print(f"  adapter tensors moved: {len(moved) - len(unmoved)}/{len(moved)}; entries changed {changed_share:.4f}")
    if unmoved:
        print(f"  unchanged: {unmoved[:8]}{' ...' if len(unmoved) > 8 else ''}")
    print(f"  peak memory {peak_memory_mb(cuda):.1f} MiB ({'max allocated' if cuda else 'peak RSS'}), "
          f"{speed:.1f} samples/s (median after warm-up)" if speed else "")
    ok = last < first and not unmoved and dtypes == ["float32"]
    print(json.dumps({
        "ok": ok, "device": device, "precision": trainer.config.run.precision,
        "base_dtype": trainer.config.model.backbone["dtype"], "adapter_dtypes": dtypes, "steps": len(history),
        "batch": args.batch, "chunk": args.chunk, "workers": args.workers,
        "loss_first5": round(first, 4), "loss_last5": round(last, 4), "loss_fell": last < first,
        "adapter_tensors_moved": f"{len(moved) - len(unmoved)}/{len(moved)}",
        "adapter_entries_changed": round(changed_share, 4),
        "peak_memory_mb": round(peak_memory_mb(cuda), 1), "peak_memory_kind": "cuda_max_allocated" if cuda else "rss",
        "samples_per_s": round(speed, 2) if speed else None,
    }))
    sys.exit(0 if ok else 1)


if __name__ == "__main__":
    main()

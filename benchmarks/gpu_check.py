"""One-shot device check of the multi-GPU training path on the real Qwen2-VL-2B architecture (issue 23).

It opens a real NCCL process group (2 processes when there are 2+ GPUs, else 1: DDP, the cross-rank gathers and
the all-reduces run either way, and NCCL refuses any CPU tensor a collective is given, the bug class gloo hides),
writes Qwen2-VL-2B's configuration (28 layers, hidden 1536, a 32-layer 1280-d vision tower) at random init in
bf16 to a temporary directory with an image processor at Qwen2-VL's real settings (max_pixels as the shipped
``qwen2vl_mmeb.yaml``) and loads it offline like a real checkpoint (no download; the tokenizer is the tiny test
one, so a "30-token question" counts its tokens). Every rank then runs, in order:

* ``nccl_collectives``: all-reduce, the size gather and the padded gathers with and without gradient on device
  tensors with a different number of rows per rank (uneven hard negatives);
* ``processor_shapes``: 640×480, 1700×2200 and 1000×4000 images, each with a 30-token question, prepared at
  ``max_length``: every question token is kept, the large images shrink to fit instead;
* ``gradcache``: the cosine between the adapters' gradients of a full-batch step and a GradCache step on the same
  batch of those inputs (router jitter off for the comparison; > 0.999 required, in bf16 on a GPU);
* ``train``: ``Trainer.fit`` on two datasets (one with hard negatives, one without) over the three shapes: task
  hints with gradient checkpointing, GradCache, DataLoader workers (``data_wait_s`` per step), EANS ``mine``
  after a ``stability`` switch, a checkpoint two steps before the end; finite losses, every adapter tensor
  moved, replicas bit-identical and the switch step equal on all ranks;
* ``encode_eval``: the trained model encodes its training queries and positives: finite, unit-norm embeddings;
* ``resume``: a new ``Trainer`` resumes from that checkpoint; its next loss equals the uninterrupted run's
  (``resume_identical``: bitwise; on a GPU the check passes within 1e-3 relative and says whether it was bitwise);
* ``fp16``: steps in ``run.precision: fp16`` with the gradient scaler until one is not skipped (on CPU, where
  fp16 is refused, the same steps in fp32 through a CPU ``GradScaler``);
* ``throughput`` (budgeted): tokens/s of a plain backbone forward+backward (adapters bypassed, no checkpointing,
  the input embeddings requiring grad so the backward crosses every layer, chunks of 16) against a whole TSEmbed
  training step (GradCache, optimiser, banks) in chunks of 16 and 64, gradient checkpointing on and off, on the
  same batch of 640×480 images with a 30-token question against short texts; a setting that runs out of memory
  is reported as such;
* ``peak_memory`` (budgeted): one training step at per-rank batch 128 (the yaml's chunk 16, checkpointing on,
  queries cycling through the three shapes): ``torch.cuda.max_memory_allocated`` (null on CPU).

``--budget-s`` (default 420) bounds the run: a budgeted measurement whose estimated cost no longer fits is skipped
and named (``skipped`` in the JSON). Each check prints PASS, FAIL or SKIP as it finishes; the last line is one
JSON object (also written to ``--out``), with ``ok``, ``nccl_collectives_ok``, ``gradcache_cosine``,
``tokens_per_s_backbone``, ``tokens_per_s_step``, ``peak_memory_mb``, ``resume_identical``, ``data_wait_s`` and
every check's details; the exit status is 1 when a check fails. Without CUDA it prints SKIP and exits 0;
``--cpu`` runs the same checks on a tiny 2-layer Qwen2-VL in fp32 on gloo (a test of this script, not of a GPU).

    python benchmarks/gpu_check.py [--budget-s 420] [--out docs/results/gpu/h100.json] [--world N] [--cpu]
"""

from __future__ import annotations

import argparse
import contextlib
import gc
import json
import math
import os
import socket
import statistics
import sys
import tempfile
import time
import traceback
from dataclasses import dataclass
from pathlib import Path

import torch
import torch.distributed as dist
import torch.multiprocessing as mp

# Qwen2-VL-2B-Instruct's config.json (text and vision parts); special-token ids come from the tiny tokenizer.
QWEN2_VL_2B_TEXT = {
    "vocab_size": 151936, "hidden_size": 1536, "intermediate_size": 8960, "num_hidden_layers": 28,
    "num_attention_heads": 12, "num_key_value_heads": 2, "hidden_act": "silu", "max_position_embeddings": 32768,
    "rms_norm_eps": 1e-6, "max_window_layers": 28, "use_sliding_window": False, "sliding_window": 32768,
    "attention_dropout": 0.0, "initializer_range": 0.02,
    "rope_parameters": {"rope_type": "default", "mrope_section": [16, 24, 24], "rope_theta": 1000000.0},
}
QWEN2_VL_2B_VISION = {"depth": 32, "embed_dim": 1280, "hidden_size": 1536, "mlp_ratio": 4, "num_heads": 16,
                      "in_chans": 3, "patch_size": 14, "spatial_merge_size": 2, "temporal_patch_size": 2}
QWEN2_VL_PIXELS = (56 * 56, 28 * 28 * 16384)  # Qwen2-VL's image processor: min_pixels 3136, max_pixels 12845056
SHAPES = ((640, 480), (1700, 2200), (1000, 4000))  # a photo, a DocVQA page, a long infographic
LABELS = ["smile", "heart", "star", "tree", "cat", "fire", "moon", "flag"]
QUESTION_TOKENS = 30
CHECKS = ("nccl_collectives", "processor_shapes", "gradcache", "train", "encode_eval", "resume", "fp16",
          "throughput", "peak_memory")


@dataclass(frozen=True)
class Profile:
    """Sizes of one run: the real 2B model on a GPU, or a tiny one on CPU (the same checks, seconds each)."""

    max_length: int
    max_pixels: int | None
    dtype: str  # the frozen base
    precision: str  # run.precision
    moe_rank: int
    gradcache_batch: int
    gradcache_chunk: int
    train_batch: int
    train_chunk: int
    train_steps: int
    workers: int
    speed_batch: int
    speed_chunks: tuple[int, ...]
    speed_steps: int  # timed steps after one warm-up
    memory_batch: int
    memory_chunk: int


GPU = Profile(max_length=1024, max_pixels=802816, dtype="bfloat16", precision="bf16", moe_rank=16,
              gradcache_batch=8, gradcache_chunk=2, train_batch=8, train_chunk=4, train_steps=5, workers=2,
              speed_batch=64, speed_chunks=(16, 64), speed_steps=2, memory_batch=128, memory_chunk=16)
CPU = Profile(max_length=56, max_pixels=None, dtype="float32", precision="fp32", moe_rank=4,
              gradcache_batch=8, gradcache_chunk=2, train_batch=8, train_chunk=4, train_steps=5, workers=2,
              speed_batch=64, speed_chunks=(16, 64), speed_steps=1, memory_batch=32, memory_chunk=16)


# ----- inputs ------------------------------------------------------------------------------------------------
def image_paths(root: Path) -> list[Path]:
    return [root / "images" / f"image_{width}x{height}.jpg" for width, height in SHAPES]


def write_images(root: Path) -> list[Path]:
    """One JPEG per shape in ``SHAPES`` (a gradient with a grid, so the resize has structure to work on)."""
    from PIL import Image, ImageDraw

    paths = image_paths(root)
    paths[0].parent.mkdir(parents=True, exist_ok=True)
    for (width, height), path in zip(SHAPES, paths, strict=True):
        image = Image.linear_gradient("L").resize((width, height)).convert("RGB")
        draw = ImageDraw.Draw(image)
        for x in range(0, width, 97):
            draw.line((x, 0, x, height), fill=(200, 40, 40), width=3)
        image.save(path, quality=90)
    return paths


def question(tokenizer, tokens: int = QUESTION_TOKENS) -> str:
    """A question of exactly ``tokens`` tokens for ``tokenizer`` (words appended, then characters trimmed)."""
    words = ("what is the colour of the background of this page and how many emoji are there on the left "
             "of the red apple near the green banana select the region showing a smiling face").split()
    text, i = "", 0
    while len(tokenizer(text, add_special_tokens=False)["input_ids"]) < tokens:
        text = f"{text} {words[i % len(words)]}".strip()
        i += 1
    while len(tokenizer(text + "?", add_special_tokens=False)["input_ids"]) > tokens:
        text = text[:-1].rstrip()
    text += "?"
    if len(tokenizer(text, add_special_tokens=False)["input_ids"]) != tokens:
        raise RuntimeError(f"could not build a {tokens}-token question: {text!r}")
    return text


def write_rows(root: Path, images: list[Path], ask: str, rows: int) -> list[dict]:
    """Train files (MMEB format) over the three shapes, each declaring its task: ``i2t`` (image + question →
    label, with a hard negative), ``t2i`` (label → image, without), and ``speed`` (the 640×480 image + question →
    label: the throughput batch)."""
    def img(i: int) -> Path:
        return images[i % len(images)]

    label = [f"{LABELS[i % len(LABELS)]} {i}" for i in range(rows)]
    table = {
        "i2t": [{"qry": f"<|image_1|> {ask}", "qry_image_path": img(i).name, "pos_text": label[i],
                 "pos_image_path": "", "neg_text": label[(i + 1) % rows], "neg_image_path": ""} for i in range(rows)],
        "t2i": [{"qry": f"Find an image of {label[i]}", "qry_image_path": "", "pos_image_path": img(i).name,
                 "pos_text": "<|image_1|> Represent the given image.", "neg_text": "", "neg_image_path": ""}
                for i in range(rows)],
        "speed": [{"qry": f"<|image_1|> {ask}", "qry_image_path": images[0].name, "pos_text": label[i],
                   "pos_image_path": "", "neg_text": "", "neg_image_path": ""} for i in range(rows)],
    }
    files = []
    for name, items in table.items():
        path = root / f"{name}.jsonl"
        path.write_text("".join(json.dumps(r) + "\n" for r in items))
        files.append({"name": name, "path": str(path), "image_root": str(images[0].parent),
                      "task": "t2i" if name == "t2i" else "i2t"})
    return files


def make_config(root: Path, profile: Profile, files: list[dict], *, batch: int, chunk: int | None, steps: int,
                workers: int = 0, precision: str | None = None, checkpointing: bool = True, run_name: str = "run",
                checkpoint_every: int | None = None, stage1_steps: int | None = None):
    """The shipped qwen2vl_mmeb.yaml's settings at this profile's sizes, over ``files``; EANS ``mine`` after a
    ``stability`` switch at step 2 (``stage1_steps`` at the latest, default two steps before the end)."""
    from tsembed.configtools import from_dict
    from tsembed.training.config import TrainConfig

    backbone = {"kind": "qwen2-vl", "path": str(root / "model"), "dtype": profile.dtype,
                "max_length": profile.max_length, "attn_implementation": "auto"}
    if profile.max_pixels:
        backbone["max_pixels"] = profile.max_pixels
    return from_dict(TrainConfig, {
        "model": {"backbone": backbone,
                  "moe": {"num_experts": 4, "rank": profile.moe_rank, "alpha": 2 * profile.moe_rank,
                          "routing": "topk", "top_k": 2, "level": "sequence", "jitter": 0.01,
                          "adapter_dtype": "float32", "task_hints": ["i2t", "t2i"]}},
        "data": {"train_files": files, "batch_size": batch, "num_workers": workers, "homogeneous": True},
        "loss": {"tau": 0.02, "load_balance_weight": 0.01, "z_loss_weight": 0.001},
        "eans": {"mode": "mine", "mine_m": 1},
        "schedule": {"steps": steps, "stage1_steps": stage1_steps or max(steps - 2, 1), "switch": "stability",
                     "min_stage1_steps": 2, "stability_interval": 1, "stability_threshold": 1e9},
        "optim": {"lr": 2e-3, "warmup_steps": 1, "grad_clip": 1.0},
        "run": {"output_dir": str(root / run_name), "chunk_size": chunk, "precision": precision or profile.precision,
                "gradient_checkpointing": checkpointing, "checkpoint_every": checkpoint_every or steps,
                "progress": False, "tensorboard": False, "seed": 0},
    })


def files_named(root: Path, *names: str) -> list[dict]:
    return [f for f in json.loads((root / "files.json").read_text()) if f["name"] in names]


def tokens_of(prepared) -> int:
    """Real (unpadded) tokens of a prepared step: text and image tokens of every query and target."""
    return int(sum(int(c["attention_mask"].sum()) for c in prepared.queries + prepared.targets))


# ----- the model ---------------------------------------------------------------------------------------------
def write_model(root: Path, cuda: bool) -> dict:
    """Qwen2-VL-2B at random init in bf16 (GPU), or the tiny 2-layer one (CPU), saved like a real checkpoint."""
    from tsembed.backbones.testing import save_tiny_qwen2_vl

    start = time.perf_counter()
    if cuda:
        save_tiny_qwen2_vl(root / "model", text_config=QWEN2_VL_2B_TEXT, vision_config=QWEN2_VL_2B_VISION,
                           pixels=QWEN2_VL_PIXELS, dtype=torch.bfloat16, device=torch.cuda.current_device())
        torch.cuda.empty_cache()
    else:
        save_tiny_qwen2_vl(root / "model")
    size = sum(p.stat().st_size for p in (root / "model").glob("*.safetensors"))
    return {"write_s": round(time.perf_counter() - start, 1), "weights_gb": round(size / 1e9, 2)}


def set_checkpointing(model, on: bool) -> None:
    """Gradient checkpointing of the decoder on or off (``run.gradient_checkpointing`` only ever turns it on)."""
    if on:
        model.backbone.enable_gradient_checkpointing()
    else:
        hf = model.backbone.model  # transformers 5 renamed it (the old name warns)
        getattr(hf, "activation_checkpointing_disable", hf.gradient_checkpointing_disable)()


@contextlib.contextmanager
def no_jitter(model):
    """Router jitter off: a full batch and GradCache's chunks draw their noise in different orders."""
    from tsembed.moe.router import Router

    routers = [m for m in model.modules() if isinstance(m, Router)]
    saved = [r.jitter for r in routers]
    for r in routers:
        r.jitter = 0.0
    try:
        yield
    finally:
        for r, j in zip(routers, saved, strict=True):
            r.jitter = j


def release(device: torch.device) -> None:
    gc.collect()
    if device.type == "cuda":
        torch.cuda.empty_cache()


def sync(device: torch.device) -> None:
    if device.type == "cuda":
        torch.cuda.synchronize(device)


# ----- checks ------------------------------------------------------------------------------------------------
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
    return {"world_size": w, "sizes": sizes, "backend": dist.get_backend()}


def check_shapes(model, images: list[Path], ask: str, profile: Profile) -> dict:
    """Each shape with the question, prepared at max_length: the question whole, the image shrunk if needed."""
    from PIL import Image

    from tsembed.inputs import EmbedInput

    backbone = model.backbone
    wanted = backbone.tokenizer(ask, add_special_tokens=False)["input_ids"]
    merge = int(backbone.image_processor.merge_size)
    out = {}
    for path in images:
        with Image.open(path) as image:
            natural = int(backbone.image_processor(images=[image.convert("RGB")], return_tensors="pt")[
                "image_grid_thw"].prod(-1).item()) // merge**2
        batch = model.prepare([EmbedInput(text=f"<|image_1|> {ask}", image=str(path))])
        ids = batch["input_ids"][0][batch["attention_mask"][0].bool()].tolist()
        kept = ask in backbone.tokenizer.decode(ids)  # the question's text, tokenised in place, decodes whole
        image_tokens = int((batch["input_ids"][0] == backbone.image_pad_id).sum())
        assert kept, f"{path.name}: the {len(wanted)}-token question was cut"
        assert len(ids) <= profile.max_length, f"{path.name}: {len(ids)} tokens > max_length {profile.max_length}"
        out[path.stem.removeprefix("image_")] = {"tokens": len(ids), "image_tokens": image_tokens,
                                                 "image_tokens_unshrunk": natural, "question_kept": kept}
    assert any(v["image_tokens"] < v["image_tokens_unshrunk"] for v in out.values()), \
        "no image had to shrink: max_length does not exercise the budget"
    return {"question_tokens": len(wanted), "max_length": profile.max_length, "shapes": out}


def check_gradcache(root: Path, profile: Profile, model) -> dict:
    """Adapter gradients of one batch, full batch vs GradCache chunks: their cosine."""
    from tsembed.training.step import contrastive_step
    from tsembed.training.trainer import Trainer

    trainer = Trainer(make_config(root, profile, files_named(root, "i2t"), batch=profile.gradcache_batch,
                                  chunk=profile.gradcache_chunk, steps=1), model=model)
    batch = trainer.data.make_batch(list(range(profile.gradcache_batch)), hard_negatives=True)
    grads, losses = [], []
    with no_jitter(model):
        for chunk in (None, profile.gradcache_chunk):
            trainer.optimizer.zero_grad(set_to_none=True)
            out = contrastive_step(model, trainer.objective, batch, eans_active=False, chunk_size=chunk,
                                   task=trainer.task)
            grads.append(torch.cat([(p.grad if p.grad is not None else torch.zeros_like(p)).float().flatten()
                                    for p in trainer.trainable]))
            losses.append(out.loss)
    trainer.optimizer.zero_grad(set_to_none=True)
    full, cached = grads
    cosine = float(torch.nn.functional.cosine_similarity(full, cached, dim=0))
    del trainer
    assert full.norm() > 0, "no gradient reached the adapters"
    assert cosine > 0.999, f"GradCache vs full-batch gradient cosine {cosine:.6f} <= 0.999"
    return {"cosine": round(cosine, 6), "loss_full": round(losses[0], 5), "loss_gradcache": round(losses[1], 5),
            "batch": profile.gradcache_batch, "chunk": profile.gradcache_chunk, "targets": len(batch.targets)}


def check_train(root: Path, profile: Profile, model, device: torch.device) -> tuple[dict, object]:
    from tsembed.moe import adapter_state_dict
    from tsembed.training.trainer import Trainer

    steps = profile.train_steps
    set_checkpointing(model, True)
    trainer = Trainer(make_config(root, profile, files_named(root, "i2t", "t2i"), batch=profile.train_batch,
                                  chunk=profile.train_chunk, steps=steps, workers=profile.workers,
                                  checkpoint_every=steps - 2), model=model)
    hf = model.backbone.model
    assert getattr(hf, "is_activation_checkpointing", None) or hf.is_gradient_checkpointing, "checkpointing is off"
    before = {k: v.detach().clone() for k, v in adapter_state_dict(model.backbone).items()}
    start = time.perf_counter()
    trainer.fit()
    seconds = time.perf_counter() - start
    after = adapter_state_dict(model.backbone)
    losses = [r["loss"] for r in trainer.history]
    assert len(losses) == steps and all(math.isfinite(x) for x in losses), losses
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
    waits = [r["data_wait_s"] for r in trainer.history]
    return {"steps": steps, "loss_first": round(losses[0], 4), "loss_last": round(losses[-1], 4),
            "switch_step": switch_steps[0], "hints_with_checkpointing": True, "workers": profile.workers,
            "data_wait_s": [round(w, 3) for w in waits],
            "data_wait_s_mean_after_first": round(statistics.fmean(waits[1:]), 3),
            "step_time_s": [round(r["step_time_s"], 2) for r in trainer.history],
            "targets_per_step": sorted({int(r["num_targets"]) for r in trainer.history}),
            "skipped_rows": trainer.skipped_rows, "seconds": round(seconds, 1),
            "adapter_tensors_moved": len(before)}, trainer


def check_encode(trainer) -> dict:
    from tsembed.encoding import embed_items
    from tsembed.precision import autocast

    data = trainer.data
    rows = list(range(min(len(data), 8)))
    queries = [data.query_input(i) for i in rows]
    positives = [data.targets[data.positive_ids[i]] for i in rows]
    with autocast(trainer.device, trainer.config.run.precision):
        q = embed_items(trainer.model, queries, batch_size=4).embeddings.float()
        t = embed_items(trainer.model, positives, batch_size=4).embeddings.float()
    assert torch.isfinite(q).all() and torch.isfinite(t).all(), "non-finite embeddings"
    norms = torch.cat([q, t]).norm(dim=-1)
    assert torch.allclose(norms, torch.ones_like(norms), atol=1e-3), norms
    recall = float(((q @ t.T).argmax(dim=1) == torch.arange(len(rows), device=q.device)).float().mean())
    return {"items": len(rows) * 2, "recall_at_1": round(recall, 3)}


def check_resume(profile: Profile, config, history: list[dict], model, cuda: bool) -> dict:
    """A new Trainer resumes from the checkpoint 2 steps before the end: its next loss is the uninterrupted one."""
    from tsembed.training.trainer import Trainer

    resumed = Trainer(config, model=model)
    resumed.fit(resume=str(Path(config.run.output_dir) / f"checkpoint-{profile.train_steps - 2:07d}"))
    expected = [r["loss"] for r in history[-2:]]
    got = [r["loss"] for r in resumed.history]
    del resumed
    identical = len(got) == 2 and got[0] == expected[0]
    tolerance = 1e-3 if cuda else 0.0
    assert len(got) == 2 and abs(got[0] - expected[0]) <= tolerance * max(1.0, abs(expected[0])), \
        f"resumed next loss {got[:1]} vs uninterrupted {expected[:1]}"
    return {"identical": identical, "next_loss_diff": abs(got[0] - expected[0]) if got else None,
            "resumed_losses": got, "uninterrupted_losses": expected}


def check_fp16(root: Path, profile: Profile, model, cuda: bool) -> dict:
    """fp16 steps with the gradient scaler until one is applied (the first may overflow at the initial scale)."""
    from tsembed.moe import adapter_state_dict
    from tsembed.training.trainer import Trainer

    set_checkpointing(model, True)
    trainer = Trainer(make_config(root, profile, files_named(root, "i2t"), batch=profile.train_batch,
                                  chunk=profile.train_chunk, steps=3, precision="fp16" if cuda else "fp32",
                                  run_name="fp16"), model=model)
    if not cuda:  # fp16 needs CUDA (check_precision); the scaler's path still runs, in fp32
        trainer.scaler = torch.amp.GradScaler("cpu")
    assert trainer.scaler is not None, "no gradient scaler"
    applied = False
    for _ in range(3):
        before = {k: v.detach().clone() for k, v in adapter_state_dict(model.backbone).items()}
        trainer.train_step()
        after = adapter_state_dict(model.backbone)
        applied = any(not torch.equal(after[k].detach(), before[k]) for k in before)
        if applied:
            break
    records = trainer.history
    del trainer
    assert all(math.isfinite(r["loss"]) for r in records), [r["loss"] for r in records]
    assert applied, f"every fp16 step was skipped (loss scales {[r['loss_scale'] for r in records]})"
    return {"precision": "fp16" if cuda else "fp32 + GradScaler('cpu')", "steps": len(records),
            "losses": [round(r["loss"], 5) for r in records], "loss_scale": [r["loss_scale"] for r in records]}


class Budget:
    """Seconds left of ``--budget-s`` since the run started; every rank takes rank 0's decision."""

    def __init__(self, started: float, seconds: float, device: torch.device) -> None:
        self.started, self.seconds, self.device = started, seconds, device

    def left(self) -> float:
        return self.seconds - (time.time() - self.started)

    def allows(self, estimate: float) -> bool:
        ok = torch.tensor([1.0 if self.left() >= estimate else 0.0], device=self.device)
        dist.broadcast(ok, src=0)
        return bool(ok.item())


def measure_step(root: Path, profile: Profile, model, device: torch.device, *, chunk: int, checkpointing: bool,
                 batch: int, files: str, steps: int, baseline: bool = False) -> dict:
    """Median tokens/s of a whole TSEmbed training step (``Trainer.train_step``) over ``steps`` after a warm-up;
    with ``baseline`` also of a plain backbone forward+backward over the same chunks. Out of memory: reported."""
    from tsembed.training.trainer import Trainer

    set_checkpointing(model, checkpointing)
    release(device)  # an earlier Trainer's DDP wrapper must be gone before this one wraps the model
    trainer = None
    try:
        trainer = Trainer(make_config(root, profile, files_named(root, files), batch=batch, chunk=chunk,
                                      steps=steps + 1, checkpointing=checkpointing, run_name="speed",
                                      stage1_steps=steps + 1), model=model)  # stage 1 throughout: same work
        items = [trainer.steps[s] for s in range(steps + 1)]  # prepared here, outside the timing
        trainer._batches = iter(items)  # what train_step reads inside fit (the DataLoader's)
        if device.type == "cuda":
            torch.cuda.reset_peak_memory_stats(device)
        seconds = []
        for _ in items:
            sync(device)
            start = time.perf_counter()
            trainer.train_step()
            sync(device)
            seconds.append(time.perf_counter() - start)
        timed = slice(1, None) if len(items) > 1 else slice(None)  # after the warm-up, if there is one
        tokens = [tokens_of(item.prepared) for item in items[timed]]
        result = {"tokens_per_s": round(statistics.median(t / s for t, s in zip(tokens, seconds[timed], strict=True)),
                                        1),
                  "step_s": [round(s, 3) for s in seconds], "tokens_per_step": tokens[0], "batch": batch,
                  "peak_memory_mb": round(torch.cuda.max_memory_allocated(device) / 2**20, 1)
                  if device.type == "cuda" else None}
        trainer._batches = None
        del trainer
        trainer = None
        if baseline:
            result["backbone"] = measure_backbone(model, items, device, profile.precision)
        return result
    except torch.cuda.OutOfMemoryError as error:
        message = str(error).splitlines()[0][:200]
    # out of memory: freed once the exception (whose frames hold the step's tensors) is gone
    del trainer
    model.zero_grad(set_to_none=True)
    release(device)
    return {"oom": True, "error": message}


def measure_backbone(model, items: list, device: torch.device, precision: str) -> dict:
    """Tokens/s of the plain backbone: each chunk's forward and a backward through every layer (adapters
    bypassed, the input embeddings requiring grad, no checkpointing), warm-up on the first step's chunks."""
    from tsembed.model import TASK_HINT_KEY, move_batch
    from tsembed.moe.routing import adapters_bypassed
    from tsembed.precision import autocast

    set_checkpointing(model, False)
    hf = model.backbone.model
    hf.enable_input_require_grads()
    model.train()
    seconds, tokens = [], []
    try:
        with adapters_bypassed(model.backbone):
            for item in items:
                chunks = item.prepared.queries + item.prepared.targets
                sync(device)
                start = time.perf_counter()
                for chunk in chunks:
                    batch = move_batch({k: v for k, v in chunk.items() if k != TASK_HINT_KEY}, device)
                    with autocast(device, precision):
                        hidden = model.backbone(**batch).hidden_states
                    hidden.float().square().mean().backward()
                sync(device)
                seconds.append(time.perf_counter() - start)
                tokens.append(tokens_of(item.prepared))
    finally:
        hf.disable_input_require_grads()
    return {"tokens_per_s": round(statistics.median(t / s for t, s in zip(tokens[1:], seconds[1:], strict=True)), 1),
            "step_s": [round(s, 3) for s in seconds]}


def run_measurements(root: Path, profile: Profile, model, device: torch.device, budget: Budget) -> tuple[dict,
                                                                                                          dict]:
    """Throughput cells and the batch-128 peak, cheapest and most needed first; returns (throughput, memory)."""
    first = profile.speed_chunks[0]
    plan = [("throughput", f"chunk{first}_ckpt_on", first, True),
            ("throughput", f"chunk{first}_ckpt_off", first, False),
            ("peak_memory", f"batch{profile.memory_batch}", profile.memory_chunk, True)]
    plan += [("throughput", f"chunk{c}_ckpt_{'on' if ck else 'off'}", c, ck)
             for c in profile.speed_chunks[1:] for ck in (True, False)]
    throughput: dict = {"cells": {}, "skipped": []}
    memory: dict = {"skipped": []}
    unit = None  # seconds of the first cell: what the others are estimated from
    for kind, name, chunk, ckpt in plan:
        batch = profile.memory_batch if kind == "peak_memory" else profile.speed_batch
        # estimates: the memory batch holds twice the speed batch's tokens per row (large images)
        estimate = 0.0 if unit is None else unit * (2.5 * batch / profile.speed_batch if kind == "peak_memory"
                                                    else 1.2 * (2 if chunk == first and not ckpt else 1))
        if not budget.allows(estimate):
            (memory if kind == "peak_memory" else throughput)["skipped"].append(name)
            print(f"SKIP {kind} {name}: {budget.left():.0f} s left of the budget, about {estimate:.0f} s needed",
                  flush=True)
            continue
        start = time.perf_counter()
        if kind == "peak_memory":
            memory.update(measure_step(root, profile, model, device, chunk=chunk, checkpointing=True, batch=batch,
                                       files="i2t", steps=0))
        else:
            throughput["cells"][name] = measure_step(
                root, profile, model, device, chunk=chunk, checkpointing=ckpt, batch=batch, files="speed",
                steps=profile.speed_steps, baseline=name == f"chunk{first}_ckpt_off")
        seconds = time.perf_counter() - start
        unit = unit or seconds
        release(device)
        if rank0():
            print(f"  {kind} {name}: {seconds:.1f} s", flush=True)
    cells = throughput["cells"]
    needed = [n for n in (f"chunk{first}_ckpt_on", f"chunk{first}_ckpt_off") if n in cells]
    missing = [n for n in needed if "tokens_per_s" not in cells[n]]
    assert not missing, f"no tokens/s for {missing}: {[cells[n] for n in missing]}"
    return throughput, memory


def rank0() -> bool:
    return not dist.is_initialized() or dist.get_rank() == 0


def rank_main(rank: int, world: int, port: int, root: str, args: argparse.Namespace, started: float) -> None:
    """One rank: joins the group as torchrun would, runs the checks in order, writes its results."""
    cuda = not args.cpu
    profile = CPU if args.cpu else GPU
    if not cuda:
        torch.set_num_threads(args.threads)
    os.environ.update(MASTER_ADDR="127.0.0.1", MASTER_PORT=str(port), WORLD_SIZE=str(world), RANK=str(rank),
                      LOCAL_RANK=str(rank))
    from transformers import AutoTokenizer

    from tsembed.training.trainer import build_model, init_distributed, shutdown_distributed

    if world > 1:
        # a spawned rank's DataLoader workers would be spawned too, pickling the model, whose routing records of
        # the previous check's forward require grad; torchrun's ranks are fresh interpreters with the platform's
        # default (fork on Linux before Python 3.14), and the Trainer starts its loader before any forward
        import multiprocessing

        multiprocessing.set_start_method("fork", force=True)
        init_distributed()  # NCCL on CUDA, bound to this rank's GPU
    elif cuda:  # one GPU: a 1-process NCCL group, so DDP and every collective still run
        torch.cuda.set_device(0)
        dist.init_process_group("nccl", device_id=torch.device("cuda", 0))
    else:
        dist.init_process_group("gloo")
    device = torch.device("cuda", rank) if cuda else torch.device("cpu")
    root_path = Path(root)
    budget = Budget(started, args.budget_s, device)
    results: dict[str, dict] = {}

    def report(name: str, start: float, detail: dict | None = None, error: BaseException | None = None) -> None:
        results[name] = ({"ok": True, **(detail or {})} if error is None else
                         {"ok": False, "error": f"{type(error).__name__}: {error}"[:2000],
                          "traceback": traceback.format_exc(limit=8)})
        results[name]["check_s"] = round(time.perf_counter() - start, 1)
        if rank == 0:
            print(f"{'PASS' if error is None else 'FAIL'} {name} ({results[name]['check_s']} s)"
                  + ("" if error is None else f": {results[name]['error'][:300]}"), flush=True)

    setup = time.perf_counter()
    model = trainer = None
    try:
        if rank == 0:  # the model (on the GPU: seconds), the images and the rows with a 30-token question
            results["model"] = write_model(root_path, cuda)
            write_images(root_path)
            ask = question(AutoTokenizer.from_pretrained(root_path / "model", local_files_only=True))
            rows = max(profile.memory_batch, profile.speed_batch * (profile.speed_steps + 1)) * 2
            (root_path / "files.json").write_text(json.dumps(write_rows(root_path, image_paths(root_path), ask,
                                                                        rows)))
        dist.barrier()
        model = build_model(make_config(root_path, profile, files_named(root_path, "i2t"), batch=2, chunk=None,
                                        steps=1, checkpointing=False)).to(device)
        set_checkpointing(model, False)
        results.setdefault("model", {})["load_s"] = round(time.perf_counter() - setup, 1)
        results["model"]["parameters_b"] = round(sum(p.numel() for p in model.parameters()) / 1e9, 3)
        results["model"]["trainable_m"] = round(sum(p.numel() for p in model.parameters() if p.requires_grad) / 1e6,
                                                2)
    except Exception as error:
        report("setup", setup, error=error)
    ask = question(model.backbone.tokenizer) if model is not None else ""
    measured: dict = {}
    history, train_config = None, None
    for name in CHECKS:
        if name not in ("encode_eval",):  # encode_eval uses the training check's Trainer
            release(device)
        start = time.perf_counter()
        try:
            if model is None and name != "nccl_collectives":
                raise RuntimeError("the model could not be built")
            if name == "nccl_collectives":
                detail = check_collectives(device)
            elif name == "processor_shapes":
                detail = check_shapes(model, image_paths(root_path), ask, profile)
            elif name == "gradcache":
                detail = check_gradcache(root_path, profile, model)
            elif name == "train":
                detail, trainer = check_train(root_path, profile, model, device)
                history, train_config = list(trainer.history), trainer.config
            elif name == "encode_eval":
                if trainer is None:
                    raise RuntimeError("training failed; nothing to encode")
                detail = check_encode(trainer)
                trainer = None  # its DDP wrapper goes before the next Trainer wraps the same model
            elif name == "resume":
                trainer = None
                release(device)  # the training Trainer's DDP wrapper goes first
                if history is None:
                    raise RuntimeError("training failed; nothing to resume")
                detail = check_resume(profile, train_config, history, model, cuda)
            elif name == "fp16":
                detail = check_fp16(root_path, profile, model, cuda)
            elif name == "throughput":
                detail, measured["memory"] = run_measurements(root_path, profile, model, device, budget)
            else:  # peak_memory: measured with the throughput cells (the budget orders them)
                memory = measured.get("memory")
                if memory is None:
                    raise RuntimeError("the measurements did not run")
                if memory.get("skipped"):
                    results[name] = {"ok": True, "skipped": True, "check_s": 0.0, **memory}
                    if rank == 0:
                        print(f"SKIP {name} (budget)", flush=True)
                    continue
                detail = memory
            report(name, start, detail)
        except Exception as error:  # report every check, whatever fails first
            trainer = None
            if model is not None:
                model.zero_grad(set_to_none=True)
            release(device)
            report(name, start, error=error)
    (root_path / f"rank{rank}.json").write_text(json.dumps(results, default=str))
    del trainer, model
    shutdown_distributed()


def _free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


def summarize(per_rank: list[dict], args: argparse.Namespace, world: int, started: float) -> dict:
    """The JSON line: every check's result (rank 0's details, ok on all ranks) and the headline numbers."""
    first = per_rank[0]
    summary: dict = {"device": "cpu (gloo)" if args.cpu else torch.cuda.get_device_name(0), "world_size": world,
                     "backend": "gloo" if args.cpu else "nccl", "model": first.get("model"),
                     "profile": "cpu-tiny" if args.cpu else "qwen2-vl-2b-random-init"}
    names = [n for n in ("setup", *CHECKS) if n in first]
    for name in names:
        failed = [(i, r[name]) for i, r in enumerate(per_rank) if not r.get(name, {}).get("ok")]
        for i, result in failed:
            print(f"  rank {i} {name}: {result.get('error')}\n{result.get('traceback', '')}")
        summary[f"{name}_ok"] = not failed
    checks = {n: {k: v for k, v in first[n].items() if k != "traceback"} for n in names}
    cells = checks.get("throughput", {}).get("cells", {})
    baseline = next((c["backbone"] for c in cells.values() if "backbone" in c), None)
    memory = checks.get("peak_memory", {})
    summary.update({
        "ok": all(summary[f"{n}_ok"] for n in names) and "setup" not in names,
        "nccl_collectives_ok": summary.get("nccl_collectives_ok", False),
        "gradcache_cosine": checks.get("gradcache", {}).get("cosine"),
        "tokens_per_s_backbone": baseline["tokens_per_s"] if baseline else None,
        "tokens_per_s_step": {n: c.get("tokens_per_s", "oom" if c.get("oom") else None) for n, c in cells.items()},
        "peak_memory_mb": memory.get("peak_memory_mb"),
        "peak_memory_batch": (CPU if args.cpu else GPU).memory_batch,
        "resume_identical": checks.get("resume", {}).get("identical"),
        "data_wait_s": checks.get("train", {}).get("data_wait_s_mean_after_first"),
        "fp16_ok": summary.get("fp16_ok"),
        "hints_with_checkpointing_ok": summary.get("train_ok"),
        "skipped": checks.get("throughput", {}).get("skipped", []) + memory.get("skipped", []),
        "budget_s": args.budget_s, "total_s": round(time.time() - started, 1), "checks": checks,
    })
    return summary


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--budget-s", type=float, default=420.0,
                        help="wall-clock seconds for the whole run; costly measurements that no longer fit are "
                             "skipped (default 420: one H100 in under 8 minutes)")
    parser.add_argument("--world", type=int, default=None,
                        help="processes (default: 2 with 2+ GPUs, else 1; CPU: 1)")
    parser.add_argument("--out", type=Path, default=None, help="also write the JSON summary here")
    parser.add_argument("--threads", type=int, default=1, help="CPU threads per process (--cpu)")
    parser.add_argument("--cpu", action="store_true", help="the same checks on a tiny model, gloo, fp32")
    args = parser.parse_args()
    started = time.time()
    if not args.cpu and not torch.cuda.is_available():
        print("SKIP: no CUDA device; this is a GPU check (--cpu runs the same checks on a tiny model)")
        print(json.dumps({"ok": None, "skipped": "no CUDA device"}))
        sys.exit(0)
    world = args.world or (1 if args.cpu else min(2, torch.cuda.device_count()))
    with tempfile.TemporaryDirectory() as tmp:
        root = Path(tmp)
        port = _free_port()
        if world == 1:  # in this process: a 1-rank group
            rank_main(0, 1, port, str(root), args, started)
        else:
            mp.start_processes(rank_main, args=(world, port, str(root), args, started), nprocs=world,
                               start_method="spawn")
        per_rank = [json.loads((root / f"rank{r}.json").read_text()) for r in range(world)]
    summary = summarize(per_rank, args, world, started)
    line = json.dumps(summary, default=str)
    if args.out:
        args.out.parent.mkdir(parents=True, exist_ok=True)
        args.out.write_text(json.dumps(summary, indent=2, default=str) + "\n")
    print(line)
    sys.exit(0 if summary["ok"] else 1)


if __name__ == "__main__":
    main()

"""Training-efficiency benchmark (issue 23 §7): the old path next to the new one, in the same run.

1. Batch plans. ``rebuild``: each step rebuilt every epoch plan up to its own (the plan before issue 23);
   ``walk``: it kept one plan and the lengths of the epochs it had built, so a resumed run (or a fresh
   DataLoader worker) still shuffled every earlier epoch once; ``closed``: today's ``BatchPlan`` (epoch length
   in closed form, only the step's own epoch built). Timed: the first step after resuming in epoch ``--epoch``,
   and the mean step over the rest of that epoch's first ``--steps`` steps, on synthetic datasets
   (``--datasets`` × ``--rows``, MMEB-train at the 50K cap is 20 × ≈33K).
2. Frozen vision features in GradCache (minilm-effnet). ``rerun``: no ``reuse_vision``, so the second pass
   finds the features in the memory LRU only while the step's images fit in it (``memory_cache_items``), else
   reruns the CNN; ``reuse``: the step keeps them. Both with an LRU smaller than the step (a step of more than
   1,024 images at the default) and with one that holds it. Median step time of ``--repeats`` alternating runs,
   same batch, cold feature cache every step (the first epoch; a disk-cache hit skips the CNN on both paths).

    python benchmarks/train_efficiency.py [--backbone tiny|default] [--batch 16 --chunk 4] [--repeats 5] [--threads 1]

Quick by default (tiny text side, real EfficientNet-Lite0 at 64 px; under a minute on 2 busy CPU cores).
The last line is one JSON object; ``*_speedup`` = old time / new time.
"""

from __future__ import annotations

import argparse
import contextlib
import json
import random
import statistics
import tempfile
import time
from pathlib import Path
from types import SimpleNamespace
from unittest import mock

import torch

from tsembed.backbones import MiniLMEfficientNetBackbone
from tsembed.training.data import BatchPlan

# --- 1. batch plans -------------------------------------------------------------------------------------------


class WalkPlan(BatchPlan):
    """The plan as it was after its first fix: one epoch kept, lengths remembered, epochs walked from 0."""

    def __init__(self, *args, **kwargs) -> None:
        super().__init__(*args, **kwargs)
        self._lengths: dict[int, int] = {}

    def epoch(self, epoch: int) -> list[list[int]]:
        if epoch not in self._cache:
            self._cache = {epoch: self._build(epoch)}
            self._lengths[epoch] = len(self._cache[epoch])
        return self._cache[epoch]

    def batch_at(self, step: int) -> tuple[int, list[int]]:
        epoch, position = 0, step
        while position >= self._length(epoch):
            position -= self._length(epoch)
            epoch += 1
        return epoch, self.epoch(epoch)[position]

    def _length(self, epoch: int) -> int:
        if epoch not in self._lengths:
            self.epoch(epoch)
        return self._lengths[epoch]


class RebuildPlan(WalkPlan):
    """The plan before issue 23: one epoch kept, every earlier epoch rebuilt on every step."""

    def batch_at(self, step: int) -> tuple[int, list[int]]:
        epoch, position = 0, step
        while position >= len(self.epoch(epoch)):
            position -= len(self.epoch(epoch))
            epoch += 1
        return epoch, self.epoch(epoch)[position]


def synthetic_data(datasets: int, rows: int) -> SimpleNamespace:
    """What BatchPlan reads of TrainingData: sources (name, weight) and row indices per dataset."""
    sources = [SimpleNamespace(name=f"d{i}", weight=1.0) for i in range(datasets)]
    by_dataset = {d: list(range(d * rows, (d + 1) * rows)) for d in range(datasets)}
    return SimpleNamespace(sources=sources, by_dataset=by_dataset)


def time_plans(args: argparse.Namespace) -> dict[str, dict[str, float]]:
    data = synthetic_data(args.datasets, args.rows)
    per_epoch = BatchPlan(data, args.plan_batch, True, {}, 0, args.world_size, 0).batches_per_epoch  # type: ignore[arg-type]
    start = args.epoch * per_epoch + 1  # resumed one step into epoch --epoch
    out: dict[str, dict[str, float]] = {}
    reference = None
    for name, cls in (("rebuild", RebuildPlan), ("walk", WalkPlan), ("closed", BatchPlan)):
        plan = cls(data, args.plan_batch, True, {}, 0, args.world_size, 0)  # type: ignore[arg-type]
        t0 = time.perf_counter()
        first = plan.batch_at(start)
        t1 = time.perf_counter()
        batches = [plan.batch_at(s) for s in range(start + 1, start + 1 + args.steps)]
        t2 = time.perf_counter()
        if reference is None:
            reference = [first, *batches]
        assert [first, *batches] == reference, f"{name} plans other batches"  # same seed: same batches
        out[name] = {"resume_s": t1 - t0, "step_s": (t2 - t1) / args.steps}
    print(f"batch plans: {args.datasets} datasets x {args.rows} rows, batch {args.plan_batch}, "
          f"{args.world_size} ranks ({per_epoch} steps/epoch), resumed in epoch {args.epoch}, {args.steps} steps:")
    for name, t in out.items():
        print(f"  {name:>8}: first step {t['resume_s'] * 1000:9.1f} ms   later steps {t['step_s'] * 1e6:10.1f} us")
    return out


# --- 2. vision features in GradCache ---------------------------------------------------------------------------


def build_backbone(kind: str, tmp: Path) -> MiniLMEfficientNetBackbone:
    if kind == "default":
        return MiniLMEfficientNetBackbone(disk_cache=False)
    from tsembed.backbones import testing as tiny

    return tiny.build_tiny_minilm_effnet(tiny.save_tiny_bert(tmp / "bert"))


def image_batch(n: int, size: int, seed: int = 0):
    """n queries and n targets, each with its own random image (distinct content: no cache sharing)."""
    import numpy as np
    from PIL import Image

    from tsembed.inputs import EmbedInput
    from tsembed.training.step import ContrastiveBatch

    rng = np.random.default_rng(seed)
    images = [Image.fromarray(rng.integers(0, 255, (size, size, 3), dtype=np.uint8)) for _ in range(2 * n)]
    words = "red green blue cat dog fish tree house car sun moon star".split()
    queries = [EmbedInput(f"what is <|image_1|> {' '.join(random.Random(i).choices(words, k=3))}", images[i])
               for i in range(n)]
    targets = [EmbedInput(f"<|image_1|> {words[i % len(words)]}", images[n + i]) for i in range(n)]
    return ContrastiveBatch(queries, targets, torch.arange(n), torch.arange(n), torch.full((n,), -1))


def time_vision(args: argparse.Namespace) -> dict[str, dict[str, float]]:
    from tsembed.model import ModelConfig, TSEmbedModel
    from tsembed.moe import MoELoRAConfig
    from tsembed.training.eans import EANSConfig
    from tsembed.training.objective import ContrastiveObjective, LossConfig
    from tsembed.training.step import contrastive_step, prepare_batch

    tmp = tempfile.TemporaryDirectory()
    torch.manual_seed(0)
    backbone = build_backbone(args.backbone, Path(tmp.name))
    moe = MoELoRAConfig(target_modules=backbone.default_target_modules, num_experts=4, rank=4)
    model = TSEmbedModel(backbone, ModelConfig(backbone=backbone.config(), moe=moe)).train()
    objective = ContrastiveObjective(LossConfig(tau=0.05), EANSConfig(mode="off"))
    batch = image_batch(args.batch, 2 * backbone.image_size)
    images = 2 * args.batch
    calls = [0]
    backbone.vision.register_forward_hook(lambda *_: calls.__setitem__(0, calls[0] + 1))

    def step(reuse: bool, lru: int) -> tuple[float, int, float]:
        backbone.cache.clear_memory()  # cold: the first epoch's step
        backbone.cache.memory_items = lru
        prepared = prepare_batch(model, batch, args.chunk)  # CPU work of DataLoader workers, not timed
        before = calls[0]
        patch = mock.patch.object(type(backbone), "reuse_vision", None) if not reuse else contextlib.nullcontext()
        start = time.perf_counter()
        with patch:
            out = contrastive_step(model, objective, batch, False, chunk_size=args.chunk, prepared=prepared)
        elapsed = time.perf_counter() - start
        model.zero_grad(set_to_none=True)
        return elapsed, calls[0] - before, out.loss

    cases = {"lru_smaller_than_step": max(1, images // 4), "lru_holds_step": 1024}
    out: dict[str, dict[str, float]] = {}
    print(f"GradCache step, {args.backbone} minilm-effnet, {args.batch} image queries + {args.batch} image targets, "
          f"chunk {args.chunk}, median of {args.repeats}, {torch.get_num_threads()} threads:")
    for case, lru in cases.items():
        step(True, lru)  # warm-up
        times: dict[str, list[float]] = {"rerun": [], "reuse": []}
        cnn: dict[str, int] = {}
        losses: dict[str, float] = {}
        for _ in range(args.repeats):
            for name in times:
                elapsed, cnn[name], losses[name] = step(name == "reuse", lru)
                times[name].append(elapsed)
        assert losses["rerun"] == losses["reuse"], losses
        med = {name: statistics.median(t) for name, t in times.items()}
        out[case] = {"lru_items": lru, "rerun_s": med["rerun"], "reuse_s": med["reuse"],
                     "cnn_calls_rerun": cnn["rerun"], "cnn_calls_reuse": cnn["reuse"],
                     "speedup": med["rerun"] / med["reuse"]}
        print(f"  LRU {lru:>5} items ({case}): rerun {med['rerun'] * 1000:8.1f} ms ({cnn['rerun']} CNN calls)   "
              f"reuse {med['reuse'] * 1000:8.1f} ms ({cnn['reuse']} CNN calls)   x{out[case]['speedup']:.2f}")
    return out


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--datasets", type=int, default=20)
    parser.add_argument("--rows", type=int, default=5000, help="rows per dataset (MMEB-train at the cap: ~33000)")
    parser.add_argument("--plan-batch", type=int, default=128)
    parser.add_argument("--world-size", type=int, default=8)
    parser.add_argument("--epoch", type=int, default=3, help="the epoch the run resumes in")
    parser.add_argument("--steps", type=int, default=20)
    parser.add_argument("--backbone", choices=["tiny", "default"], default="tiny")
    parser.add_argument("--batch", type=int, default=16)
    parser.add_argument("--chunk", type=int, default=4)
    parser.add_argument("--repeats", type=int, default=5)
    parser.add_argument("--threads", type=int, help="torch threads (default: torch's choice)")
    args = parser.parse_args()
    if args.threads:
        torch.set_num_threads(args.threads)

    plans = time_plans(args)
    vision = time_vision(args)
    print(json.dumps({
        "plan_resume_speedup_vs_walk": round(plans["walk"]["resume_s"] / plans["closed"]["resume_s"], 2),
        "plan_step_speedup_vs_walk": round(plans["walk"]["step_s"] / plans["closed"]["step_s"], 2),
        "plan_step_speedup_vs_rebuild": round(plans["rebuild"]["step_s"] / plans["closed"]["step_s"], 2),
        "vision_speedup_lru_smaller_than_step": round(vision["lru_smaller_than_step"]["speedup"], 3),
        "vision_speedup_lru_holds_step": round(vision["lru_holds_step"]["speedup"], 3),
        "cnn_calls": {case: [v["cnn_calls_rerun"], v["cnn_calls_reuse"]] for case, v in vision.items()},
        "backbone": args.backbone, "batch": args.batch, "chunk": args.chunk, "threads": torch.get_num_threads(),
    }))


if __name__ == "__main__":
    main()

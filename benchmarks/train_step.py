"""Training-step benchmark on the offline default backbone (MiniLM + EfficientNet-Lite0, MoE-LoRA).

Side by side in one run, on the same batches: step time of plain InfoNCE and EANS `weight`, `select`
and `mine` (mine embeds m extra negatives per query, so it does more work by design); then activation
memory of the full batch against GradCache at a large batch. Step times are medians over repeats with the
variants taking turns. Whole-step ratios on a small CPU move by several percent from run to run, so
the EANS share is also measured directly: the objective alone (loss + its backward into the embeddings,
on this batch's real embeddings and routing signatures), many alternating repeats, and its extra time
over InfoNCE is divided by the InfoNCE step time (`eans_weight_overhead_attributable`). Memory: on a
GPU, peak allocated; on the CPU, the peak bytes of tensors autograd holds for backward (what GradCache
is meant to bound).

    python benchmarks/train_step.py [--suite DIR] [--batch 32] [--repeats 5] [--mem-batch 256 --chunk 32]

The last line is a JSON object.
"""

from __future__ import annotations

import argparse
import json
import statistics
import tempfile
import time
import weakref
from pathlib import Path

import torch

from tsembed.data.suite import build_suite, load_suite
from tsembed.moe import signature_size
from tsembed.training.config import load_train_config
from tsembed.training.data import BatchPlan, TrainingData, TrainSource
from tsembed.training.eans import EANSConfig, SignatureBank
from tsembed.training.objective import ContrastiveObjective
from tsembed.training.step import contrastive_step
from tsembed.training.trainer import build_model


def activation_peak(fn) -> int:
    """Peak bytes of tensors saved for backward while ``fn`` runs (CPU proxy for activation memory)."""
    live, peak = [0], [0]

    def release(n: int) -> None:
        live[0] -= n

    def pack(t: torch.Tensor) -> torch.Tensor:
        n = t.numel() * t.element_size()
        live[0] += n
        peak[0] = max(peak[0], live[0])
        weakref.finalize(t, release, n)
        return t

    with torch.autograd.graph.saved_tensors_hooks(pack, lambda t: t):
        fn()
    return peak[0]


def objective_overhead(model, objectives: dict, batch, step_seconds: float, repeats: int) -> dict[str, float]:
    """1 + (objective time of each EANS mode − InfoNCE's) / InfoNCE step time, on this batch's real tensors."""
    device = next(model.parameters()).device
    def embed(inputs: list):
        prepared = model.prepare(inputs)
        return model(**{k: v.to(device) if isinstance(v, torch.Tensor) else v for k, v in prepared.items()})

    with torch.no_grad():
        q_out, t_out = embed(batch.queries), embed(batch.targets)
    ids, owner = batch.target_ids.to(device), batch.target_owner.to(device)

    def run(name: str) -> float:
        q = q_out.embeddings.detach().requires_grad_(True)
        t = t_out.embeddings.detach().requires_grad_(True)
        start = time.perf_counter()
        objectives[name](q, t, q_out.routing.signature, t_out.routing.signature, ids, owner, True).loss.backward()
        if device.type == "cuda":
            torch.cuda.synchronize()
        return time.perf_counter() - start

    names = ["infonce", "weight", "select"]
    times: dict[str, list[float]] = {n: [] for n in names}
    for _ in range(repeats):
        for n in names:
            times[n].append(run(n))
    med = {n: statistics.median(t) for n, t in times.items()}
    print(f"objective alone (loss + backward to embeddings), median of {repeats}: "
          + ", ".join(f"{n} {med[n] * 1000:.2f} ms" for n in names))
    return {n: 1 + (med[n] - med["infonce"]) / step_seconds for n in names}


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--suite", type=Path, help="a built suite (default: build a small one in a temp dir)")
    parser.add_argument("--dataset", default="NameToImage", help="training dataset the batches come from")
    parser.add_argument("--batch", type=int, default=32)
    parser.add_argument("--repeats", type=int, default=5)
    parser.add_argument("--mem-batch", type=int, default=256)
    parser.add_argument("--chunk", type=int, default=32)
    args = parser.parse_args()

    tmp = tempfile.TemporaryDirectory()
    suite_dir = args.suite or build_suite(Path(tmp.name) / "suite", max_train_per_dataset=max(300, args.mem_batch),
                                          max_eval_per_dataset=10, datasets=[args.dataset], progress=False).root
    suite = load_suite(suite_dir)
    data = TrainingData([TrainSource(args.dataset, suite.path(args.dataset, "train"), suite.image_root)])
    config = load_train_config(None, [f"data.suite={suite_dir}"])
    model = build_model(config).train()
    device = torch.device("cuda" if torch.cuda.is_available() else "cpu")
    model.to(device)
    sig_dim = signature_size(model.backbone)
    bank = SignatureBank(data.num_targets, sig_dim)
    random_sigs = torch.nn.functional.normalize(torch.rand(data.num_targets, sig_dim), dim=-1)
    bank.update(torch.arange(data.num_targets), random_sigs)
    plan = BatchPlan(data, args.batch, True, {}, seed=0)
    rows = plan.epoch(0)[0]
    m = config.eans.mine_m
    mined = bank.mine(torch.nn.functional.normalize(torch.rand(len(rows), sig_dim), dim=-1),
                      [{data.positive_ids[r]} for r in rows], m)
    batches = {"infonce": data.make_batch(rows, True), "weight": data.make_batch(rows, True),
               "select": data.make_batch(rows, True), "mine": data.make_batch(rows, True, mined)}
    objectives = {name: ContrastiveObjective(config.loss, EANSConfig(mode="off" if name == "infonce" else name))
                  for name in batches}

    def step(name: str) -> None:
        contrastive_step(model, objectives[name], batches[name], eans_active=True)
        model.zero_grad(set_to_none=True)

    for name in batches:  # warm-up, and fill the vision-feature cache
        step(name)
    times: dict[str, list[float]] = {name: [] for name in batches}
    for _ in range(args.repeats):
        for name in batches:
            start = time.perf_counter()
            step(name)
            if device.type == "cuda":
                torch.cuda.synchronize()
            times[name].append(time.perf_counter() - start)
    median = {name: statistics.median(t) for name, t in times.items()}
    print(f"step time at batch {args.batch} ({len(batches['infonce'].targets)} targets; mine adds {m}/query), "
          f"median of {args.repeats}, {torch.get_num_threads()} threads, {device.type}:")
    for name, t in median.items():
        print(f"  {name:>8}: {t * 1000:8.1f} ms  {args.batch / t:6.1f} samples/s  x{t / median['infonce']:.3f}")

    attributable = objective_overhead(model, objectives, batches["infonce"], median["infonce"], args.repeats * 40)

    big_rows = [r for b in BatchPlan(data, args.mem_batch, True, {}, seed=0).epoch(0)[:1] for r in b]
    big = data.make_batch(big_rows, True)
    objective = objectives["infonce"]
    peaks = {}
    for label, chunk in (("full", None), ("gradcache", args.chunk)):
        if device.type == "cuda":
            torch.cuda.reset_peak_memory_stats()
            contrastive_step(model, objective, big, eans_active=False, chunk_size=chunk)
            peaks[label] = torch.cuda.max_memory_allocated()
        else:
            peaks[label] = activation_peak(lambda c=chunk: contrastive_step(model, objective, big, False, chunk_size=c))
        model.zero_grad(set_to_none=True)
        kind = "allocated" if device.type == "cuda" else "saved-for-backward"
        print(f"  batch {args.mem_batch} {label:>9}: peak {kind} {peaks[label] / 2**20:8.1f} MiB")
    print(json.dumps({
        "eans_weight_overhead": round(median["weight"] / median["infonce"], 4),
        "eans_weight_overhead_attributable": round(attributable["weight"], 4),
        "eans_select_overhead_attributable": round(attributable["select"], 4),
        "eans_select_overhead": round(median["select"] / median["infonce"], 4),
        "eans_mine_overhead": round(median["mine"] / median["infonce"], 4),
        "gradcache_memory_ratio": round(peaks["gradcache"] / peaks["full"], 4),
        "samples_per_s": round(args.batch / median["infonce"], 2),
        "batch": args.batch, "mem_batch": args.mem_batch, "chunk": args.chunk, "device": device.type,
    }))


if __name__ == "__main__":
    main()

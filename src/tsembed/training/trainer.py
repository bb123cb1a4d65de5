"""The two-stage TSEmbed trainer (docs/design.md §3.6, §6): one config, one command, both stages.

Runs unchanged as one CPU process and under ``torchrun`` (gloo on CPU, NCCL on GPU): each rank embeds
its share of the batch, targets of all ranks are gathered with gradient, and ``DistributedDataParallel``
averages the gradients over ranks during the backward (the last GradCache chunk's, see ``step.py``).
Forward passes run under autocast in ``run.precision``; DataLoader workers (``data.num_workers``) tokenise
and decode images for the coming steps meanwhile.
"""

from __future__ import annotations

import gc
import json
import logging
import math
import os
import random
import time
from collections.abc import Iterator
from dataclasses import asdict
from pathlib import Path
from typing import Any

import torch
import torch.distributed as dist
from tqdm.auto import tqdm

from tsembed.data.mmeb_layout import discover, is_layout
from tsembed.errors import ConfigError, TsembedError
from tsembed.model import ModelConfig, TSEmbedModel
from tsembed.moe import signature_size
from tsembed.moe.attach import adapter_layers
from tsembed.moe.router_start import capturing_router_features, start_routers_at_clusters
from tsembed.precision import check_precision, grad_scaler
from tsembed.training import checkpoint as ckpt
from tsembed.training.collapse import CollapseWatch
from tsembed.training.config import TrainConfig
from tsembed.training.data import (
    SAMPLE_ERRORS,
    BatchPlan,
    StepBatches,
    StepInputs,
    TrainingData,
    TrainSource,
    step_loader,
)
from tsembed.training.distributed import (
    all_reduce_sum,
    gather_no_grad,
    gather_sizes,
    is_distributed,
    rank,
    world_size,
    wrap_ddp,
)
from tsembed.training.eans import SignatureBank
from tsembed.training.objective import ContrastiveObjective, ExpertUsage
from tsembed.training.schedule import lr_factor
from tsembed.training.step import (
    ContrastiveBatch,
    ContrastiveTask,
    PreparedBatch,
    StepOutput,
    contrastive_step,
    prepare_chunks,
)

logger = logging.getLogger(__name__)


class TrainingDiverged(TsembedError):
    """The loss became NaN or infinite; the message names the step and the batch."""


def _root(image_root: str | None) -> Path | None:
    return None if image_root is None else Path(image_root)


def _layout_sources(root: Path, split: str, image_root: str | None) -> list[TrainSource]:
    """MMEB-train as downloaded: one source per dataset folder holding ``split``; tasks from the registry."""
    from tsembed.data.registry import DATASETS

    sources = []
    for found in discover(root, split):
        info = DATASETS.get(found.name)
        if info is None:
            logger.warning("%s: training folder '%s' is not a registered dataset; it declares no task",
                           root, found.name)
        sources.append(TrainSource(found.name, found.path, _root(image_root) or root,
                                   task=info.task if info is not None else None))
    return sources


def resolve_sources(config: TrainConfig) -> list[TrainSource]:
    """Training files from ``data.train_files``, a suite's in-distribution train splits, or MMEB-train as downloaded."""
    section = config.data
    if section.train_files:
        sources = [TrainSource(e["name"], Path(e["path"]), Path(e["image_root"]) if e.get("image_root") else None,
                               float(e.get("weight", 1.0)), e.get("task")) for e in section.train_files]
    elif not Path(section.suite).is_dir():
        raise ConfigError(f"data.suite: '{section.suite}' does not exist or is not a directory; build the offline "
                          f"suite there with `tsembed data build-suite --out {section.suite}`, or set data.suite to "
                          "MMEB-train as downloaded (or give data.train_files)")
    elif is_layout(Path(section.suite)):
        sources = _layout_sources(Path(section.suite), section.train_split, section.image_root)
    else:
        from tsembed.data.suite import load_suite

        suite = load_suite(section.suite)
        names = suite.names(split="train")
        sources = [TrainSource(name, suite.path(name, "train"), _root(section.image_root) or suite.image_root,
                               task=suite.info(name).task) for name in names]
    if section.datasets:
        known = {s.name for s in sources}
        unknown = sorted(set(section.datasets) - known)
        if unknown:
            raise ConfigError(f"data.datasets names unknown training datasets {unknown}; known: {sorted(known)}")
        sources = [s for s in sources if s.name in section.datasets]
    return sources


def build_model(config: TrainConfig) -> TSEmbedModel:
    from tsembed.backbones import build_backbone

    backbone = build_backbone(resolve_bridge(config))
    model_config = ModelConfig(
        backbone=backbone.config(),
        moe=config.model.moe_config(backbone.default_target_modules),
        pooling=config.model.pooling,
        query_instruction=config.model.query_instruction,
        document_instruction=config.model.document_instruction,
    )
    return TSEmbedModel(backbone, model_config)


def resolve_bridge(config: TrainConfig) -> dict:
    """The backbone options with ``bridge: auto`` replaced by the bridge aligned for ``data.suite`` (cached)."""
    options = dict(config.model.backbone)
    if options.get("bridge") != "auto":
        return options
    if not config.data.suite:
        raise ConfigError("model.backbone.bridge: 'auto' aligns the bridge on data.suite's train emoji; "
                          "with data.train_files give a bridge file instead (`tsembed align`)")
    from tsembed.training.align import auto_bridge

    options["bridge"] = str(auto_bridge(config.data.suite, options, config.align, progress=config.run.progress))
    return options


class Trainer:
    """Owns the model, objective, optimiser, data plan, signature banks and the stage."""

    def __init__(self, config: TrainConfig, model: TSEmbedModel | None = None, data: TrainingData | None = None):
        self.config = config
        run = config.run
        if run.num_threads:
            torch.set_num_threads(run.num_threads)
        self.output_dir = Path(run.output_dir)
        self.device = torch.device("cuda", int(os.environ.get("LOCAL_RANK", 0))) if torch.cuda.is_available() \
            else torch.device("cpu")
        check_precision(run.precision, self.device)
        torch.manual_seed(run.seed + rank())
        self.data = data or TrainingData(resolve_sources(config), skip_invalid=config.data.skip_invalid,
                                         max_per_dataset=config.data.max_per_dataset)
        built = model is None
        self.model = (build_model(config) if built else model).to(self.device)
        if built:  # on the training device: a large backbone's start is a few batches of inference there
            self._start_routers(self.model, run.seed)
        if run.gradient_checkpointing and hasattr(self.model.backbone, "enable_gradient_checkpointing"):
            self.model.backbone.enable_gradient_checkpointing()
        if run.compile:  # in place, before DDP wraps it: state-dict keys and saved models stay as they are
            self.model.backbone.compile(backend=run.compile_backend, mode=run.compile_mode)
        self.objective = ContrastiveObjective(config.loss, config.eans).to(self.device)
        self.plan = BatchPlan(self.data, config.data.batch_size, config.data.homogeneous, config.data.weights,
                              run.seed, world_size(), rank())
        self.steps = StepBatches(self.data, self.plan, self.model, config.data.hard_negatives, run.chunk_size)
        self._batches: Iterator[StepInputs] | None = None  # the DataLoader's, while fit() runs
        # one forward per backward over model + objective; DDP when distributed (wraps nothing otherwise)
        self.task = wrap_ddp(ContrastiveTask(self.model, self.objective, run.precision), self.device)
        self.scaler = grad_scaler(run.precision, self.device)
        routers = self.model.router_parameters()
        backbone_modules = self.model.backbone_module_parameters()
        own = {id(p) for p in backbone_modules}
        others = [p for p in self.model.non_router_trainable_parameters() if id(p) not in own] + [
            p for p in self.objective.parameters() if p.requires_grad]
        self.optimizer = torch.optim.AdamW(
            [{"params": others, "name": "adapters"}, {"params": routers, "name": "router"},
             {"params": backbone_modules, "name": "backbone"}],
            lr=config.optim.lr, weight_decay=config.optim.weight_decay,
        )
        self.trainable = [p for g in self.optimizer.param_groups for p in g["params"]]
        sig_dim = self._signature_dim()
        self.target_bank = SignatureBank(self.data.num_targets, sig_dim) if sig_dim else None
        self.query_bank = SignatureBank(len(self.data), sig_dim) if sig_dim else None
        window = config.loss.load_balance_window
        self.expert_usage = ExpertUsage(window) if sig_dim and window > 1 else None
        self.step = 0
        self.stage = 1 if config.schedule.stage1_steps > 0 or not config.eans.spec.active else 2
        self.switch_step: int | None = None if self.stage == 1 else 0
        self.history: list[dict[str, Any]] = []
        self.skipped_rows = 0  # rows (or mined negatives) that could not be prepared, this process's run
        self.collapse_watch = CollapseWatch()

    #: Rows per dataset (queries and their positives) whose router inputs the k-means router start clusters.
    ROUTER_START_ROWS = 64

    def _start_routers(self, model: TSEmbedModel, seed: int) -> None:
        """``moe.router_start: kmeans``: every learned router starts at clusters of what it reads over a sample of
        the training rows of every dataset, a query and its positive as one point (sequence-level routers), so a pair
        starts in one expert (a resumed run then loads its own weights)."""
        moe = self.config.model.moe
        if moe is None or moe.router_start != "kmeans" or moe.router != "learned":
            return
        rng = random.Random(seed)
        rows = [i for _, indices in sorted(self.data.by_dataset.items())
                for i in sorted(rng.sample(indices, min(len(indices), self.ROUTER_START_ROWS)))]
        layers = adapter_layers(model.backbone)
        size = self.config.data.batch_size
        was_training = model.training
        model.eval()  # no dropout: the start depends on the data and the seed alone

        paired = moe.level == "sequence"  # a token router reads tokens, which do not pair

        def capture(inputs: list) -> dict[str, torch.Tensor]:
            with torch.no_grad(), capturing_router_features(layers) as found:
                for start in tqdm(range(0, len(inputs), size), desc="router start",
                                  disable=not (rank() == 0 and self.config.run.progress)):
                    model.embed(inputs[start : start + size])
            return {n: torch.cat(c) for n, c in found.items()}

        queries = capture([self.data.query_input(i) for i in rows])
        positives = capture([self.data.targets[self.data.positive_ids[i]] for i in rows]) if paired else None
        model.train(was_training)
        assign = start_routers_at_clusters(layers, queries, seed, moe.router_start_margin, positives)
        last = list(assign)[-1]  # the last layer's start, per dataset, as a summary
        names = [self.data.dataset_name(i) for i in rows]
        if len(assign[last]) == len(names):
            for name in dict.fromkeys(names):
                experts = [int(e) for e, o in zip(assign[last].tolist(), names, strict=True) if o == name]
                logger.info("router start (k-means), layer %s: %s -> expert counts %s", last, name,
                            {e: experts.count(e) for e in sorted(set(experts))})

    def _signature_dim(self) -> int:
        return signature_size(self.model.backbone) if self.model.has_adapters else 0

    # ----- schedule ------------------------------------------------------------------------------------
    def _router_scale(self) -> float:
        s = self.config.schedule
        return s.stage1_router_lr_scale if self.stage == 1 else s.stage2_router_lr_scale

    def _set_lr(self) -> float:
        o = self.config.optim
        base = o.lr * lr_factor(self.step, o.warmup_steps, self.config.schedule.steps, o.min_lr_ratio)
        for group in self.optimizer.param_groups:
            scale = {"router": self._router_scale(), "backbone": self.config.optim.backbone_lr_scale}
            group["lr"] = base * scale.get(group["name"], 1.0)
        return base

    def _maybe_switch(self, drift: float | None) -> None:
        s = self.config.schedule
        if self.stage != 1 or not self.config.eans.spec.active:
            return
        due = self.step >= s.stage1_steps
        if s.switch == "stability" and drift is not None and self.step >= s.min_stage1_steps:
            due = due or drift < s.stability_threshold
        if due:
            self.stage, self.switch_step = 2, self.step
            logger.info("stage 2 from step %d (EANS %s on; router lr x%g; last signature drift %s)", self.step,
                        self.config.eans.mode, s.stage2_router_lr_scale, "n/a" if drift is None else f"{drift:.4f}")

    # ----- what the ranks share ----------------------------------------------------------------------
    def _diverged_ranks(self, loss: float) -> list[int]:
        """The ranks whose loss is not finite (one all_gather on the training device when distributed)."""
        flag = torch.tensor([0.0 if math.isfinite(loss) else 1.0], device=self.device)
        flags = gather_no_grad(flag, [1] * world_size()).tolist()
        return [r for r, bad in enumerate(flags) if bad]

    def _all_ranks(self, ids: torch.Tensor, signatures: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
        """Every rank's (ids, signatures), in rank order: each rank banks all of them, so the banks (hence the
        drift, the mined negatives and a resumed run's banks) are the same on every rank, as in one process."""
        if not is_distributed():
            return ids, signatures
        # ids ride as a float64 column (exact below 2^53): one gather per bank
        packed = torch.cat([signatures.detach().double(), ids.to(signatures.device).double()[:, None]], dim=1)
        gathered = gather_no_grad(packed, gather_sizes(packed.shape[0], packed.device))
        return gathered[:, -1].long(), gathered[:, :-1].float()

    def _agreed_drift(self) -> float | None:
        """The signature drift of the stage switch as every rank sees it: the ranks' mean.

        The banks are shared (``_all_ranks``), but the switch changes the loss and (``mine``) the collectives'
        shapes, so it is decided from one all-reduced value rather than trusted to agree bit for bit.
        """
        local = self.target_bank.drift()
        if not is_distributed():
            return local
        both = all_reduce_sum(torch.tensor([0.0 if local is None else local, 0.0 if local is None else 1.0],
                                           dtype=torch.float64, device=self.device)).tolist()
        return both[0] / both[1] if both[1] else None

    # ----- one step ------------------------------------------------------------------------------------
    def _mined(self, rows: list[int]) -> list[list[int]] | None:
        if self.stage != 2 or not self.config.eans.spec.mines or self.query_bank is None:
            return None
        banked = self.query_bank.filled[torch.tensor(rows)]
        query_sigs = self.query_bank.signatures[torch.tensor(rows)]
        excluded = [{self.data.positive_ids[r]} | {self.data.positive_ids[o] for o in rows} for r in rows]
        mined = self.target_bank.mine(query_sigs, excluded, self.config.eans.mine_m)
        # pad to m per query so every rank and step has the same shape (random fill for unbanked queries)
        m = self.config.eans.mine_m
        gen = torch.Generator().manual_seed(self.config.run.seed * 7919 + self.step)
        out = []
        for i, ids in enumerate(mined):
            ids = ids if bool(banked[i]) else []
            while len(ids) < m:
                cand = int(torch.randint(self.data.num_targets, (1,), generator=gen))
                if cand not in excluded[i] and cand not in ids:
                    ids.append(cand)
            out.append(ids)
        return out

    def _step_inputs(self) -> tuple[list[int], ContrastiveBatch, PreparedBatch]:
        """This step's rows, batch and prepared inputs: from the DataLoader inside ``fit``, else built here;
        mined negatives (they depend on the banks as the last step left them) are added here."""
        item = next(self._batches) if self._batches is not None else self.steps[self.step]
        if item.step != self.step:
            raise RuntimeError(f"the data loader delivered step {item.step} for step {self.step}")
        rows, batch, prepared = item.rows, item.batch, item.prepared
        for skip in item.skipped:  # prepared in a worker: counted and logged here
            self.skipped_rows += 1
            logger.warning("step %d: skipped row %d of dataset %s, which cannot be prepared (%s); row %d took "
                           "its place", self.step, skip.row, skip.dataset, skip.error, skip.replaced_by)
        mined = self._mined(rows)
        if mined is not None:
            with_mined = self.data.make_batch(rows, self.config.data.hard_negatives, mined)
            try:
                extra = prepare_chunks(self.model, with_mined.targets[len(batch.targets):], self.config.run.chunk_size)
            except SAMPLE_ERRORS as error:  # ranks may differ in targets: this one goes without mined ones
                self.skipped_rows += 1
                logger.warning("step %d: mined negatives not used, one cannot be prepared (%s)", self.step, error)
            else:
                batch, prepared = with_mined, prepared.with_targets(extra, len(with_mined.targets) - len(batch.targets))
        return rows, batch, prepared

    def train_step(self) -> StepOutput:
        waited = time.perf_counter()
        rows, batch, prepared = self._step_inputs()
        lr = self._set_lr()
        self.model.train()
        start = time.perf_counter()
        out = contrastive_step(self.model, self.objective, batch, eans_active=self.stage == 2,
                               chunk_size=self.config.run.chunk_size, usage=self.expert_usage, prepared=prepared,
                               task=self.task, scaler=self.scaler)
        diverged = self._diverged_ranks(out.loss)
        if diverged:  # every rank raises at the same step: none is left waiting in a collective
            where = f"; rank {rank()}, non-finite on rank(s) {diverged}" if is_distributed() else ""
            raise TrainingDiverged(
                f"loss is {out.loss} at step {self.step} (stage {self.stage}, batch of dataset {batch.dataset!r}, "
                f"rows {rows[:8]}{'...' if len(rows) > 8 else ''}{where}); lower optim.lr or loss.tau, "
                "or check the data"
            )
        if self.scaler is not None:
            self.scaler.unscale_(self.optimizer)  # clip the true gradients
        grad_norm = None
        if self.config.optim.grad_clip:
            grad_norm = float(torch.nn.utils.clip_grad_norm_(self.trainable, self.config.optim.grad_clip))
        if self.scaler is not None:
            self.scaler.step(self.optimizer)  # skipped when fp16 gradients overflowed
            self.scaler.update()
        else:
            self.optimizer.step()
        self.optimizer.zero_grad(set_to_none=True)
        if self.target_bank is not None and out.target_signatures is not None:
            self.target_bank.update(*self._all_ranks(batch.target_ids, out.target_signatures))
            self.query_bank.update(*self._all_ranks(batch.query_ids, out.query_signatures))
        elapsed = time.perf_counter() - start
        self.step += 1
        drift = None
        if self.target_bank is not None and self.step % self.config.schedule.stability_interval == 0:
            drift = self._agreed_drift()
        record = {
            "step": self.step, "stage": self.stage, "loss": out.loss, "contrastive": out.contrastive,
            "load_balance": out.load_balance, "z_loss": out.z_loss, "lr": lr, "tau": float(self.objective.tau),
            "grad_norm": grad_norm, "dataset": batch.dataset, "step_time_s": elapsed, "data_wait_s": start - waited,
            "samples_per_s": len(batch.queries) * world_size() / elapsed, "signature_drift": drift,
            "skipped_rows": self.skipped_rows, **out.logs,
        }
        if self.scaler is not None:  # fp16: the loss scale after this step (it halves on every overflow)
            record["loss_scale"] = self.scaler.get_scale()
        self._maybe_switch(drift)
        record["switch_step"] = self.switch_step
        if rank() == 0:
            self.collapse_watch.update(batch.dataset, out.logs.get("query_cosine"), out.contrastive,
                                       int(out.logs.get("num_targets", 0)), self.step)
        self.history.append(record)
        return out

    # ----- the run -------------------------------------------------------------------------------------
    def _loader(self) -> Any:
        """The DataLoader of the remaining steps (workers on ``data.num_workers``, pinned batches on CUDA)."""
        data = self.config.data
        if data.num_workers:  # forked workers must not share the tokenizers' thread pool
            os.environ.setdefault("TOKENIZERS_PARALLELISM", "false")
        return step_loader(self.steps, self.step, self.config.schedule.steps, data.num_workers, data.prefetch_factor,
                           pin_memory=self.device.type == "cuda", seed=self.config.run.seed)

    def state_dict(self) -> dict[str, Any]:
        return {
            "step": self.step, "stage": self.stage, "switch_step": self.switch_step,
            "optimizer": self.optimizer.state_dict(), "objective": self.objective.state_dict(),
            "rng": ckpt.rng_state(), "rng_ranks": self._rank_rng_states(), "config": asdict(self.config),
            "target_bank": self.target_bank.state_dict() if self.target_bank else None,
            "query_bank": self.query_bank.state_dict() if self.query_bank else None,
            "expert_usage": self.expert_usage.state_dict() if self.expert_usage else None,
            "grad_scaler": self.scaler.state_dict() if self.scaler else None,
            "collapse_watch": self.collapse_watch.state_dict(),
        }

    def _rank_rng_states(self) -> list[dict[str, Any]] | None:
        """Every rank's generators (a collective: ``state_dict`` runs on every rank), so that a resumed rank
        continues its own dropout / jitter stream rather than rank 0's; None in one process."""
        if not is_distributed():
            return None
        states: list[Any] = [None] * world_size()
        dist.all_gather_object(states, ckpt.rng_state())
        return states

    def load_state_dict(self, state: dict[str, Any], model_dir: Path) -> None:
        self.model.load_weights(model_dir)
        self.optimizer.load_state_dict(state["optimizer"])
        self.objective.load_state_dict(state["objective"])
        if self.target_bank is not None:
            self.target_bank.load_state_dict(state["target_bank"])
            self.query_bank.load_state_dict(state["query_bank"])
        if self.expert_usage is not None and state.get("expert_usage"):  # none in checkpoints written before the option
            self.expert_usage.load_state_dict(state["expert_usage"])
        if self.scaler is not None and state.get("grad_scaler"):  # fp16 resumes at the loss scale it had reached
            self.scaler.load_state_dict(state["grad_scaler"])
        if state.get("collapse_watch"):  # none in checkpoints written before the record
            self.collapse_watch.load_state_dict(state["collapse_watch"])
        self.step, self.stage, self.switch_step = state["step"], state["stage"], state["switch_step"]
        # the banks and everything above are the same on every rank (the banks hold every rank's signatures);
        # the generators are not: each rank takes its own, as long as the world size is the checkpoint's
        per_rank = state.get("rng_ranks")
        if per_rank and len(per_rank) == world_size():
            ckpt.set_rng_state(per_rank[rank()])
        else:
            if per_rank or world_size() > 1:
                logger.warning("checkpoint holds the generators of %d rank(s), this run has %d: every rank "
                               "resumes from rank 0's", len(per_rank or [None]), world_size())
            ckpt.set_rng_state(state["rng"])

    def _resume(self, resume: str) -> Path | None:
        """Load the checkpoint ``resume`` names; with ``auto``, the latest one that loads: a damaged latest
        checkpoint (a checksum that differs, a truncated file) is skipped for the one before it, with a warning.

        Raises:
            TsembedError: the checkpoint named, or (``auto``) every checkpoint, fails to load; the latest's error.
        """
        if resume != "auto":
            path = ckpt.resolve_resume(resume, self.output_dir)
            if path is not None:
                self.load_state_dict(ckpt.load_state(path), path / ckpt.MODEL_DIR)
            return path
        candidates = list(reversed(ckpt.list_checkpoints(self.output_dir)))
        first_error: Exception | None = None
        for i, path in enumerate(candidates):
            try:
                self.load_state_dict(ckpt.load_state(path), path / ckpt.MODEL_DIR)
                return path
            except (TsembedError, RuntimeError, EOFError, OSError, KeyError) as exc:
                first_error = first_error or exc
                if i + 1 < len(candidates):
                    logger.warning("checkpoint %s cannot be resumed from (%s: %s); resuming from the one before it, "
                                   "%s", path, type(exc).__name__, str(exc).splitlines()[0] if str(exc) else "",
                                   candidates[i + 1].name)
        if first_error is not None:
            raise first_error
        return None

    def fit(self, resume: str | None = None) -> Path:
        """Train to ``schedule.steps``; returns the final model directory (``<output_dir>/model``)."""
        run = self.config.run
        self.output_dir.mkdir(parents=True, exist_ok=True)
        if resume:
            path = self._resume(resume)
            if path is not None:
                logger.info("resumed from %s at step %d (stage %d)", path, self.step, self.stage)
                ckpt.warn_changed_settings(path.parent / ckpt.RUN_CONFIG_NAME, asdict(self.config))
        main = rank() == 0
        metrics_path = self.output_dir / ckpt.METRICS_NAME
        if main and metrics_path.exists():  # drop records past the resume point (a killed run wrote them)
            kept = [line for line in metrics_path.read_text().splitlines()
                    if line.strip() and json.loads(line).get("step", 0) <= self.step]
            metrics_path.write_text("".join(line + "\n" for line in kept))
        if main:
            (self.output_dir / ckpt.RUN_CONFIG_NAME).write_text(json.dumps(asdict(self.config), indent=2) + "\n")
        writer = _tensorboard(self.output_dir / "tb") if main and run.tensorboard else None
        bar = tqdm(total=self.config.schedule.steps, initial=self.step, disable=not (main and run.progress),
                   desc="train", dynamic_ncols=True)
        self._batches = iter(self._loader())
        try:
            with open(metrics_path, "a") if main else open(os.devnull, "w") as metrics:
                while self.step < self.config.schedule.steps:
                    self.train_step()
                    record = self.history[-1]
                    metrics.write(json.dumps(record) + "\n")
                    metrics.flush()
                    if writer is not None:
                        for key, value in record.items():
                            if isinstance(value, int | float) and value is not None:
                                writer.add_scalar(f"train/{key}", value, self.step)
                    bar.update(1)
                    bar.set_postfix(stage=self.stage, loss=f"{record['loss']:.3f}", lr=f"{record['lr']:.1e}",
                                    sps=f"{record['samples_per_s']:.0f}")
                    if self.step % run.log_every == 0 and main:
                        logger.info("step %d stage %d loss %.4f lr %.2e %.1f samples/s", self.step, self.stage,
                                    record["loss"], record["lr"], record["samples_per_s"])
                    if self.step % run.checkpoint_every == 0 and self.step < self.config.schedule.steps:
                        state = self.state_dict()  # on every rank: it gathers the ranks' generators
                        if main:
                            ckpt.save_checkpoint(self.output_dir, self.model, state, run.keep_checkpoints)
        finally:
            self._batches = None  # shuts the workers down
        bar.close()
        if writer is not None:
            writer.close()
        final = self.output_dir / ckpt.MODEL_DIR
        if main:
            self.model.config.extra = {"trained_steps": self.step, "switch_step": self.switch_step,
                                       "eans_mode": self.config.eans.mode,
                                       "train_datasets": [s.name for s in self.data.sources],  # for the card
                                       "collapsed_datasets": self.collapse_watch.flagged}  # training's collapse watch
            self.model.save_pretrained(final)
            logger.info("saved model to %s", final)
        return final


def _tensorboard(path: Path) -> Any:
    try:
        from torch.utils.tensorboard import SummaryWriter
    except ImportError:  # tensorboard is a dependency, but never let logging stop a run
        logger.warning("tensorboard unavailable; metrics go to metrics.jsonl only")
        return None
    return SummaryWriter(str(path))


def init_distributed() -> None:
    """Join the process group when launched by torchrun / accelerate (WORLD_SIZE > 1).

    On GPUs the group is NCCL only: every tensor a collective sees must be on the rank's GPU (the 2-process
    tests check it on CPU with tests/training/device_guard.py).
    """
    if int(os.environ.get("WORLD_SIZE", "1")) > 1 and not is_distributed():
        if torch.cuda.is_available():  # NCCL: every collective on this rank's GPU, chosen before the group starts
            device = torch.device("cuda", int(os.environ.get("LOCAL_RANK", 0)))
            torch.cuda.set_device(device)
            dist.init_process_group("nccl", device_id=device)
        else:
            dist.init_process_group("gloo")


def shutdown_distributed() -> None:
    """Leave the process group, as torchrun runs should end; a no-op in one process.

    Call it once the Trainer is gone: a DDP reducer that outlives the group destroys it while holding the
    GIL, and gloo's worker thread may need the GIL to release its last collective (a deadlock at exit).
    """
    if is_distributed():
        gc.collect()  # DDP objects caught in reference cycles go first, while the group is alive
        dist.destroy_process_group()

"""The training config: one YAML describes the model, the data, both stages and the run (docs/design.md §3.6)."""

from __future__ import annotations

import math
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from tsembed.configtools import apply_overrides, from_dict, load_yaml
from tsembed.errors import ConfigError
from tsembed.moe import MoELoRAConfig
from tsembed.precision import PRECISIONS
from tsembed.training.align import AlignConfig
from tsembed.training.eans import EANSConfig
from tsembed.training.loss_config import LossConfig

SWITCH_RULES = ("steps", "stability")


def _number(value: Any) -> bool:
    """A finite int or float: NaN passes every < / > comparison, so ranges alone let it through."""
    if isinstance(value, bool) or not isinstance(value, int | float):
        return False
    return isinstance(value, int) or math.isfinite(value)


def _check(key: str, value: Any, ok: bool, allowed: str) -> None:
    """Raise a ConfigError naming ``key``, its value and the valid range unless ``ok``."""
    if not ok:
        raise ConfigError(f"{key} must be {allowed}, got {value!r}")


def _default_backbone() -> str:
    from tsembed.backbones.registry import DEFAULT_BACKBONE  # the one place the default is named

    return DEFAULT_BACKBONE


@dataclass
class ModelSection:
    """backbone: registry config (``kind`` + options); moe: MoE-LoRA settings, or null for no adapters.

    ``moe`` is a ``MoELoRAConfig``, built and validated once when the file loads (an error names the key, e.g.
    ``model.moe.rank``); ``moe.target_modules`` may be left out to use the backbone's default targets, which
    ``moe_config`` fills in once the backbone is built.
    """

    backbone: dict[str, Any] = field(default_factory=lambda: {"kind": _default_backbone()})
    moe: MoELoRAConfig | None = field(default_factory=MoELoRAConfig)
    pooling: str | None = None
    query_instruction: str = ""
    document_instruction: str = ""

    def __post_init__(self) -> None:
        if "kind" not in self.backbone:
            raise ConfigError("model.backbone.kind is required")
        from tsembed.backbones.registry import BACKBONES, check_backbone_config

        if self.backbone["kind"] in BACKBONES:  # a kind registered later (a plugin, a test's toy) is checked at build
            check_backbone_config(self.backbone, where="model.backbone")  # option names now, not at model build

    def moe_config(self, default_targets: list[str]) -> MoELoRAConfig | None:
        """The adapters to attach: ``moe`` with ``default_targets`` (the backbone's) where it names none."""
        return None if self.moe is None else self.moe.with_default_targets(default_targets)


@dataclass
class DataSection:
    """Where training rows come from and how batches are formed.

    suite: an offline-suite directory (its in-distribution train splits), or MMEB-train as downloaded from the
    Hub (a folder per dataset; ``train_split`` picks its ``original`` or ``diverse_instruction`` shards and
    ``image_root`` is where its image paths resolve, default the clone itself); or train_files:
    a list of ``{name, path, image_root, weight, task}`` (``task``: the hint its inputs declare, see
    ``moe.task_hints``; a suite's datasets declare their meta-task). homogeneous: every batch from one dataset.
    num_workers: DataLoader worker processes that tokenise and decode images for the coming steps while the
    model trains (0: on the training thread, as before); each keeps ``prefetch_factor`` steps ready. A step's
    batch depends only on the step, so a resumed run sees the same batches with or without workers.
    max_per_dataset: read at most this many rows of each dataset, its first ones (VLM2Vec's
    ``num_sample_per_subset``; 50000 turns MMEB-train's 1,069,150 ``original`` pairs into VLM2Vec's and LLaVE's
    662K); None reads all.
    """

    suite: str | None = None
    image_root: str | None = None
    train_split: str = "original"
    datasets: list[str] | None = None
    train_files: list[dict[str, Any]] = field(default_factory=list)
    batch_size: int = 32
    homogeneous: bool = True
    weights: dict[str, float] = field(default_factory=dict)
    hard_negatives: bool = True
    skip_invalid: bool = False
    num_workers: int = 0
    prefetch_factor: int = 2
    max_per_dataset: int | None = None

    def __post_init__(self) -> None:
        _check("data.batch_size", self.batch_size, self.batch_size >= 2, ">= 2 (in-batch negatives)")
        if self.max_per_dataset is not None:
            _check("data.max_per_dataset", self.max_per_dataset,
                   isinstance(self.max_per_dataset, int) and not isinstance(self.max_per_dataset, bool)
                   and self.max_per_dataset >= 1, "an integer >= 1, or null (every row)")
        _check("data.num_workers", self.num_workers, self.num_workers >= 0, ">= 0 (0: batches built on the "
               "training thread)")
        _check("data.prefetch_factor", self.prefetch_factor, self.prefetch_factor >= 1, ">= 1 (batches per worker)")
        if not self.suite and not self.train_files:
            raise ConfigError("data: give either data.suite (a suite directory) or data.train_files")
        _check("data.train_split", self.train_split, isinstance(self.train_split, str) and bool(self.train_split),
               "a split name such as 'original' or 'diverse_instruction'")
        for i, entry in enumerate(self.train_files):
            missing = {"name", "path"} - set(entry)
            unknown = set(entry) - {"name", "path", "image_root", "weight", "task"}
            if missing or unknown:
                raise ConfigError(
                    f"data.train_files[{i}]: missing keys {sorted(missing)}, unknown keys {sorted(unknown)}"
                )
            weight = entry.get("weight", 1.0)
            _check(f"data.train_files[{i}].weight", weight, _number(weight) and weight > 0, "a positive number")
        for name, weight in self.weights.items():
            _check(f"data.weights.{name}", weight, _number(weight) and weight > 0, "a positive number")


@dataclass
class ScheduleSection:
    """Two stages. Stage 1: InfoNCE + aux losses. Stage 2: EANS on, router lr scaled.

    stage1_router_lr_scale / stage2_router_lr_scale: router lr relative to the adapters' in each stage
    (stage 1 throughout when EANS is off). Default 1.0, together with ``loss.load_balance_window`` 20:
    chosen on the dev split, where that pair lets the routers specialise by task and trains stably over
    seeds, unlike the former 0.1 with a per-batch balance loss (docs/results/routing-diagnosis/ §5). A
    full-lr router *with* the per-batch loss churns instead (docs/results/ablation-400steps-fixed/): lower
    the scale if routing churns.

    switch: ``steps`` (after stage1_steps) or ``stability`` (when the mean change of banked
    target signatures over ``stability_interval`` steps falls below ``stability_threshold``, but not
    before ``min_stage1_steps`` and at the latest at stage1_steps).
    """

    steps: int = 300
    stage1_steps: int = 150
    switch: str = "steps"
    stability_threshold: float = 0.02
    stability_interval: int = 20
    min_stage1_steps: int = 50
    stage1_router_lr_scale: float = 1.0
    stage2_router_lr_scale: float = 1.0

    def __post_init__(self) -> None:
        if self.switch not in SWITCH_RULES:
            raise ConfigError(f"schedule.switch must be one of {SWITCH_RULES}, got {self.switch!r}")
        _check("schedule.steps", self.steps, self.steps >= 1, ">= 1")
        _check("schedule.stage1_steps", self.stage1_steps, 0 <= self.stage1_steps <= self.steps,
               f"in [0, steps={self.steps}]")
        _check("schedule.stability_threshold", self.stability_threshold,
               _number(self.stability_threshold) and self.stability_threshold >= 0, "a number >= 0")
        _check("schedule.stability_interval", self.stability_interval, self.stability_interval >= 1, ">= 1")
        _check("schedule.min_stage1_steps", self.min_stage1_steps, self.min_stage1_steps >= 0, ">= 0")
        for name in ("stage1_router_lr_scale", "stage2_router_lr_scale"):
            value = getattr(self, name)
            _check(f"schedule.{name}", value, _number(value) and value >= 0, "a number >= 0 (0 freezes the router)")


@dataclass
class OptimSection:
    """AdamW and its schedule. grad_clip: max gradient norm (0 or null: no clipping). backbone_lr_scale: factor
    on the learning rate of the backbone's own trainable modules (e.g. 0.1 tunes a pretrained bridge lightly)."""

    lr: float = 1e-3
    weight_decay: float = 0.0
    warmup_steps: int = 20
    grad_clip: float | None = 1.0
    min_lr_ratio: float = 0.05
    backbone_lr_scale: float = 1.0

    def __post_init__(self) -> None:
        _check("optim.lr", self.lr, _number(self.lr) and self.lr > 0, "a number > 0")
        _check("optim.backbone_lr_scale", self.backbone_lr_scale,
               _number(self.backbone_lr_scale) and self.backbone_lr_scale >= 0,
               "a number >= 0 (the learning-rate factor of the backbone's own trainable modules, e.g. the bridge)")
        _check("optim.weight_decay", self.weight_decay, _number(self.weight_decay) and self.weight_decay >= 0,
               "a number >= 0")
        _check("optim.warmup_steps", self.warmup_steps, self.warmup_steps >= 0, ">= 0")
        _check("optim.grad_clip", self.grad_clip,
               self.grad_clip is None or (_number(self.grad_clip) and self.grad_clip >= 0),
               "a number >= 0 or null (0 and null: no clipping; < 0 would flip the gradients)")
        _check("optim.min_lr_ratio", self.min_lr_ratio, _number(self.min_lr_ratio) and 0 <= self.min_lr_ratio <= 1,
               "in [0, 1]")


@dataclass
class RunSection:
    """chunk_size: GradCache chunk (null = whole batch in one pass).

    precision: ``fp32``, or ``bf16`` / ``fp16`` autocast of the forward passes (fp16 with a gradient scaler,
    CUDA only). Trainable parameters stay fp32 either way (``moe.adapter_dtype``); the loss is computed in fp32.

    compile: ``torch.compile`` the backbone's forward (in place: parameter names and checkpoints unchanged). Off by
    default: the first steps pay the compilation (minutes for a large model) and a backend may lack an op.
    ``compile_backend`` (``inductor``, or e.g. ``aot_eager`` to debug) and ``compile_mode`` (inductor's modes;
    ``reduce-overhead`` captures CUDA graphs) are torch.compile's own arguments.
    """

    output_dir: str = "runs/tsembed"
    seed: int = 0
    chunk_size: int | None = None
    checkpoint_every: int = 100
    keep_checkpoints: int = 2
    log_every: int = 10
    gradient_checkpointing: bool = False
    num_threads: int | None = None
    tensorboard: bool = True
    progress: bool = True
    precision: str = "fp32"
    compile: bool = False
    compile_backend: str = "inductor"
    compile_mode: str | None = None

    def __post_init__(self) -> None:
        _check("run.seed", self.seed, 0 <= self.seed < 2**32, "in [0, 2**32)")
        _check("run.precision", self.precision, self.precision in PRECISIONS, f"one of {sorted(PRECISIONS)}")
        self._check_compile()
        for name in ("chunk_size", "num_threads"):
            value = getattr(self, name)
            _check(f"run.{name}", value, value is None or value >= 1, ">= 1 or null")
        for name in ("checkpoint_every", "keep_checkpoints", "log_every"):
            _check(f"run.{name}", getattr(self, name), getattr(self, name) >= 1, ">= 1")

    def _check_compile(self) -> None:
        _check("run.compile", self.compile, isinstance(self.compile, bool), "true or false")
        if not self.compile:
            if self.compile_backend != "inductor" or self.compile_mode is not None:
                raise ConfigError("run.compile_backend and run.compile_mode apply with run.compile: true only")
            return
        import torch._dynamo  # only when asked for: importing them takes a moment
        import torch._inductor

        backends = torch._dynamo.list_backends(exclude_tags=())
        _check("run.compile_backend", self.compile_backend, self.compile_backend in backends, f"one of {backends}")
        if self.compile_mode is not None:
            modes = list(torch._inductor.list_mode_options())
            _check("run.compile_mode", self.compile_mode, self.compile_mode in modes, f"null or one of {modes}")
            if self.compile_backend != "inductor":
                raise ConfigError(f"run.compile_mode is an inductor option; run.compile_backend is "
                                  f"{self.compile_backend!r}")


@dataclass
class TrainConfig:
    model: ModelSection = field(default_factory=ModelSection)
    data: DataSection = field(default_factory=lambda: DataSection(suite="suite"))
    loss: LossConfig = field(default_factory=LossConfig)
    eans: EANSConfig = field(default_factory=EANSConfig)
    schedule: ScheduleSection = field(default_factory=ScheduleSection)
    optim: OptimSection = field(default_factory=OptimSection)
    run: RunSection = field(default_factory=RunSection)
    #: How ``model.backbone.bridge: auto`` aligns the bridge for ``data.suite`` (``tsembed align``'s options).
    align: AlignConfig = field(default_factory=AlignConfig)


def default_config_path() -> Path:
    """The packaged offline default, ``configs/default.yaml``: what ``tsembed train`` uses without ``-c``."""
    return Path(__file__).resolve().parent.parent / "configs" / "default.yaml"


def load_train_config(path: str | Path | None = None, overrides: list[str] | None = None) -> TrainConfig:
    """Read YAML (or start from defaults), apply ``--set`` overrides, validate everything."""
    data = load_yaml(path) if path else {}
    return from_dict(TrainConfig, apply_overrides(data, overrides or []))

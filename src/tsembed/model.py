"""The one embedding model object: backbone + MoE-LoRA adapters + pooling (docs/design.md §2, §3.1).

Training, ``encode()``, evaluation and the server all call ``TSEmbedModel.forward``, so routing at
serve time is the routing that was trained. A saved model directory holds everything needed to rebuild
it offline: the backbone reference, the adapters and routers, the backbone's own trainable weights
(e.g. the visual projector) and the model config.
"""

from __future__ import annotations

import contextlib
import hashlib
import json
import logging
from collections.abc import Iterator
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import torch
import torch.nn.functional as F
from safetensors.torch import save_file
from torch import nn

from tsembed.errors import AdapterError, ConfigError, TaskError
from tsembed.fileio import atomic_write
from tsembed.moe import (
    MoELoRAConfig,
    RoutingOutput,
    attach,
    collect_routing,
    load_adapters,
    read_adapter_config,
    save_adapters,
    set_routing_hints,
)
from tsembed.moe.io import CONFIG_NAME as ADAPTER_CONFIG_NAME
from tsembed.moe.io import LEGACY_CONFIG_NAME as LEGACY_ADAPTER_CONFIG_NAME
from tsembed.moe.io import LEGACY_WEIGHTS_NAME as LEGACY_ADAPTER_WEIGHTS_NAME
from tsembed.moe.io import WEIGHTS_NAME as ADAPTER_WEIGHTS_NAME
from tsembed.moe.io import adapter_files
from tsembed.moe.pilot import PilotRouter
from tsembed.moe.routers import router_parameters
from tsembed.moe.routing import adapters_bypassed, set_routing_gates
from tsembed.weights import read_safetensors, sha256_file, verify_checksums, write_checksums

logger = logging.getLogger(__name__)

MODEL_CONFIG_NAME = "tsembed_config.json"
TRAINABLE_WEIGHTS_NAME = "backbone_trainable.safetensors"
ADAPTER_DIR = "adapters"
MERGED_WEIGHTS_NAME = "backbone_weights.safetensors"
PILOT_ROUTER_NAME = "pilot_router.safetensors"  # in ADAPTER_DIR: the pilots of a model with moe.router="pilot"
TASK_HINT_KEY = "task_hint_ids"  # rides in a prepared batch next to the backbone's tensors
PILOT_VIEW_KEY = "pilot_view"  # the inputs' text alone, prepared, for a pilot router that reads text only
#: Every weight file a model directory may hold, relative to it: what ``checksums.json`` covers (adapters under
#: their legacy name too: directories saved before the rename).
WEIGHT_FILES = (f"{ADAPTER_DIR}/{ADAPTER_WEIGHTS_NAME}", f"{ADAPTER_DIR}/{LEGACY_ADAPTER_WEIGHTS_NAME}",
                f"{ADAPTER_DIR}/{PILOT_ROUTER_NAME}", TRAINABLE_WEIGHTS_NAME, MERGED_WEIGHTS_NAME)


@dataclass
class ModelConfig:
    """What a saved model is: backbone reference, adapters, pooling and instructions."""

    backbone: dict[str, Any]
    moe: MoELoRAConfig | None = None
    pooling: str | None = None  # None: the backbone's default
    normalize: bool = True
    query_instruction: str = ""
    document_instruction: str = ""
    extra: dict[str, Any] = field(default_factory=dict)

    def to_dict(self) -> dict[str, Any]:
        return {
            "backbone": self.backbone,
            "moe": self.moe.to_dict() if self.moe else None,
            "pooling": self.pooling,
            "normalize": self.normalize,
            "query_instruction": self.query_instruction,
            "document_instruction": self.document_instruction,
            "extra": self.extra,
        }

    @classmethod
    def from_dict(cls, data: dict[str, Any]) -> ModelConfig:
        known = {"backbone", "moe", "pooling", "normalize", "query_instruction", "document_instruction", "extra"}
        unknown = sorted(set(data) - known)
        if unknown:
            raise ConfigError(f"model config: unknown keys {unknown}; allowed keys are {sorted(known)}")
        if "backbone" not in data:
            raise ConfigError("model config: missing key 'backbone'")
        moe = data.get("moe")
        return cls(**{**data, "moe": MoELoRAConfig.from_dict(moe) if moe else None})


@dataclass
class EmbeddingOutput:
    """embeddings [B, D] (L2-normalised unless disabled); routing is None for a model without adapters."""

    embeddings: torch.Tensor
    routing: RoutingOutput | None = None

    @property
    def signature(self) -> torch.Tensor | None:
        return None if self.routing is None else self.routing.signature


class TSEmbedModel(nn.Module):
    """Backbone with MoE-LoRA adapters; ``forward`` returns embeddings and the routing of the same pass.

    Args:
        backbone: a ``tsembed.backbones.Backbone``.
        config: model config; ``config.moe`` None gives the plain backbone (e.g. the untrained baseline).
    """

    def __init__(self, backbone: nn.Module, config: ModelConfig) -> None:
        super().__init__()
        self.backbone = backbone
        self.config = config
        from tsembed.backbones.pooling import get_pool_fn

        self.pooling = config.pooling or backbone.default_pooling
        self._pool = get_pool_fn(self.pooling)
        self.attach_summary = None
        self.fingerprint: str | None = None  # content hash of the directory it was loaded from
        self.pilot_router: PilotRouter | None = None  # set by `tsembed compose` or loaded (moe.router="pilot")
        self._forced_expert: int | None = None  # route_to(): every input to this expert, the pilots skipped
        if config.moe is not None:
            self.attach_summary = attach(backbone, config.moe)
            logger.info("%s", self.attach_summary)
            backbone.unfreeze_trainable_modules()  # e.g. the visual projector trains beside the adapters

    @classmethod
    def from_config(cls, config: ModelConfig) -> TSEmbedModel:
        from tsembed.backbones import build_backbone

        return cls(build_backbone(config.backbone), config)

    @property
    def has_adapters(self) -> bool:
        return self.config.moe is not None

    @property
    def task_hints(self) -> list[str]:
        """Tasks an input may declare to this model's routers (empty: routing sees content only)."""
        return list(self.config.moe.task_hints) if self.config.moe is not None else []

    def prepare(self, inputs: list) -> dict[str, Any]:
        """Tokenise and load images for a list of ``EmbedInput`` (CPU, no grad), plus task-hint ids for hints."""
        batch = self.backbone.prepare(inputs)
        if self.task_hints:
            batch[TASK_HINT_KEY] = task_hint_ids(inputs, self.task_hints)
        if self.pilot_routed and self.config.moe.router_input == "text":
            from tsembed.inputs import text_only

            batch[PILOT_VIEW_KEY] = self.backbone.prepare([text_only(x) for x in inputs])
        return batch

    @property
    def pilot_routed(self) -> bool:
        """One model-level pilot router chooses each input's expert (``tsembed compose``)."""
        return self.config.moe is not None and self.config.moe.router == "pilot"

    @property
    def query_routed(self) -> bool:
        """A target is embedded with its query's experts (``moe.target_routing="query"``): training and evaluation
        embed a row's candidates with its query's route, and a corpus is indexed once per route."""
        return self.config.moe is not None and self.config.moe.target_routing == "query"

    def forward(self, **batch: Any) -> EmbeddingOutput:
        hint_ids = batch.pop(TASK_HINT_KEY, None)
        pilot_view = batch.pop(PILOT_VIEW_KEY, None)
        if self.has_adapters:
            set_routing_hints(self.backbone, hint_ids)
            if self.pilot_routed and self._forced_expert is not None:
                gates = torch.zeros(prepared_size(batch), self.config.moe.num_experts, device=self._device())
                set_routing_gates(self.backbone, gates.index_fill_(1, torch.tensor([self._forced_expert],
                                                                                    device=gates.device), 1.0))
            elif self.pilot_routed:  # a second pass: the pilot router reads the base model's embedding
                if self.pilot_router is None:
                    raise AdapterError("this model is routed by pilot embeddings (moe.router='pilot') but has none; "
                                       "build it with `tsembed compose`")
                set_routing_gates(self.backbone, self.pilot_router(self.base_embeddings(**(pilot_view or batch))))
        try:
            out = self.backbone(**batch)
        finally:
            if self.has_adapters:
                set_routing_hints(self.backbone, None)  # a later call without hints must not inherit these
                if self.pilot_routed:
                    set_routing_gates(self.backbone, None)
        embeddings = self._embeddings(out)
        routing = collect_routing(self.backbone) if self.has_adapters else None
        return EmbeddingOutput(embeddings=embeddings, routing=routing)

    def _embeddings(self, out: Any) -> torch.Tensor:
        pooled = self._pool(out.hidden_states, out.attention_mask)  # [B, D]
        return F.normalize(pooled.float(), dim=-1) if self.config.normalize else pooled.float()

    @contextlib.contextmanager
    def route_to(self, expert: int | str) -> Iterator[None]:
        """Send every input to one expert (by index or name) inside the block, the pilot router skipped: how
        documents are embedded for queries routed to that expert (``tsembed eval --target-routing query``), or a
        task chosen by hand. Composed (pilot-routed) models only."""
        if not self.pilot_routed:
            raise AdapterError("route_to() needs a composed model (moe.router='pilot'); a learned router chooses its "
                               "own experts")
        names = list(self.config.moe.expert_names)
        if isinstance(expert, str):
            if expert not in names:
                raise AdapterError(f"no expert named {expert!r}; this model's experts are {names}")
            expert = names.index(expert)
        if not 0 <= expert < self.config.moe.num_experts:
            raise AdapterError(f"expert must be in [0, {self.config.moe.num_experts - 1}], got {expert}")
        previous, self._forced_expert = self._forced_expert, int(expert)
        try:
            yield
        finally:
            self._forced_expert = previous

    def _device(self) -> torch.device:
        return next(self.parameters()).device

    def pilot_embeddings(self, **batch: Any) -> torch.Tensor:
        """What the pilot router reads for a prepared batch: the base model's embedding of the inputs, or of their
        text alone (``moe.router_input: text``; ``prepare`` adds that view)."""
        view = batch.get(PILOT_VIEW_KEY)
        return self.base_embeddings(**(view if view is not None else batch))

    @torch.no_grad()
    def base_embeddings(self, **batch: Any) -> torch.Tensor:
        """Embeddings [B, D] of a prepared batch by the base model: the adapters bypassed, no routing."""
        batch = {k: v for k, v in batch.items() if k not in (TASK_HINT_KEY, PILOT_VIEW_KEY)}
        if not self.has_adapters:
            return self._embeddings(self.backbone(**batch))
        with adapters_bypassed(self.backbone):
            return self._embeddings(self.backbone(**batch))

    def embed(self, inputs: list) -> EmbeddingOutput:
        """prepare + forward, moving the batch to the model's device."""
        return self(**move_batch(self.prepare(inputs), next(self.parameters()).device))

    def router_parameters(self) -> list[nn.Parameter]:
        """Router weights and task-hint biases: the parameters the router learning-rate scale applies to."""
        return [p for p in router_parameters(self) if p.requires_grad]

    def non_router_trainable_parameters(self) -> list[nn.Parameter]:
        routers = {id(p) for p in self.router_parameters()}
        return [p for p in self.parameters() if p.requires_grad and id(p) not in routers]

    def backbone_module_parameters(self) -> list[nn.Parameter]:
        """Trainable weights of the backbone's own ``trainable_modules`` (e.g. the visual bridge), adapters and
        routers excluded: the group ``optim.backbone_lr_scale`` applies to (a pretrained bridge tuned lightly)."""
        routers = {id(p) for p in self.router_parameters()}
        return [p for name in self.backbone.trainable_modules
                for p in self.backbone.get_submodule(name).parameters() if p.requires_grad and id(p) not in routers]

    # ----- persistence -------------------------------------------------------------------------------
    def save_pretrained(self, directory: str | Path, eval_results: Any = None) -> Path:
        """Write config, adapters, the backbone's trainable weights, their checksums and a model card (README.md),
        each file atomically. ``eval_results`` (``EvalResults``, its dict or JSON path) go into the card."""
        from tsembed.card import write_model_card

        directory = Path(directory)
        directory.mkdir(parents=True, exist_ok=True)
        if self.has_adapters:
            save_adapters(self.backbone, directory / ADAPTER_DIR)
        if self.pilot_router is not None:
            self.pilot_router.save(directory / ADAPTER_DIR / PILOT_ROUTER_NAME)
        state = {k: v.detach().contiguous().cpu() for k, v in self.backbone.trainable_state_dict().items()}
        if state:
            atomic_write(directory / TRAINABLE_WEIGHTS_NAME, lambda p: save_file(state, str(p)))
        from tsembed.backbones.reference import portable_backbone_config

        saved = self.config.to_dict()
        saved["backbone"] = portable_backbone_config(saved["backbone"], directory)  # the directory can move
        text = json.dumps(saved, indent=2) + "\n"
        atomic_write(directory / MODEL_CONFIG_NAME, lambda p: p.write_text(text))
        write_checksums(directory, list(WEIGHT_FILES))
        write_model_card(directory, self, eval_results)
        return directory

    @classmethod
    def from_pretrained(cls, directory: str | Path, strict: bool = True,
                        backbone_path: str | Path | None = None) -> TSEmbedModel:
        """Rebuild a model saved by ``save_pretrained`` (offline).

        Args:
            directory: the model directory (it may have been moved: its backbone reference is relocatable).
            strict: missing or unexpected adapter keys raise.
            backbone_path: a local directory or a Hub id in the local Hugging Face cache that replaces the
                saved backbone reference (``path``; ``text_model`` for minilm-effnet), e.g. after the
                pretrained weights moved.
        """
        directory = Path(directory)
        config_path = directory / MODEL_CONFIG_NAME
        if not config_path.is_file():
            raise ConfigError(f"{directory} is not a tsembed model directory: {MODEL_CONFIG_NAME} not found")
        try:
            config = ModelConfig.from_dict(json.loads(config_path.read_text()))
        except json.JSONDecodeError as exc:
            raise ConfigError(f"{config_path}: not valid JSON ({exc})") from None
        sums = verify_checksums(directory, list(WEIGHT_FILES))  # before building: a corrupt file fails fast
        _check_adapter_config(directory, config)
        from tsembed.backbones import build_backbone
        from tsembed.backbones.reference import resolve_backbone_config

        config.backbone = resolve_backbone_config(config.backbone, directory, backbone_path)
        model = cls(build_backbone(config.backbone), config)  # attaches the adapters the check above agreed on
        model._copy_weights(directory, strict)
        model.fingerprint = model_fingerprint(directory, sums)
        return model.eval()

    def load_weights(self, directory: str | Path, strict: bool = True) -> None:
        """Copy the weights of a directory written by ``save_pretrained`` into this model (resuming training).

        The directory must describe this model (same config); its checksums are verified before anything
        is copied.
        """
        directory = Path(directory)
        verify_checksums(directory, list(WEIGHT_FILES))
        self._copy_weights(directory, strict)

    def _copy_weights(self, directory: Path, strict: bool) -> None:
        """Adapters and routers, the backbone's trainable modules, and an exported expert's merged weights."""
        if self.has_adapters:
            load_adapters(self.backbone, directory / ADAPTER_DIR, strict=strict)
        if self.pilot_routed:
            path = directory / ADAPTER_DIR / PILOT_ROUTER_NAME
            if not path.is_file():
                raise AdapterError(f"{path} not found: a model routed by pilot embeddings needs its pilots")
            moe = self.config.moe
            assert moe is not None
            device = next(self.parameters()).device
            self.pilot_router = PilotRouter.load(path, moe.num_experts, moe.top_k).to(device)
        self.load_trainable_backbone_state(directory / TRAINABLE_WEIGHTS_NAME, strict=strict)
        merged = directory / MERGED_WEIGHTS_NAME  # written by `tsembed export --expert`
        if merged.is_file():
            load_backbone_weights(self.backbone, merged)

    def load_trainable_backbone_state(self, path: Path, strict: bool = True) -> None:
        if not path.is_file():
            if self.backbone.trainable_state_dict() and strict:
                raise AdapterError(f"{path} not found; this backbone has trainable modules to restore")
            return
        self.backbone.load_trainable_state_dict(read_safetensors(path))


def _check_adapter_config(directory: Path, config: ModelConfig) -> None:
    """The model config and the adapter config describe one model: a key edited in one of them is an error
    (loading would attach the adapter config's adapters while ``/info`` reports the model config's)."""
    adapter_dir, model_path = directory / ADAPTER_DIR, directory / MODEL_CONFIG_NAME
    adapter_config = adapter_files(adapter_dir)[0]
    if config.moe is None:
        if adapter_config.is_file():
            raise ConfigError(f"{model_path} says the model has no adapters (moe: null) but "
                              f"{adapter_config} holds some; remove one of them")
        return
    adapter = read_adapter_config(adapter_dir)[0].to_dict()
    ours = config.moe.to_dict()
    diffs = [f"{k}: {ours.get(k)!r} vs {adapter.get(k)!r}" for k in sorted(set(ours) | set(adapter))
             if ours.get(k) != adapter.get(k)]
    if diffs:
        raise ConfigError(f"{model_path} (moe) and {adapter_config} (config) disagree: "
                          f"{'; '.join(diffs)}; they must describe the same adapters")


def model_fingerprint(directory: str | Path, sums: dict[str, str] | None = None) -> str:
    """sha256 over a saved model's content: its config files and each weight file's sha256 (not its path).

    ``sums``: the weight files' checksums already verified (``checksums.json``); None hashes the files.
    The pretrained backbone the config names is part of the fingerprint by reference only.
    """
    directory = Path(directory)
    if sums is None:
        sums = {n: sha256_file(directory / n) for n in WEIGHT_FILES if (directory / n).is_file()}
    digest = hashlib.sha256()
    configs = (MODEL_CONFIG_NAME, f"{ADAPTER_DIR}/{ADAPTER_CONFIG_NAME}", f"{ADAPTER_DIR}/{LEGACY_ADAPTER_CONFIG_NAME}")
    for name in configs:
        if (directory / name).is_file():
            digest.update(name.encode() + b"\0" + (directory / name).read_bytes() + b"\0")
    for name in sorted(sums):
        digest.update(f"{name}\0{sums[name]}\0".encode())
    return digest.hexdigest()


def prepared_size(batch: dict[str, Any]) -> int:
    """Inputs in a prepared batch: rows of its attention mask (every backbone's ``prepare`` returns one)."""
    mask = batch.get("attention_mask")
    if not isinstance(mask, torch.Tensor):
        raise AdapterError("a prepared batch without an attention_mask: cannot tell how many inputs it holds")
    return int(mask.shape[0])


def move_batch(batch: dict[str, Any], device: torch.device) -> dict[str, Any]:
    """A prepared batch with its tensors on ``device`` (what ``prepare`` returns is on the CPU).

    non_blocking: a pinned batch (the training DataLoader's, on CUDA) copies while the GPU works on what came
    before; an unpinned one copies as before.
    """
    return {k: v.to(device, non_blocking=True) if isinstance(v, torch.Tensor)
            else move_batch(v, device) if isinstance(v, dict) else v for k, v in batch.items()}


def check_task(task: str | None, hints: list[str], subject: str = "task") -> None:
    """The one rule for a requested task: none is always fine; otherwise the model must know it.

    ``subject`` words the message for the caller (``"input 3 declares task"``, ``"--task"``).

    Raises:
        TaskError: ``task_not_supported`` (a model without task hints) or ``unknown_task``.
    """
    if task is None:
        return
    if not hints:
        raise TaskError(f"{subject} {task!r}: this model was trained without task hints (moe.task_hints), so a task "
                        "cannot steer it; leave the task out", code="task_not_supported")
    if task not in hints:
        raise TaskError(f"{subject} {task!r}; this model knows the tasks {hints}", code="unknown_task")


def task_hint_ids(inputs: list, hints: list[str]) -> torch.Tensor:
    """Index of each input's ``task`` in ``hints`` ([B] long); -1 for an input that declares no task.

    Raises:
        TaskError: a task the model was not trained with (names the input and the known tasks).
    """
    index = {name: i for i, name in enumerate(hints)}
    ids = []
    for position, item in enumerate(inputs):
        task = getattr(item, "task", None)
        check_task(task, hints, f"input {position} declares task")
        ids.append(-1 if task is None else index[task])
    return torch.tensor(ids, dtype=torch.long)




def load_backbone_weights(backbone: nn.Module, path: str | Path) -> None:
    """Overwrite backbone tensors from a safetensors file keyed by backbone state-dict names.

    Raises:
        AdapterError: a key the backbone lacks, or a shape mismatch (all listed, nothing copied).
    """
    tensors = read_safetensors(path)
    state = backbone.state_dict()
    unknown = sorted(k for k in tensors if k not in state)
    shapes = sorted(
        f"{k}: file {tuple(v.shape)} vs model {tuple(state[k].shape)}"
        for k, v in tensors.items()
        if k in state and tuple(v.shape) != tuple(state[k].shape)
    )
    if unknown or shapes:
        raise AdapterError(f"{path}: keys not in the backbone {unknown}; shape mismatches {shapes}")
    with torch.no_grad():
        for key, value in tensors.items():
            state[key].copy_(value.to(state[key].dtype))

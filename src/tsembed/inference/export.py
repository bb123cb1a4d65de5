"""Export experts for engines that know nothing of routers (docs/design.md §7 "Deployable").

* ``export_merged_expert``: fold routed expert e (plus the shared experts) into the base weights and
  save a plain tsembed model directory without adapters. It equals the routed model on every input a
  top-1 sequence-level router sends to e (at every adapted layer).
* ``export_peft``: write each expert as a standard peft LoRA adapter directory (``adapter_config.json``
  + ``adapter_model.safetensors`` with peft's key names), loadable with
  ``PeftModel.from_pretrained(base, dir)`` onto the backbone's Hugging Face model. Its
  ``base_model_name_or_path`` is the base's Hub id, or its path relative to the adapter directory: never an
  absolute path (e.g. into site-packages) that stops meaning anything on another machine.
* ``tsembed.inference.export_st``: one merged expert as a plain sentence-transformers model.
"""

from __future__ import annotations

import json
import logging
import os
from dataclasses import replace
from pathlib import Path
from typing import Any

import torch
from safetensors.torch import save_file
from torch import nn

from tsembed.card import build_peft_card, write_card
from tsembed.errors import AdapterError
from tsembed.fileio import atomic_write
from tsembed.inference.loading import BACKBONE_WEIGHTS_NAME, load_model
from tsembed.model import WEIGHT_FILES
from tsembed.moe import adapter_layers, merge_expert
from tsembed.weights import write_checksums

logger = logging.getLogger(__name__)

PEFT_CONFIG_NAME = "adapter_config.json"
PEFT_WEIGHTS_NAME = "adapter_model.safetensors"
EXPORT_INFO_NAME = "tsembed_export.json"


def _require_adapters(model: nn.Module, directory: str | Path) -> Any:
    if model.config.moe is None:
        raise AdapterError(f"{directory} has no MoE-LoRA adapters to export")
    return model.config.moe


def merge_expert_into_model(model: nn.Module, expert: int) -> dict[str, torch.Tensor]:
    """Fold ``expert`` into ``model``'s backbone in place; returns the merged tensors (backbone keys)."""
    moe = model.config.moe
    if moe.routing != "topk" or moe.top_k != 1:
        logger.warning(
            "routing is %s (top_k=%d): a merged expert reproduces the routed model only where one expert gets "
            "gate 1, i.e. top-1 routing", moe.routing, moe.top_k)
    names = list(adapter_layers(model.backbone))
    merge_expert(model.backbone, expert)  # checks sequence-level routing and the expert index
    state = model.backbone.state_dict()
    model.config = replace(model.config, moe=None,
                           extra={**model.config.extra, "merged_expert": expert})
    model.attach_summary = None
    return {f"{name}.weight": state[f"{name}.weight"].detach().contiguous().cpu() for name in names}


def export_merged_expert(model_dir: str | Path, out_dir: str | Path, expert: int,
                         backbone_path: str | Path | None = None) -> Path:
    """``tsembed export --expert E``: a plain model directory (no adapters) with expert E merged.

    ``backbone_path`` overrides the saved backbone reference (``TSEmbedModel.from_pretrained``).

    Raises:
        AdapterError: the model has no adapters, token-level routing, or no expert E.
    """
    model = load_model(model_dir, backbone_path=backbone_path)
    _require_adapters(model, model_dir)
    merged = merge_expert_into_model(model, expert)
    model.config.extra["exported_from"] = str(model_dir)
    out = Path(model.save_pretrained(out_dir))
    atomic_write(out / BACKBONE_WEIGHTS_NAME, lambda p: save_file(merged, str(p), metadata={"expert": str(expert)}))
    write_checksums(out, list(WEIGHT_FILES))  # again: the merged weights came after save_pretrained's listing
    return out


def _peft_base(backbone: nn.Module, names: list[str]) -> tuple[str, str | None]:
    """(path prefix to strip, base model name) when all adapters sit in one Hugging Face model.

    peft adapters are applied to a Hugging Face model, so module paths are written relative to it
    (e.g. ``encoder.layer.0...`` for the MiniLM inside the default backbone).
    """
    from transformers import PreTrainedModel

    heads = {name.split(".", 1)[0] for name in names}
    if len(heads) == 1 and all("." in n for n in names):
        head = heads.pop()
        sub = backbone.get_submodule(head)
        if isinstance(sub, PreTrainedModel):
            return head + ".", getattr(sub.config, "_name_or_path", None) or getattr(sub, "name_or_path", None)
    return "", None


def peft_lora_config(targets: list[str], rank: int, alpha: float, base: str | None) -> dict[str, Any]:
    """peft ``LoraConfig`` fields (as peft saves them) for a plain LoRA of the given rank and alpha."""
    return {
        "peft_type": "LORA",
        "task_type": None,
        "base_model_name_or_path": base,
        "revision": None,
        "inference_mode": True,
        "r": rank,
        "lora_alpha": alpha,
        "lora_dropout": 0.0,
        "target_modules": sorted(targets),
        "exclude_modules": None,
        "fan_in_fan_out": False,
        "bias": "none",
        "use_rslora": False,
        "use_dora": False,
        "modules_to_save": None,
        "init_lora_weights": True,
        "layers_to_transform": None,
        "layers_pattern": None,
        "rank_pattern": {},
        "alpha_pattern": {},
        "lora_bias": False,
    }


def peft_base_reference(model: nn.Module, local_path: str | None, adapter_dir: str | Path) -> str | None:
    """``base_model_name_or_path`` for an adapter written to ``adapter_dir``: the base model's Hub id as the
    backbone reports it (``card_metadata``), else its local directory relative to ``adapter_dir``."""
    pretrained = model.backbone.card_metadata()
    hub_ids = pretrained.get("adapter_base_model", pretrained.get("base_model")) or []  # not the image tower's
    if hub_ids:
        return hub_ids[0]
    if local_path and Path(local_path).exists():
        return Path(os.path.relpath(Path(local_path).resolve(), Path(adapter_dir).resolve())).as_posix()
    return local_path


def peft_adapter(model: nn.Module, expert: int,
                 adapter_dir: str | Path = ".") -> tuple[dict[str, torch.Tensor], dict[str, Any]]:
    """One expert (plus shared experts) as peft tensors and config, for writing into ``adapter_dir``."""
    layers = adapter_layers(model.backbone)
    prefix, local = _peft_base(model.backbone, list(layers))
    base = peft_base_reference(model, local, adapter_dir) if prefix else None
    moe = model.config.moe
    tensors: dict[str, torch.Tensor] = {}
    for name, layer in layers.items():
        a, b = layer.expert_factors(expert)
        path = name[len(prefix):]
        tensors[f"base_model.model.{path}.lora_A.weight"] = a.detach().contiguous().cpu()
        tensors[f"base_model.model.{path}.lora_B.weight"] = b.detach().contiguous().cpu()
    rank = moe.rank * (1 + moe.num_shared_experts)
    # peft scales by lora_alpha / r; keep tsembed's alpha / rank for the wider concatenated rank.
    config = peft_lora_config([n[len(prefix):] for n in layers], rank, moe.scaling * rank, base)
    return tensors, config


def export_peft(model_dir: str | Path, out_dir: str | Path, experts: list[int] | None = None,
                backbone_path: str | Path | None = None) -> list[Path]:
    """``tsembed export --peft``: ``<out>/expert_<e>/`` per expert, each a standard peft LoRA adapter."""
    model = load_model(model_dir, backbone_path=backbone_path)
    moe = _require_adapters(model, model_dir)
    experts = list(range(moe.num_experts)) if experts is None else experts
    bad = [e for e in experts if not 0 <= e < moe.num_experts]
    if bad:
        raise AdapterError(f"experts {bad} out of range [0, {moe.num_experts - 1}]")
    out = Path(out_dir)
    written = []
    for e in experts:
        target = out / f"expert_{e}"
        tensors, config = peft_adapter(model, e, target)
        target.mkdir(parents=True, exist_ok=True)
        atomic_write(target / PEFT_WEIGHTS_NAME, lambda p, t=tensors: save_file(t, str(p), metadata={"format": "pt"}))
        text = json.dumps(config, indent=2) + "\n"
        atomic_write(target / PEFT_CONFIG_NAME, lambda p, t=text: p.write_text(t))
        write_card(target, build_peft_card(model, e))
        written.append(target)
    prefix, local = _peft_base(model.backbone, list(adapter_layers(model.backbone)))
    base = peft_base_reference(model, local, out) if prefix else None
    info = {
        "source": str(model_dir),
        "experts": experts,
        "shared_experts_included": moe.num_shared_experts,
        "null_experts": moe.num_null_experts,
        "module_prefix_stripped": prefix,
        "base_model": base,
        "note": "routers are dropped: pick the expert per task; the backbone's own trainable modules "
                "(e.g. a visual projector) are not part of a peft adapter and stay in the tsembed model directory"
                + ("; null experts have no weights: an input the router sent to one gets the shared experts "
                   "alone, which no exported adapter holds by itself" if moe.num_null_experts else ""),
    }
    atomic_write(out / EXPORT_INFO_NAME, lambda p: p.write_text(json.dumps(info, indent=2) + "\n"))
    return written

"""Save and strictly load MoE-LoRA adapters, routers and their config (safetensors + JSON)."""

from __future__ import annotations

import json
from pathlib import Path

import torch
from safetensors.torch import save_file
from torch import nn

from tsembed.errors import AdapterError
from tsembed.fileio import atomic_write
from tsembed.moe.attach import adapter_layers, attach, get_moe_config
from tsembed.moe.config import MoELoRAConfig
from tsembed.moe.routing import RoutingState
from tsembed.weights import read_safetensors

CONFIG_NAME = "adapter_config.json"
WEIGHTS_NAME = "adapter_model.safetensors"
FORMAT = "tsembed-moe-lora"
FORMAT_VERSION = 1


def adapter_state_dict(model: nn.Module) -> dict[str, torch.Tensor]:
    """Adapter and router tensors keyed ``<module path>.<param>`` (built from paths, never by replacement)."""
    state: dict[str, torch.Tensor] = {}
    for name, layer in adapter_layers(model).items():
        for param, value in layer.adapter_parameters().items():
            state[f"{name}.{param}"] = value
    return state


def save_adapters(model: nn.Module, directory: str | Path) -> Path:
    """Write ``adapter_config.json`` and ``adapter_model.safetensors`` atomically into ``directory``."""
    directory = Path(directory)
    directory.mkdir(parents=True, exist_ok=True)
    config = get_moe_config(model)
    meta = {
        "format": FORMAT,
        "format_version": FORMAT_VERSION,
        "config": config.to_dict(),
        "modules": sorted(adapter_layers(model)),
    }
    tensors = {k: v.detach().contiguous().cpu() for k, v in adapter_state_dict(model).items()}
    atomic_write(directory / WEIGHTS_NAME, lambda path: save_file(tensors, str(path), metadata={"format": FORMAT}))
    atomic_write(directory / CONFIG_NAME, lambda path: path.write_text(json.dumps(meta, indent=2) + "\n"))
    return directory


def read_adapter_config(directory: str | Path) -> tuple[MoELoRAConfig, list[str]]:
    path = Path(directory) / CONFIG_NAME
    if not path.is_file():
        raise AdapterError(f"no adapter config at {path}")
    try:
        meta = json.loads(path.read_text())
    except json.JSONDecodeError as exc:
        raise AdapterError(f"{path}: not valid JSON ({exc})") from None
    if meta.get("format") != FORMAT:
        raise AdapterError(f"{path}: field 'format' is {meta.get('format')!r}, expected {FORMAT!r}")
    if meta.get("format_version") != FORMAT_VERSION:
        raise AdapterError(f"{path}: format_version {meta.get('format_version')!r} is not supported")
    return MoELoRAConfig.from_dict(meta["config"]), list(meta["modules"])


def load_adapters(model: nn.Module, directory: str | Path, strict: bool = True) -> nn.Module:
    """Load adapters saved by ``save_adapters``; attaches them first if ``model`` has none.

    Strict (the default): a config that differs from the attached one, missing or unexpected keys and
    shape mismatches all raise one ``AdapterError`` that lists them, before any weight is copied.
    """
    directory = Path(directory)
    saved_config, saved_modules = read_adapter_config(directory)
    if not isinstance(getattr(model, "tsembed_routing_state", None), RoutingState):
        attach(model, saved_config)
    else:
        diffs = {
            k: (v, saved_config.to_dict()[k])
            for k, v in get_moe_config(model).to_dict().items()
            if saved_config.to_dict()[k] != v
        }
        if diffs:
            listed = ", ".join(f"{k}: attached {a!r} vs checkpoint {b!r}" for k, (a, b) in diffs.items())
            raise AdapterError(f"{directory}: adapter config differs from the attached adapters ({listed})")

    weights_path = directory / WEIGHTS_NAME
    if not weights_path.is_file():
        raise AdapterError(f"no adapter weights at {weights_path}")
    loaded = read_safetensors(weights_path)  # names the file if truncated, corrupt or non-finite
    expected = adapter_state_dict(model)
    missing = sorted(set(expected) - set(loaded))
    unexpected = sorted(set(loaded) - set(expected))
    mismatched = [
        f"{k}: checkpoint {tuple(loaded[k].shape)} vs model {tuple(expected[k].shape)}"
        for k in sorted(set(expected) & set(loaded))
        if loaded[k].shape != expected[k].shape
    ]
    module_diff = sorted(set(saved_modules) ^ set(adapter_layers(model)))
    problems = []
    if strict and missing:
        problems.append(f"missing keys {missing}")
    if strict and unexpected:
        problems.append(f"unexpected keys {unexpected}")
    if strict and module_diff:
        problems.append(f"adapted modules differ from the checkpoint's: {module_diff}")
    if mismatched:
        problems.append(f"shape mismatches {mismatched}")
    if problems:
        raise AdapterError(f"cannot load adapters from {directory}: " + "; ".join(problems))
    with torch.no_grad():
        for key, tensor in loaded.items():
            if key in expected:
                expected[key].copy_(tensor.to(expected[key].dtype))
    return model

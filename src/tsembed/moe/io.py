"""Save and strictly load MoE-LoRA adapters, routers and their config (safetensors + JSON).

The files have tsembed's own names: peft's ``adapter_config.json`` / ``adapter_model.safetensors`` mean a
different format (``tsembed export --peft`` writes those), and a tool that finds peft's names expects peft's
content. Directories saved before the rename (under peft's names, marked ``format: tsembed-moe-lora``) still
load.
"""

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

CONFIG_NAME = "moe_lora_config.json"
WEIGHTS_NAME = "moe_lora.safetensors"
#: The names adapters were saved under before tsembed stopped borrowing peft's: read, never written.
LEGACY_CONFIG_NAME = "adapter_config.json"
LEGACY_WEIGHTS_NAME = "adapter_model.safetensors"
FORMAT = "tsembed-moe-lora"
FORMAT_VERSION = 1


def adapter_state_dict(model: nn.Module) -> dict[str, torch.Tensor]:
    """Adapter and router tensors keyed ``<module path>.<param>`` (built from paths, never by replacement)."""
    state: dict[str, torch.Tensor] = {}
    for name, layer in adapter_layers(model).items():
        for param, value in layer.adapter_parameters().items():
            state[f"{name}.{param}"] = value
    return state


def adapter_files(directory: str | Path) -> tuple[Path, Path]:
    """(config, weights) paths of the adapters in ``directory``: tsembed's names, or the legacy names of a
    directory saved before the rename when only those exist."""
    directory = Path(directory)
    if not (directory / CONFIG_NAME).is_file() and (directory / LEGACY_CONFIG_NAME).is_file():
        return directory / LEGACY_CONFIG_NAME, directory / LEGACY_WEIGHTS_NAME
    return directory / CONFIG_NAME, directory / WEIGHTS_NAME


def save_adapters(model: nn.Module, directory: str | Path) -> Path:
    """Write ``moe_lora_config.json`` and ``moe_lora.safetensors`` atomically into ``directory``."""
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
    for legacy in (LEGACY_CONFIG_NAME, LEGACY_WEIGHTS_NAME):  # saved over an older directory: one set of files
        (directory / legacy).unlink(missing_ok=True)
    return directory


def read_adapter_config(directory: str | Path) -> tuple[MoELoRAConfig, list[str]]:
    path = adapter_files(directory)[0]
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

    weights_path = adapter_files(directory)[1]
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

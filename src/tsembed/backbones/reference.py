"""Relocatable references to pretrained backbones in a saved model's config.

A model directory must keep working when it is copied to another folder or machine, so its
``tsembed_config.json`` never pins where the pretrained files happened to sit at save time:

* a default shipped inside a pip package (all-MiniLM-L6-v2, EfficientNet-Lite0) is stored as None, which
  loads the package's copy wherever it is installed;
* a Hugging Face cache snapshot (``.../models--org--name/snapshots/<rev>``) is stored as its Hub id
  (``org/name``), which loads from the local cache offline (``tsembed.backbones.hf.resolve_pretrained``), when
  that id resolves to this very snapshot here (the active cache, the ``main`` revision); else as a path;
* a directory inside the model directory is stored relative to it, as ``./sub/dir``;
* any other local path stays absolute (override it when loading with ``backbone_path=`` / ``--backbone-path``).

Models saved before this rule may hold absolute paths; they load unchanged.
"""

from __future__ import annotations

from pathlib import Path
from typing import Any

from tsembed.backbones.base import Backbone
from tsembed.backbones.hf import hub_model_id, resolve_pretrained
from tsembed.backbones.registry import BACKBONES
from tsembed.errors import ConfigError

RELATIVE_PREFIX = "./"  # marks a path relative to the model directory (and keeps it apart from a Hub id)


def portable_reference(value: str, model_dir: Path, packaged: Path | None = None) -> str | None:
    """How a saved model in ``model_dir`` stores the pretrained reference ``value`` (see the module doc)."""
    path = Path(value).expanduser()
    if not path.exists():  # a Hub id, or a path absent here: kept as written
        return value
    path = path.resolve()
    if packaged is not None and path == packaged.resolve():
        return None
    hub_id = hub_model_id(path)
    if hub_id and _cached_snapshot(hub_id) == path:
        return hub_id
    try:
        return RELATIVE_PREFIX + path.relative_to(Path(model_dir).resolve()).as_posix()
    except ValueError:
        return str(path)


def _cached_snapshot(hub_id: str) -> Path | None:
    """Where ``hub_id`` resolves offline now, or None when it does not."""
    try:
        return resolve_pretrained(hub_id, "path").resolve()
    except ConfigError:
        return None


def drop_retired_options(cls: type[Backbone], config: dict[str, Any]) -> None:
    """Remove from ``config``, in place, each retired option at the one value it still takes
    (``Backbone.retired_options``); another value stays, for the backbone to refuse with its own message."""
    for option, value in cls.retired_options.items():
        if option in config and config[option] == value and type(config[option]) is type(value):
            del config[option]


def portable_backbone_config(config: dict[str, Any], model_dir: str | Path) -> dict[str, Any]:
    """``config`` (``{"kind": ..., **options}``) with each pretrained reference made relocatable (and retired
    options at their accepted value left out)."""
    cls = BACKBONES.get(config.get("kind", ""))
    if cls is None:
        return dict(config)
    out = dict(config)
    drop_retired_options(cls, out)
    packaged = cls.packaged_references()
    for option in cls.reference_options:
        if out.get(option):
            out[option] = portable_reference(str(out[option]), Path(model_dir), packaged.get(option))
    return out


def resolve_backbone_config(config: dict[str, Any], model_dir: str | Path,
                            backbone_path: str | Path | None = None) -> dict[str, Any]:
    """The backbone config of a saved model as ``build_backbone`` takes it.

    Paths stored relative to the model directory become absolute. ``backbone_path`` (a directory or a Hub
    id) replaces the backbone's main reference (``reference_options[0]``: ``path``, or ``text_model`` for
    minilm-effnet), e.g. when the pretrained weights moved. A retired option at the one value it still takes
    (``Backbone.retired_options``, e.g. an older model's ``projector_experts: 1``) is dropped; another value is
    kept, for the backbone to refuse.

    Raises:
        ConfigError: ``backbone_path`` for a backbone kind that takes no pretrained reference.
    """
    out = dict(config)
    cls = BACKBONES.get(out.get("kind", ""))
    if cls is None:
        return out  # build_backbone names the unknown kind
    drop_retired_options(cls, out)
    for option in cls.reference_options:
        value = out.get(option)
        inside = Path(model_dir) / value if isinstance(value, str) and value.startswith(RELATIVE_PREFIX) else None
        if inside is not None and inside.exists():  # else an older model's path relative to the working directory
            out[option] = str(inside.resolve())
    if backbone_path is not None:
        if not cls.reference_options:
            raise ConfigError(f"backbone_path: backbone {cls.kind!r} loads no pretrained files to override")
        local = Path(backbone_path).expanduser()
        out[cls.reference_options[0]] = str(local.resolve()) if local.exists() else str(backbone_path)
    return out

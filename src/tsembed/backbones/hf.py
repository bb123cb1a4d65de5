"""Offline, strict loading of Hugging Face models and processors from local directories or the local Hub cache."""

from __future__ import annotations

import os
import re
from collections.abc import Iterator
from contextlib import contextmanager
from pathlib import Path
from typing import Any

import torch
from transformers.utils import logging as hf_logging

from tsembed.errors import ConfigError
from tsembed.precision import DTYPES


def parse_dtype(name: str) -> torch.dtype:
    """Weights dtype by name; a ``ConfigError`` lists the valid names."""
    try:
        return DTYPES[name]
    except KeyError:
        raise ConfigError(f"dtype must be one of {sorted(DTYPES)}, got {name!r}") from None


@contextmanager
def quiet_transformers() -> Iterator[None]:
    """Silence transformers' load reports and progress bars; tsembed checks the load itself."""
    verbosity = hf_logging.get_verbosity()
    bars = hf_logging.is_progress_bar_enabled()
    hf_logging.set_verbosity_error()
    hf_logging.disable_progress_bar()
    try:
        yield
    finally:
        hf_logging.set_verbosity(verbosity)
        if bars:
            hf_logging.enable_progress_bar()


def hub_cache_dir() -> Path:
    """The local Hugging Face Hub cache, read from the environment at call time (``HF_HUB_CACHE``, else
    ``HF_HOME``/hub, else huggingface_hub's default), so a test or a user may point it elsewhere."""
    from huggingface_hub import constants

    if os.environ.get("HF_HUB_CACHE"):
        return Path(os.environ["HF_HUB_CACHE"]).expanduser()
    if os.environ.get("HF_HOME"):
        return Path(os.environ["HF_HOME"]).expanduser() / "hub"
    return Path(constants.HF_HUB_CACHE)


def resolve_pretrained(reference: str | Path, field: str) -> Path:
    """The local directory a pretrained reference names: a directory itself, or a Hub id (``org/name``) found in
    the local Hugging Face cache. Nothing is ever downloaded.

    Raises:
        ConfigError: naming ``field``, the reference and the cache directory searched.
    """
    text = str(reference)
    directory = Path(text).expanduser()
    if directory.is_dir():
        return directory
    cache = hub_cache_dir()
    if not _HUB_ID.fullmatch(text):
        raise ConfigError(f"{field}: {text!r} is not a local directory (nor a Hugging Face Hub id 'org/name' to "
                          f"look up in the local cache {cache}); for a saved model, pass --backbone-path DIR "
                          "(or backbone_path=) to point at the backbone's local copy")
    from huggingface_hub import snapshot_download
    from huggingface_hub.errors import HFValidationError, LocalEntryNotFoundError

    try:
        return Path(snapshot_download(text, cache_dir=cache, local_files_only=True))
    except (LocalEntryNotFoundError, HFValidationError, OSError):
        raise ConfigError(
            f"{field}: {text!r} is not a local directory, and Hub id {text!r} is not in the local Hugging Face "
            f"cache {cache} (HF_HUB_CACHE); tsembed never downloads: fetch it where there is internet "
            f"(`hf download {text}`) and copy the cache here, or pass a local directory (for a saved model: "
            "--backbone-path DIR, or backbone_path=)"
        ) from None


def resolve_model_type(reference: str | Path, field: str, supported: Any, backbone: str) -> tuple[Path, str]:
    """The local directory of ``reference`` and its ``model_type``, refused unless ``supported`` holds it.

    Every Hugging Face backbone checks the architecture before loading weights, so a wrong directory fails
    with one line naming the field, the path and what the backbone accepts.
    """
    from transformers import AutoConfig

    directory = resolve_pretrained(reference, field)
    with quiet_transformers():
        model_type = AutoConfig.from_pretrained(str(directory), local_files_only=True).model_type
    if model_type not in supported:
        raise ConfigError(f"{field}: {str(reference)!r} holds a {model_type!r} model; {backbone} supports "
                          f"{sorted(supported)}")
    return directory, model_type


_HUB_ID = re.compile(r"[A-Za-z0-9][\w.-]*/[\w.-]+")
_CACHE_SNAPSHOT = re.compile(r"models--([\w.-]+?)--([\w.-]+)/snapshots/[^/]+/?$")


def hub_model_id(reference: str | Path) -> str | None:
    """The Hub id a model reference names: ``org/name`` itself when it is not a local path, or the repository
    of a Hugging Face cache snapshot directory (``.../models--org--name/snapshots/<rev>``); else None."""
    text = str(reference)
    cached = _CACHE_SNAPSHOT.search(text.replace("\\", "/"))
    if cached:
        return f"{cached.group(1)}/{cached.group(2)}"
    if _HUB_ID.fullmatch(text) and not Path(text).expanduser().exists():
        return text
    return None


def pretrained_card_metadata(reference: str | Path, directory: str | Path, hub_id: str | None = None) -> dict[str, Any]:
    """``base_model``, ``license`` and ``language`` of a pretrained checkpoint for a model card, read offline.

    Args:
        reference: how the config names the checkpoint (a Hub id, a cache snapshot or a local path).
        directory: where it was loaded from; its own README.md front matter gives the licence.
        hub_id: the Hub id when the caller knows it (e.g. a checkpoint shipped inside a pip package).
    """
    metadata: dict[str, Any] = {}
    hub_id = hub_id or hub_model_id(reference) or hub_model_id(directory)
    if hub_id:
        metadata["base_model"] = [hub_id]
    readme = Path(directory) / "README.md"
    if readme.is_file():
        import yaml
        from huggingface_hub import ModelCard

        try:
            card_data = ModelCard.load(readme, ignore_metadata_errors=True).data
        except (OSError, ValueError, yaml.YAMLError):  # an unreadable card says nothing about the licence
            card_data = None
        license_id = getattr(card_data, "license", None)
        if isinstance(license_id, str) and license_id:
            metadata["license"] = license_id
        language = getattr(card_data, "language", None)
        language = [language] if isinstance(language, str) else language
        if isinstance(language, list) and language and all(isinstance(x, str) for x in language):
            metadata["language"] = language
    return metadata


def load_model(loader: Any, path: Path, field: str, **kwargs: Any) -> Any:
    """``loader.from_pretrained(path, local_files_only=True)``, raising if any weight was missing.

    Unexpected weights (e.g. an LM head or pooler this backbone does not use) are fine; missing ones
    would be silently random-initialised, so they are an error.
    """
    with quiet_transformers():
        model, info = loader.from_pretrained(str(path), local_files_only=True, output_loading_info=True, **kwargs)
    missing = sorted(info.get("missing_keys", ()))
    if missing:
        shown = ", ".join(missing[:8]) + (f" ... ({len(missing)} in all)" if len(missing) > 8 else "")
        raise ConfigError(f"{field}: checkpoint {str(path)!r} lacks weights for {shown}")
    return model


def load_component(loader: Any, path: Path, field: str, **kwargs: Any) -> Any:
    """A tokenizer or image processor from ``path``; a missing one is a ``ConfigError`` naming ``field``."""
    try:
        with quiet_transformers():
            return loader.from_pretrained(str(path), local_files_only=True, **kwargs)
    except (OSError, ValueError, KeyError) as exc:
        raise ConfigError(f"{field}: cannot load {loader.__name__} from {str(path)!r} ({exc})") from None


def check_max_length(max_length: int, config: Any, what: str = "the text model") -> None:
    """Refuse a ``max_length`` past the model's position limit (``max_position_embeddings``) when the backbone is
    built: it would load, then fail (a 500 from the server) on the first input that long.

    Raises:
        ConfigError: naming both numbers.
    """
    positions = getattr(config, "max_position_embeddings", None)
    if isinstance(positions, int) and positions > 0 and max_length > positions:
        raise ConfigError(f"max_length={max_length} is past {what}'s position limit of {positions} tokens "
                          f"(max_position_embeddings); inputs that long could not be embedded: set max_length to "
                          f"{positions} or less")

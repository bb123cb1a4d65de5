"""Offline, strict loading of Hugging Face models and processors from local directories."""

from __future__ import annotations

from collections.abc import Iterator
from contextlib import contextmanager
from pathlib import Path
from typing import Any

import torch
from transformers.utils import logging as hf_logging

from tsembed.errors import ConfigError

DTYPES = {"float32": torch.float32, "bfloat16": torch.bfloat16, "float16": torch.float16}


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


def local_dir(path: str | Path, field: str) -> Path:
    """``path`` as a directory that exists (nothing is ever fetched from the Hub).

    Raises:
        ConfigError: naming ``field`` and the path.
    """
    directory = Path(path).expanduser()
    if not directory.is_dir():
        raise ConfigError(
            f"{field}: {str(path)!r} is not a local directory; tsembed loads models offline from a directory "
            "written by save_pretrained"
        )
    return directory


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

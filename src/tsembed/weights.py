"""Reading weight files safely: every error names the file, corrupt or changed weights are refused.

A saved model directory lists the sha256 of each weight file in ``checksums.json`` (written last by
``save_pretrained``), so a flipped bit, a truncated copy or a file swapped in after saving is an error at
load, not a model that serves wrong vectors. NaN/Inf in a loaded tensor is an error too: it would turn
every embedding that touches it into NaN.
"""

from __future__ import annotations

import hashlib
import json
import logging
from pathlib import Path

import torch
from safetensors import SafetensorError
from safetensors.torch import load_file

from tsembed.errors import AdapterError
from tsembed.fileio import atomic_write

logger = logging.getLogger(__name__)

CHECKSUMS_NAME = "checksums.json"
CHECKSUMS_FORMAT = "tsembed-checksums"


def sha256_file(path: str | Path) -> str:
    with open(path, "rb") as fh:
        return hashlib.file_digest(fh, "sha256").hexdigest()


def nonfinite_keys(tensors: dict[str, torch.Tensor]) -> list[str]:
    """Keys of floating tensors holding NaN or Inf."""
    return [k for k, v in tensors.items() if v.is_floating_point() and not bool(torch.isfinite(v).all())]


def read_safetensors(path: str | Path) -> dict[str, torch.Tensor]:
    """``load_file`` whose errors name the file (safetensors' own says only e.g. "invalid header length").

    Raises:
        AdapterError: the file is truncated or corrupt, or a tensor holds NaN/Inf (keys listed).
    """
    try:
        tensors = load_file(str(path))
    except SafetensorError as exc:
        raise AdapterError(f"{path}: not a readable safetensors file (truncated or corrupt?): {exc}") from None
    bad = nonfinite_keys(tensors)
    if bad:
        raise AdapterError(f"{path}: tensors {bad[:10]} hold NaN or Inf values; the weights are corrupt "
                           "(or training diverged before they were saved)")
    return tensors


def write_checksums(directory: str | Path, files: list[str]) -> Path:
    """Write ``checksums.json``: the sha256 of each of ``files`` (paths relative to ``directory``) present."""
    directory = Path(directory)
    sums = {name: sha256_file(directory / name) for name in sorted(files) if (directory / name).is_file()}
    text = json.dumps({"format": CHECKSUMS_FORMAT, "sha256": sums}, indent=2) + "\n"
    return atomic_write(directory / CHECKSUMS_NAME, lambda p: p.write_text(text))


def read_checksums(directory: str | Path) -> dict[str, str] | None:
    """The listed sha256 per file, or None for a directory saved before checksums existed."""
    path = Path(directory) / CHECKSUMS_NAME
    if not path.is_file():
        return None
    expected = f"expected {{'format': {CHECKSUMS_FORMAT!r}, 'sha256': {{file: hex}}}}; save the model again"
    try:
        meta = json.loads(path.read_text(encoding="utf-8"))
    except (json.JSONDecodeError, UnicodeDecodeError) as exc:
        raise AdapterError(f"{path}: not valid JSON ({exc}); {expected}") from None
    if not isinstance(meta, dict):  # e.g. [] or a bare string: no .get, so say what it is
        raise AdapterError(f"{path}: holds a JSON {type(meta).__name__}, not an object; {expected}")
    sums = meta.get("sha256")
    if meta.get("format") != CHECKSUMS_FORMAT or not isinstance(sums, dict):
        raise AdapterError(f"{path}: {expected}")
    bad = sorted(str(name) for name, digest in sums.items()
                 if not isinstance(digest, str) or len(digest) != 64 or not set(digest) <= _HEX)
    if bad:
        raise AdapterError(f"{path}: the sha256 of {bad[:5]} is not a 64-digit hex string; {expected}")
    return sums


_HEX = set("0123456789abcdefABCDEF")


def verify_checksums(directory: str | Path, files: list[str]) -> dict[str, str] | None:
    """Check every weight file of ``files`` present in ``directory`` against ``checksums.json``.

    Returns the listed checksums (None, with a warning, for a directory saved without them).

    Raises:
        AdapterError: a listed file is missing or differs, or a weight file is present but not listed.
    """
    directory = Path(directory)
    sums = read_checksums(directory)
    if sums is None:
        logger.warning("%s has no %s (saved by an older tsembed): its weights are not verified; save the model "
                       "again to add them", directory, CHECKSUMS_NAME)
        return None
    listing = directory / CHECKSUMS_NAME
    for name in sorted(set(files) | set(sums)):
        path = directory / name
        if name not in sums:
            if path.is_file():
                raise AdapterError(f"{path}: weight file not listed in {listing}; it was added after saving")
            continue
        if not path.is_file():
            raise AdapterError(f"{path}: listed in {listing} but missing")
        got = sha256_file(path)
        if got != sums[name]:
            raise AdapterError(f"{path}: sha256 {got[:16]}… differs from {sums[name][:16]}… listed in {listing}: "
                               "the file is truncated, corrupt or was changed after saving")
    return sums

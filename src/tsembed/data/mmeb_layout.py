"""Find the datasets of MMEB as users download it from the Hugging Face Hub: one folder per dataset.

``git clone https://huggingface.co/datasets/TIGER-Lab/MMEB-eval`` (or ``huggingface-cli download``) gives::

    MMEB-eval/ImageNet-1K/test-00000-of-00001.parquet      # qry_text, qry_img_path, tgt_text, tgt_img_path
    MMEB-eval/CIRR/test-00000-of-00001.parquet
    ...
    MMEB-eval/images.zip                                     # unzip -> <image root>/ImageNet-1K/..., /CIRR/...

and ``TIGER-Lab/MMEB-train`` the same with ``original-*`` and ``diverse_instruction-*`` shards per folder (its
image paths start with ``images/``, relative to the clone). The Hub's parquet conversion branch
(``refs/convert/parquet``) stores ``<Dataset>/<split>/0000.parquet`` instead, and a converted copy may hold
``<Dataset>/<split>.jsonl``; all three are found. Image paths in the rows stay relative to an image root that the
caller names (``--image-root``; default the clone itself).
"""

from __future__ import annotations

from dataclasses import dataclass
from pathlib import Path

from tsembed.data.formats import JSONL_SUFFIXES, PARQUET_SUFFIXES
from tsembed.errors import DataError

#: The split each Hub dataset stores: MMEB-eval has only "test"; MMEB-train has both instruction variants.
EVAL_SPLIT = "test"
TRAIN_SPLITS: tuple[str, ...] = ("original", "diverse_instruction")


@dataclass(frozen=True)
class LayoutDataset:
    """One dataset folder: its name (the folder's) and the path ``read_records`` reads (a file, folder or glob)."""

    name: str
    path: Path


def split_path(folder: Path, split: str) -> Path | None:
    """Where ``split`` lives inside one dataset folder, or None when the folder has no such split.

    Returns a glob (``<split>-*.parquet``) for Hub shards, so every shard is read and nothing else is.
    """
    inner = folder / split
    if inner.is_dir() and any(p.suffix in PARQUET_SUFFIXES + JSONL_SUFFIXES for p in inner.iterdir()):
        return inner
    if any(folder.glob(f"{split}-*.parquet")):
        return folder / f"{split}-*.parquet"
    for suffix in PARQUET_SUFFIXES + JSONL_SUFFIXES:
        if (folder / f"{split}{suffix}").is_file():
            return folder / f"{split}{suffix}"
    return None


#: A built tsembed suite's manifest: a directory holding one is a suite, not a Hub download.
SUITE_MANIFEST = "suite.json"


def is_layout(root: Path) -> bool:
    """True when ``root`` is a directory whose sub-folders hold split files (rather than holding data files itself,
    or being a tsembed suite)."""
    if not root.is_dir() or (root / SUITE_MANIFEST).is_file():
        return False
    if any(p.suffix in PARQUET_SUFFIXES + JSONL_SUFFIXES for p in root.iterdir() if p.is_file()):
        return False
    return any(_splits_of(folder) for folder in root.iterdir() if folder.is_dir())


def split_names(folder: Path) -> list[str]:
    """The split names a dataset folder holds (``test``, ``original``, ...), sorted."""
    return _splits_of(folder)


def _splits_of(folder: Path) -> list[str]:
    """The split names a dataset folder holds (``test``, ``original``, ...), from its file and folder names."""
    names = set()
    for p in folder.iterdir():
        if p.is_dir() and any(f.suffix in PARQUET_SUFFIXES + JSONL_SUFFIXES for f in p.iterdir()):
            names.add(p.name)
        elif p.suffix in PARQUET_SUFFIXES and "-" in p.stem:
            names.add(p.stem.split("-")[0])
        elif p.suffix in PARQUET_SUFFIXES + JSONL_SUFFIXES:
            names.add(p.stem)
    return sorted(names)


def discover(root: str | Path, split: str) -> list[LayoutDataset]:
    """Every dataset folder under ``root`` that holds ``split``, sorted by name.

    Raises:
        DataError: No folder holds ``split``; the message lists the splits that were found, per folder.
    """
    root = Path(root)
    folders = sorted(p for p in root.iterdir() if p.is_dir() and not p.name.startswith("."))
    found = [LayoutDataset(f.name, path) for f in folders if (path := split_path(f, split)) is not None]
    if not found:
        seen = {f.name: _splits_of(f) for f in folders}
        seen = {name: splits for name, splits in seen.items() if splits}
        raise DataError(
            f"'{root}': no dataset folder holds split {split!r} (expected <Dataset>/{split}-*.parquet, "
            f"<Dataset>/{split}/*.parquet or <Dataset>/{split}.jsonl); splits found: {seen or 'none'}"
        )
    return found

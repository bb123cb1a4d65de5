"""Which eval files to run, and what each one is (meta-task, IND/OOD): suites, files, or mappings.

Accepted forms of ``suite`` (everything becomes a list of ``EvalSet``):

* a suite directory with a ``suite.json`` manifest, opened with ``tsembed.data.load_suite``: every
  dataset with an ``eval`` file; images resolve against the suite's image root;
* MMEB-eval as downloaded from the Hub: a directory with one folder per dataset, each holding its ``test``
  split (``<Dataset>/test-*.parquet``; see ``tsembed.data.mmeb_layout``), named after the folders;
* one eval file or a directory of shards (``.jsonl``/``.json``/``.parquet``), named after its stem;
* a list of such paths, or a ``{name: path}`` mapping;
* a loaded ``tsembed.data.Suite`` (or any object with ``datasets``: ``DatasetInfo``-like entries,
  ``root`` and optionally ``image_root``).

Meta-task and OOD flag come from the manifest, else from the dataset registry by name (which knows MMEB's 36
datasets); a file the registry does not know still runs, and is left out of per-meta-task and IND/OOD averages.
"""

from __future__ import annotations

import logging
from collections.abc import Iterable, Mapping
from dataclasses import dataclass, replace
from pathlib import Path
from typing import Any

from tsembed.data.mmeb_layout import EVAL_SPLIT, discover, is_layout, split_path
from tsembed.data.registry import RANKED_SPLITS
from tsembed.errors import ConfigError, DataError

logger = logging.getLogger(__name__)

MANIFEST_NAME = "suite.json"


@dataclass(frozen=True)
class EvalSet:
    """One eval dataset: its file(s), image root and grouping for the averages."""

    name: str
    path: Path
    image_root: Path
    meta_task: str | None = None
    ood: bool | None = None
    condition: str | None = None

    @property
    def task(self) -> str | None:
        """The task its inputs declare to a task-hinted router: the condition where there is one."""
        return self.condition or self.meta_task


def _registry_info(name: str) -> tuple[str | None, bool | None]:
    from tsembed.data.registry import DATASETS

    info = DATASETS.get(name)
    return (info.meta_task, info.ood) if info is not None else (None, None)


def _entry_field(entry: Any, name: str, default: Any = None) -> Any:
    return entry.get(name, default) if isinstance(entry, Mapping) else getattr(entry, name, default)


def _from_entries(entries: Iterable[tuple[str | None, Any]], root: Path, image_root: Path, where: str,
                  split: str = "eval") -> list[EvalSet]:
    sets = []
    for key, entry in entries:
        name = _entry_field(entry, "name") or key
        if not name:
            raise DataError(f"{where}: a dataset entry has no `name`")
        files = _entry_field(entry, "files") or {}
        eval_file = files.get(split) if isinstance(files, Mapping) else None
        eval_file = eval_file or _entry_field(entry, split)
        if not eval_file:
            continue  # e.g. a train-only entry, or an OOD dataset (eval only) when asked for dev
        reg_task, reg_ood = _registry_info(name)
        meta_task = _entry_field(entry, "meta_task") or reg_task
        ood = _entry_field(entry, "ood")
        path = Path(eval_file) if Path(eval_file).is_absolute() else root / eval_file
        sets.append(EvalSet(name, path, image_root, meta_task, reg_ood if ood is None else bool(ood),
                            _entry_field(entry, "condition") or None))
    return sets


def _from_suite(suite: Any, split: str = "eval") -> list[EvalSet]:
    """Eval sets of a loaded suite (``tsembed.data.Suite`` or any object with ``datasets`` and a root)."""
    entries = suite.datasets
    pairs = list(entries.items()) if isinstance(entries, Mapping) else [(None, e) for e in entries]
    root = Path(getattr(suite, "root", "."))
    image_root = Path(getattr(suite, "image_root", root))
    return _from_entries(pairs, root, image_root, f"suite '{root}'", split)


def _from_layout(root: Path, image_root: Path | None) -> list[EvalSet]:
    """MMEB-eval as downloaded: one folder per dataset with its ``test`` split; grouping from the registry."""
    sets = []
    for found in discover(root, EVAL_SPLIT):
        meta_task, ood = _registry_info(found.name)
        if meta_task is None:
            logger.warning("%s: dataset folder '%s' is not a registered dataset; it counts only in 'overall'",
                           root, found.name)
        sets.append(EvalSet(found.name, found.path, image_root or root, meta_task, ood))
    return sets


def _from_path(path: Path, name: str | None = None, split: str = "eval",
               image_root: Path | None = None) -> list[EvalSet]:
    if path.is_dir() and (path / MANIFEST_NAME).is_file():
        from tsembed.data.suite.load import load_suite

        sets = _from_suite(load_suite(path), split)
        return [replace(s, image_root=image_root) for s in sets] if image_root is not None else sets
    if split != "eval":
        raise ConfigError(f"split {split!r} needs a suite directory (with {MANIFEST_NAME}); '{path}' is not one")
    if not path.exists():
        raise DataError(
            f"eval source '{path}' does not exist (expected a suite directory with {MANIFEST_NAME}, "
            "MMEB-eval as downloaded (a folder per dataset), an eval .jsonl/.parquet file or a directory of them)"
        )
    if name is None and is_layout(path):
        return _from_layout(path, image_root)
    default_root = path if path.is_dir() else path.parent
    name = name or (path.name if path.is_dir() else path.stem)
    if path.is_dir() and (test_split := split_path(path, EVAL_SPLIT)) is not None:
        path = test_split  # one MMEB-eval dataset folder: its test shards, not the other files beside them
    meta_task, ood = _registry_info(name)
    return [EvalSet(name, path, image_root or default_root, meta_task, ood)]


def resolve_eval_sets(suite: Any, datasets: Iterable[str] | None = None, split: str = "eval",
                      image_root: str | Path | None = None) -> list[EvalSet]:
    """Turn any accepted ``suite`` form into eval sets, optionally keeping only ``datasets`` (in suite order).

    ``split="dev"`` reads a suite's dev files instead (IND datasets only; built with ``--dev-fraction``).
    ``image_root`` replaces the image root of every path given (a suite's own, or the default: the file's folder,
    or for MMEB-eval the clone itself), e.g. the folder MMEB-eval's ``images.zip`` was unpacked into.

    Raises:
        ConfigError: A requested dataset is not in the suite (the valid names are listed), or the form of
            ``suite`` is not understood.
        DataError: A path does not exist or the manifest is malformed.
    """
    if split not in RANKED_SPLITS:
        raise ConfigError(f"split must be one of {list(RANKED_SPLITS)}, got {split!r}")
    root = None if image_root is None else Path(image_root)
    if root is not None and not root.is_dir():
        raise DataError(f"image root '{root}' is not a directory")
    if isinstance(suite, EvalSet):
        sets = [suite]
    elif isinstance(suite, str | Path):
        sets = _from_path(Path(suite), split=split, image_root=root)
    elif isinstance(suite, Mapping):
        sets = [s for name, p in suite.items() for s in _from_path(Path(p), str(name), split, root)]
    elif hasattr(suite, "datasets"):  # a loaded suite object
        sets = _from_suite(suite, split)
    elif isinstance(suite, Iterable):
        sets = [s for item in suite for s in resolve_eval_sets(item, split=split, image_root=root)]
    else:
        raise ConfigError(
            f"cannot evaluate on {type(suite).__name__}: pass a suite directory, eval file(s) "
            "or a {name: path} mapping"
        )
    names = [s.name for s in sets]
    duplicated = sorted({n for n in names if names.count(n) > 1})
    if duplicated:
        raise ConfigError(f"dataset name(s) {duplicated} appear more than once; pass a {{name: path}} mapping")
    if isinstance(datasets, str):
        datasets = [datasets]
    if datasets is not None:
        wanted = [d for item in datasets for d in str(item).split(",") if d.strip()]
        unknown = [d for d in wanted if d.strip() not in names]
        if unknown:
            raise ConfigError(f"unknown dataset(s) {unknown}; this suite has: {', '.join(names)}")
        keep = {d.strip() for d in wanted}
        sets = [s for s in sets if s.name in keep]
    if not sets and split != "eval":
        raise ConfigError(f"the suite has no {split!r} split; build one with `tsembed data build-suite "
                          "--dev-fraction 0.1` (the eval split stays as it was)")
    if not sets:
        raise ConfigError("no eval datasets to run (the suite lists no eval files)")
    return sets

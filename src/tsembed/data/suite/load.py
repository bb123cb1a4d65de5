"""`load_suite`: open a built suite by its manifest and read any dataset split through the data layer."""

from __future__ import annotations

import json
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from tsembed.data.images import ImageChecker
from tsembed.data.mmeb import MMEBSplit, read_eval, read_train
from tsembed.data.registry import DatasetInfo
from tsembed.data.rows import EvalRow, TrainRow
from tsembed.errors import ConfigError, DataError

MANIFEST = "suite.json"
_INFO_KEYS = ("name", "meta_task", "ood", "query_template", "target_template", "files", "description")
_OPTIONAL_INFO_KEYS = ("condition",)  # absent from suites built before the conflict suite existed


@dataclass
class Suite:
    """A built benchmark suite: manifest, one `DatasetInfo` per dataset, and readers for its splits.

    Attributes:
        root: Suite directory; also the image root of every row.
        manifest: The parsed `suite.json`.
        datasets: name -> DatasetInfo (files relative to `root`).
    """

    root: Path
    manifest: dict[str, Any]
    datasets: dict[str, DatasetInfo]
    _checker: ImageChecker | None = field(default=None, repr=False)

    @property
    def image_root(self) -> Path:
        return self.root / self.manifest.get("image_root", ".")

    def info(self, name: str) -> DatasetInfo:
        """Raises ConfigError listing the suite's datasets when `name` is not one of them."""
        try:
            return self.datasets[name]
        except KeyError:
            raise ConfigError(
                f"suite '{self.root}' has no dataset {name!r}; valid names: {', '.join(self.datasets)}"
            ) from None

    def names(self, *, split: str | None = None, meta_task: str | None = None, ood: bool | None = None) -> list[str]:
        """Dataset names in manifest order, filtered by split present, meta-task and OOD flag."""
        return [
            n
            for n, d in self.datasets.items()
            if (split is None or split in d.files)
            and (meta_task is None or d.meta_task == meta_task)
            and (ood is None or d.ood == ood)
        ]

    def path(self, name: str, split: str) -> Path:
        info = self.info(name)
        if split not in info.files:
            raise ConfigError(
                f"dataset {name!r} has no {split!r} split"
                + (" (out-of-distribution datasets are eval only)" if info.ood else "")
                + f"; it has: {list(info.files)}"
            )
        return self.root / info.files[split]

    def _shared_checker(self) -> ImageChecker:
        if self._checker is None:  # one cache for all datasets: they share many images
            self._checker = ImageChecker(self.image_root)
        return self._checker

    def train(self, name: str, *, skip_invalid: bool = False, check_images: bool = True) -> MMEBSplit[TrainRow]:
        """Read and validate a dataset's train split (see `read_train`)."""
        return read_train(
            self.path(name, "train"),
            self.image_root,
            skip_invalid=skip_invalid,
            check_images=check_images,
            checker=self._shared_checker(),
        )

    def eval(self, name: str, *, skip_invalid: bool = False, check_images: bool = True,
             split: str = "eval") -> MMEBSplit[EvalRow]:
        """Read and validate a dataset's eval split, or its dev split (see `read_eval`)."""
        return read_eval(
            self.path(name, split),
            self.image_root,
            skip_invalid=skip_invalid,
            check_images=check_images,
            checker=self._shared_checker(),
        )


def load_suite(root: str | Path) -> Suite:
    """Open a suite built by `build_suite` (reads `suite.json` only; rows are read on demand).

    Raises:
        DataError: No readable manifest, or one of another format version.
    """
    root = Path(root)
    path = root / MANIFEST
    if not root.is_dir():
        raise DataError(f"suite directory '{root}' does not exist; build it with "
                        f"`tsembed data build-suite --out {root}`")
    if not path.is_file():
        raise DataError(
            f"'{root}' is not a tsembed suite: {MANIFEST} not found (build one with "
            "`tsembed data build-suite --out DIR`)"
        )
    try:
        manifest = json.loads(path.read_text(encoding="utf-8"))
    except json.JSONDecodeError as exc:
        raise DataError(f"{path} line {exc.lineno}: invalid JSON: {exc.msg}") from None
    if manifest.get("format") != "tsembed-suite" or manifest.get("format_version") != 1:
        raise DataError(
            f"{path}: unsupported suite format {manifest.get('format')!r} version "
            f"{manifest.get('format_version')!r}; this tsembed reads 'tsembed-suite' version 1"
        )
    datasets = {}
    for name, entry in manifest.get("datasets", {}).items():
        missing = [k for k in _INFO_KEYS if k not in entry]
        if missing:
            raise DataError(f"{path}: dataset {name!r} lacks {missing}")
        datasets[name] = DatasetInfo.from_dict({k: entry[k] for k in (*_INFO_KEYS, *_OPTIONAL_INFO_KEYS)
                                                if k in entry})
    return Suite(root=root, manifest=manifest, datasets=datasets)

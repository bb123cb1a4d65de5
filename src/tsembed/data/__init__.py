"""MMEB data layer: rows, readers/writers, validation, dataset registry and the offline benchmark suite.

The suite builder (Pillow, fonts) is imported lazily: `from tsembed.data import build_suite` works, but
importing `tsembed.data` alone stays light.
"""

from typing import Any

from tsembed.data.mmeb import MMEBSplit, read_eval, read_train, validate_file, write_eval, write_train
from tsembed.data.problems import Problem, ValidationReport
from tsembed.data.registry import DATASETS, META_TASKS, DatasetInfo, get_dataset, register_dataset
from tsembed.data.rows import EvalRow, TrainRow

# re-exported: `from tsembed.data import EmbedInput` is a public path (its home is now tsembed.inputs)
from tsembed.inputs import IMAGE_PLACEHOLDER, EmbedInput

_LAZY = {"build_suite", "load_suite", "Suite", "SuiteConfig"}

__all__ = [
    "DATASETS",
    "IMAGE_PLACEHOLDER",
    "META_TASKS",
    "DatasetInfo",
    "EmbedInput",
    "EvalRow",
    "MMEBSplit",
    "Problem",
    "Suite",
    "SuiteConfig",
    "TrainRow",
    "ValidationReport",
    "build_suite",
    "get_dataset",
    "load_suite",
    "read_eval",
    "read_train",
    "register_dataset",
    "validate_file",
    "write_eval",
    "write_train",
]


def __getattr__(name: str) -> Any:
    if name in _LAZY:
        from tsembed.data import suite

        return getattr(suite, name)
    raise AttributeError(f"module 'tsembed.data' has no attribute {name!r}")

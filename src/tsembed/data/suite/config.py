"""Knobs of the offline suite build, checked once at the edge."""

from __future__ import annotations

from dataclasses import asdict, dataclass
from typing import Any

from tsembed.errors import ConfigError

#: Bumped whenever the generator would produce different files for the same seed and knobs.
GENERATOR_VERSION = "1"
FORMATS = ("jsonl", "parquet")


@dataclass(frozen=True)
class SuiteConfig:
    """Size and rendering knobs of `build_suite`.

    Attributes:
        seed: Seeds the train/eval split by base emoji and every sample.
        max_train_per_dataset: Train pairs per in-distribution dataset (fewer if the split runs out).
        max_eval_per_dataset: Eval queries per dataset.
        pool_size: Candidates per eval query of retrieval and grounding datasets (MMEB uses 1,000;
            200 keeps the build and an evaluation pass on CPU within minutes).
        vqa_choices: Candidate answers per query of the name-answer VQA datasets.
        eval_fraction: Share of base emoji held out for evaluation (IND eval and OOD datasets).
        dev_fraction: Share of base emoji held out as a development split of the in-distribution datasets
            (eval format, never trained on): where configs and methods are compared, so the eval split is
            only ever used for the final report. 0: no dev split (the train split is then unchanged).
        tile_size: Side in pixels of single-emoji images.
        canvas_size: Side in pixels of multi-emoji canvases (3x3 grid).
        format: File format of the rows, "jsonl" or "parquet".
        datasets: Build only these datasets (None: all).
    """

    seed: int = 0
    max_train_per_dataset: int = 1000
    max_eval_per_dataset: int = 200
    pool_size: int = 200
    vqa_choices: int = 20
    eval_fraction: float = 0.25
    dev_fraction: float = 0.0
    tile_size: int = 96
    canvas_size: int = 128
    format: str = "jsonl"
    datasets: tuple[str, ...] | None = None

    def __post_init__(self) -> None:
        for name in ("max_train_per_dataset", "max_eval_per_dataset"):
            if getattr(self, name) < 0:
                raise ConfigError(f"{name} must be >= 0, got {getattr(self, name)}")
        for name, low in (("pool_size", 2), ("vqa_choices", 2), ("tile_size", 16), ("canvas_size", 48)):
            if getattr(self, name) < low:
                raise ConfigError(f"{name} must be >= {low}, got {getattr(self, name)}")
        if not 0.0 < self.eval_fraction < 1.0:
            raise ConfigError(f"eval_fraction must be in (0, 1), got {self.eval_fraction}")
        if not 0.0 <= self.dev_fraction < 1.0 - self.eval_fraction:
            raise ConfigError(f"dev_fraction must be in [0, 1 - eval_fraction) = [0, {1 - self.eval_fraction:g}), "
                              f"got {self.dev_fraction}: some bases must remain for training")
        if self.format not in FORMATS:
            raise ConfigError(f"format must be one of {list(FORMATS)}, got {self.format!r}")
        if self.datasets is not None:
            from tsembed.data.registry import SUITE_DATASETS

            valid = [d.name for d in SUITE_DATASETS]
            unknown = [d for d in self.datasets if d not in valid]
            if unknown:
                raise ConfigError(f"unknown suite dataset(s) {unknown}; valid names: {', '.join(valid)}")
            object.__setattr__(self, "datasets", tuple(self.datasets))

    @property
    def splits(self) -> tuple[str, ...]:
        """Splits of the in-distribution datasets; out-of-distribution ones have eval only."""
        return ("train", "dev", "eval") if self.dev_fraction > 0 else ("train", "eval")

    def to_dict(self) -> dict[str, Any]:
        data = asdict(self)
        data["datasets"] = None if self.datasets is None else list(self.datasets)
        return data

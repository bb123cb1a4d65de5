"""Knobs of the offline suite build, checked once at the edge."""

from __future__ import annotations

from dataclasses import asdict, dataclass, replace
from typing import TYPE_CHECKING, Any

from tsembed.errors import ConfigError

if TYPE_CHECKING:
    from tsembed.data.registry import DatasetInfo

#: Bumped whenever the generator would produce different files for the same seed and knobs.
GENERATOR_VERSION = "1"
FORMATS = ("jsonl", "parquet")
KINDS = ("standard", "conflict")
TARGET_WORDINGS = ("named", "generic")


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
        kind: "standard" (15 datasets over four meta-tasks: breadth) or "conflict" (conditional similarity:
            the same query, opposite notions of similarity, one shared gallery; docs/design.md §5.2).
        instructions: Conflict suite only. False words every condition alike, so nothing but the data says
            which similarity a row wants: the control that shows the conditions conflict.
        targets: Conflict suite only. "named": each target's instruction says what to keep ("Represent the
            colour of the emoji..."); "generic": every target carries MMEB's one generic instruction ("Represent
            the given image."), so only the query names the condition and nothing can route by the target's text.
        conflict_streams: Conflict suite only. Which streams of pairs to build (`registry.CONFLICT_STREAMS`):
            tone, tint and text (the default, the suite as first built) and gender (opt-in). Left out of the
            manifest when default, so suites built before the option existed rebuild byte for byte.
        train_wordings: Conflict suite only. Wordings per in-distribution query instruction in the train split:
            its rows cycle through the dataset's wording and the first N - 1 of `registry.CONFLICT_TRAIN_WORDINGS`;
            dev and eval keep the one wording, and the reworded eval datasets stay unseen. 1 (the default) is
            left out of the manifest, so earlier suites rebuild byte for byte.
        tint_palette: Conflict suite only. The tints of the tint and text pairs (`registry.TINT_PALETTES`): "six"
            hues 60 degrees apart (the default, left out of the manifest) or "twelve", the six plus one between
            each neighbouring pair, so "the same colour" needs a finer eye and a shape task that ignores colour
            has more to ignore.
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
    kind: str = "standard"
    instructions: bool = True
    targets: str = "named"
    conflict_streams: tuple[str, ...] = ("tone", "tint", "text")
    train_wordings: int = 1
    tint_palette: str = "six"

    def __post_init__(self) -> None:
        from tsembed.data.registry import CONFLICT_STREAMS, DEFAULT_CONFLICT_STREAMS

        streams = tuple(self.conflict_streams)
        unknown_streams = [s for s in streams if s not in CONFLICT_STREAMS]
        if unknown_streams or not streams or len(set(streams)) != len(streams):
            raise ConfigError(f"conflict_streams must be distinct names among {list(CONFLICT_STREAMS)}, "
                              f"got {list(streams)}")
        # canonical order, so the same set of streams always names the same suite
        object.__setattr__(self, "conflict_streams", tuple(s for s in CONFLICT_STREAMS if s in streams))
        if self.conflict_streams != DEFAULT_CONFLICT_STREAMS and self.kind != "conflict":
            raise ConfigError("conflict_streams (--conflict-streams) applies to the conflict suite only")
        if self.kind not in KINDS:
            raise ConfigError(f"kind must be one of {list(KINDS)}, got {self.kind!r}")
        from tsembed.data.registry import MAX_TRAIN_WORDINGS

        if not 1 <= self.train_wordings <= MAX_TRAIN_WORDINGS:
            raise ConfigError(f"train_wordings (--train-wordings) must be in [1, {MAX_TRAIN_WORDINGS}], got "
                              f"{self.train_wordings}")
        if self.train_wordings > 1 and (self.kind != "conflict" or not self.instructions):
            raise ConfigError("train_wordings > 1 (--train-wordings) applies to the conflict suite with instructions "
                              "only")
        from tsembed.data.registry import DEFAULT_PALETTE, TINT_PALETTES

        if self.tint_palette not in TINT_PALETTES:
            raise ConfigError(f"tint_palette (--tint-palette) must be one of {list(TINT_PALETTES)}, got "
                              f"{self.tint_palette!r}")
        if self.tint_palette != DEFAULT_PALETTE and self.kind != "conflict":
            raise ConfigError("tint_palette (--tint-palette) applies to the conflict suite only")
        if not self.instructions and self.kind != "conflict":
            raise ConfigError("instructions=False (--no-instructions) applies to the conflict suite only")
        if self.targets not in TARGET_WORDINGS:
            raise ConfigError(f"targets must be one of {list(TARGET_WORDINGS)}, got {self.targets!r}")
        if self.targets != "named" and self.kind != "conflict":
            raise ConfigError("targets='generic' (--targets generic) applies to the conflict suite only")
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
            valid = [d.name for d in self.dataset_infos(all_datasets=True)]
            unknown = [d for d in self.datasets if d not in valid]
            if unknown:
                hint = ""
                if self.kind == "conflict":
                    from tsembed.data.registry import CONFLICT_STREAMS

                    other = sorted({s for s, names in CONFLICT_STREAMS.items() for d in unknown if d in names})
                    hint = f" ({', '.join(unknown)}: add stream(s) {other} to --conflict-streams)" if other else ""
                raise ConfigError(f"unknown suite dataset(s) {unknown} for kind {self.kind!r}{hint}; "
                                  f"valid names: {', '.join(valid)}")
            object.__setattr__(self, "datasets", tuple(self.datasets))

    @property
    def splits(self) -> tuple[str, ...]:
        """Splits of the in-distribution datasets; out-of-distribution ones have eval only."""
        return ("train", "dev", "eval") if self.dev_fraction > 0 else ("train", "eval")

    def dataset_infos(self, all_datasets: bool = False) -> list[DatasetInfo]:
        """The kind's datasets (those picked by `datasets` unless `all_datasets`), templates as built."""
        from tsembed.data.registry import CONFLICT_STREAMS, SUITE_KINDS

        infos = [d for d in SUITE_KINDS[self.kind] if all_datasets or self.datasets is None or d.name in self.datasets]
        if self.kind == "conflict":
            streams = {name for s in self.conflict_streams for name in CONFLICT_STREAMS[s]}
            infos = [d for d in infos if d.name in streams]
        if not self.instructions:
            return [neutral(d) for d in infos]
        return infos if self.targets == "named" else [generic_target(d) for d in infos]

    def to_dict(self) -> dict[str, Any]:
        data = asdict(self)
        data["datasets"] = None if self.datasets is None else list(self.datasets)
        from tsembed.data.registry import DEFAULT_CONFLICT_STREAMS

        if self.train_wordings == 1:
            del data["train_wordings"]  # as suites built before the option existed
        from tsembed.data.registry import DEFAULT_PALETTE

        if self.tint_palette == DEFAULT_PALETTE:
            del data["tint_palette"]  # as suites built before the option existed
        if self.conflict_streams == DEFAULT_CONFLICT_STREAMS:
            del data["conflict_streams"]  # as suites built before the option existed
        else:
            data["conflict_streams"] = list(self.conflict_streams)
        return data


def train_query_templates(info: DatasetInfo, wordings: int) -> tuple[str, ...]:
    """The query wordings a dataset's train rows cycle through: its own, then its first ``wordings - 1`` others."""
    from tsembed.data.registry import CONFLICT_TRAIN_WORDINGS

    if wordings == 1 or info.ood:
        return (info.query_template,)
    return (info.query_template, *CONFLICT_TRAIN_WORDINGS[info.name][: wordings - 1])


def generic_target(info: DatasetInfo) -> DatasetInfo:
    """`info` with MMEB's generic image-target instruction; the query keeps its condition's wording."""
    from tsembed.data.registry import IMAGE_TARGET

    return replace(info, target_template=IMAGE_TARGET)


def neutral(info: DatasetInfo) -> DatasetInfo:
    """`info` with the condition-free wording of the no-instruction control (queries and targets alike)."""
    from tsembed.data.registry import IMAGE_TARGET, NEUTRAL_IMAGE_QUERY, NEUTRAL_TEXT_QUERY
    from tsembed.inputs import IMAGE_PLACEHOLDER

    query = NEUTRAL_IMAGE_QUERY if IMAGE_PLACEHOLDER in info.query_template else NEUTRAL_TEXT_QUERY
    return replace(info, query_template=query, target_template=IMAGE_TARGET)

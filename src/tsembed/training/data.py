"""Training rows as batches: content ids for targets, task-homogeneous or mixed batching, mining hooks,
and the per-step dataset that DataLoader workers prepare ahead of the training thread.

Batches are a pure function of (seed, epoch, position), so a resumed run sees exactly the batches the
uninterrupted run would have seen, whichever process prepared them.
"""

from __future__ import annotations

import logging
import random
from dataclasses import dataclass, field, replace
from pathlib import Path
from typing import Any

import torch
from torch.utils.data import DataLoader, Dataset

from tsembed.data.mmeb import read_train
from tsembed.data.rows import TrainRow
from tsembed.errors import ConfigError, DataError
from tsembed.inputs import EmbedInput, InputKey, input_key, with_task
from tsembed.training.step import ContrastiveBatch, PreparedBatch, prepare_batch

logger = logging.getLogger(__name__)


@dataclass(frozen=True)
class TrainSource:
    name: str
    path: Path
    image_root: Path | None = None
    weight: float = 1.0
    task: str | None = None  # declared by every input of this dataset (task-hint routing)


class TrainingData:
    """All training rows of all datasets, with a content id for every distinct target.

    Equal inputs (``tsembed.inputs.input_key``: same text, image and task) get the same id, so the
    same-content false-negative guard and the signature bank treat e.g. a class label shared by many queries
    as one target. A dataset's ``task`` is declared by every input that declares none (``with_task``).
    """

    def __init__(self, sources: list[TrainSource], skip_invalid: bool = False,
                 max_per_dataset: int | None = None) -> None:
        if not sources:
            raise ConfigError("no training datasets selected")
        self.sources = sources
        self.rows: list[tuple[int, TrainRow]] = []
        self.by_dataset: dict[int, list[int]] = {}
        self.targets: list[EmbedInput] = []
        self._target_index: dict[InputKey, int] = {}
        self.positive_ids: list[int] = []
        self.negative_ids: list[int] = []
        self._roots: dict[int, Path] = {}
        for d, source in enumerate(sources):
            split = read_train(source.path, source.image_root, skip_invalid=skip_invalid)
            root = split.image_root
            kept = split.rows[:max_per_dataset] if max_per_dataset else split.rows
            if len(kept) < len(split.rows):
                logger.info("training data %s: the first %d of %d rows (data.max_per_dataset)", source.name,
                            len(kept), len(split.rows))
            for row in kept:
                index = len(self.rows)
                self.rows.append((d, row))
                self.by_dataset.setdefault(d, []).append(index)
                self.positive_ids.append(self._target_id(row.positive_input(root), source.task))
                negative = row.negative_input(root)
                self.negative_ids.append(self._target_id(negative, source.task) if negative else -1)
            self._roots[d] = root
            logger.info("training data %s: %d rows from %s", source.name, len(kept), source.path)

    def _target_id(self, item: EmbedInput, task: str | None) -> int:
        (item,) = with_task([item], task)
        key = input_key(item)
        if key not in self._target_index:
            self._target_index[key] = len(self.targets)
            self.targets.append(item)
        return self._target_index[key]

    def __len__(self) -> int:
        return len(self.rows)

    @property
    def num_targets(self) -> int:
        return len(self.targets)

    def dataset_name(self, row_index: int) -> str:
        return self.sources[self.rows[row_index][0]].name

    def query_input(self, row_index: int) -> EmbedInput:
        d, row = self.rows[row_index]
        return with_task([row.query_input(self._roots[d])], self.sources[d].task)[0]

    def make_batch(self, row_indices: list[int], hard_negatives: bool, mined: list[list[int]] | None = None
                   ) -> ContrastiveBatch:
        """Queries, positives, then hard negatives (each row's explicit one, then mined target ids)."""
        queries = [self.query_input(i) for i in row_indices]
        target_ids = [self.positive_ids[i] for i in row_indices]
        owner = [-1] * len(row_indices)
        for q, i in enumerate(row_indices):
            if hard_negatives and self.negative_ids[i] >= 0:
                target_ids.append(self.negative_ids[i])
                owner.append(q)
        for q, ids in enumerate(mined or []):
            target_ids.extend(ids)
            owner.extend([q] * len(ids))
        names = {self.dataset_name(i) for i in row_indices}
        return ContrastiveBatch(
            queries=queries,
            targets=[self.targets[t] for t in target_ids],
            query_ids=torch.tensor(row_indices, dtype=torch.long),
            target_ids=torch.tensor(target_ids, dtype=torch.long),
            target_owner=torch.tensor(owner, dtype=torch.long),
            dataset=names.pop() if len(names) == 1 else "mixed",
        )


class BatchPlan:
    """Deterministic epoch plans of row-index batches, sharded across ranks.

    homogeneous: each batch comes from one dataset (datasets mixed by ``weights``: a dataset of weight w
    contributes w times its rows per epoch, sampled without replacement where possible); else rows of
    all datasets are shuffled together.

    An epoch's length does not depend on its shuffle, so it is known in closed form (``batches_per_epoch``):
    finding a step's epoch is arithmetic, and only that epoch's plan is built, once per process (the last
    ``KEEP_EPOCHS`` built are kept). A resumed run, or a DataLoader worker, never builds the epochs before it.
    """

    #: Plans kept in memory: the current epoch and the one a prefetching worker may already be in.
    KEEP_EPOCHS = 2

    def __init__(self, data: TrainingData, batch_size: int, homogeneous: bool, weights: dict[str, float],
                 seed: int, world_size: int = 1, rank: int = 0) -> None:
        unknown = sorted(set(weights) - {s.name for s in data.sources})
        if unknown:
            raise ConfigError(f"data.weights names unknown datasets {unknown}; known: {[s.name for s in data.sources]}")
        self.data, self.batch_size, self.homogeneous = data, batch_size, homogeneous
        self.weights = {s.name: float(weights.get(s.name, s.weight)) for s in data.sources}
        self.seed, self.world_size, self.rank = seed, world_size, rank
        self._cache: dict[int, list[list[int]]] = {}
        self.batches_per_epoch = self._batches_per_epoch()

    def _count(self, d: int) -> int:
        """Rows dataset ``d`` contributes per epoch (its weight times its rows, at least one)."""
        return max(1, round(len(self.data.by_dataset[d]) * self.weights[self.data.sources[d].name]))

    def _batches_per_epoch(self) -> int:
        """This rank's batches per epoch, without shuffling anything (``_build`` checks it agrees)."""
        counts = [self._count(d) for d in sorted(self.data.by_dataset)]
        full = sum(c // self.batch_size for c in counts) if self.homogeneous else sum(counts) // self.batch_size
        return full // self.world_size

    def _epoch_rows(self, rng: random.Random, rows: list[int], count: int) -> list[int]:
        picked: list[int] = []
        while len(picked) < count:
            chunk = rows[:]
            rng.shuffle(chunk)
            picked.extend(chunk[: count - len(picked)])
        return picked

    def _build(self, epoch: int) -> list[list[int]]:
        """This rank's batches of ``epoch``, shuffled from scratch (a pure function of seed and epoch)."""
        rng = random.Random(self.seed * 1_000_003 + epoch)
        batches: list[list[int]] = []
        if self.homogeneous:
            for d, rows in sorted(self.data.by_dataset.items()):
                picked = self._epoch_rows(rng, rows, self._count(d))
                batches += [picked[i : i + self.batch_size] for i in range(0, len(picked), self.batch_size)]
        else:
            picked = []
            for d, rows in sorted(self.data.by_dataset.items()):
                picked += self._epoch_rows(rng, rows, self._count(d))
            rng.shuffle(picked)
            batches = [picked[i : i + self.batch_size] for i in range(0, len(picked), self.batch_size)]
        batches = [b for b in batches if len(b) == self.batch_size]  # equal shapes across ranks and steps
        rng.shuffle(batches)
        usable = len(batches) - len(batches) % self.world_size
        mine = batches[self.rank : usable : self.world_size]
        if len(mine) != self.batches_per_epoch:
            raise RuntimeError(f"epoch {epoch} has {len(mine)} batches, expected {self.batches_per_epoch}")
        return mine

    def _check_nonempty(self) -> None:
        if not self.batches_per_epoch:
            raise ConfigError(
                f"data.batch_size={self.batch_size} leaves no full batch per rank: every dataset needs at least "
                f"batch_size rows (homogeneous={self.homogeneous})"
            )

    def epoch(self, epoch: int) -> list[list[int]]:
        """This rank's batches of ``epoch`` (every rank gets the same number), built once and kept."""
        plan = self._cache.get(epoch)
        if plan is None:
            self._check_nonempty()
            plan = self._cache[epoch] = self._build(epoch)
            while len(self._cache) > self.KEEP_EPOCHS:  # the oldest built goes first
                del self._cache[next(iter(self._cache))]
        return plan

    def batch_at(self, step: int) -> tuple[int, list[int]]:
        """(epoch, row indices) of global step ``step``."""
        if not self.batches_per_epoch:
            self._check_nonempty()
        epoch, position = divmod(step, self.batches_per_epoch)
        return epoch, self.epoch(epoch)[position]


#: What preparing one bad sample raises (a missing or broken image, an input that cannot fit): skipped, not fatal.
SAMPLE_ERRORS = (DataError, OSError)


@dataclass
class SkippedRow:
    """A training row that could not be prepared, and the row that took its place in the batch."""

    dataset: str
    row: int
    replaced_by: int
    error: str


@dataclass
class StepInputs:
    """Everything one training step reads from the data: its rows, batch and prepared (CPU) inputs."""

    step: int
    rows: list[int]
    batch: ContrastiveBatch
    prepared: PreparedBatch
    skipped: list[SkippedRow] = field(default_factory=list)

    def pin_memory(self) -> StepInputs:
        return replace(self, prepared=self.prepared.pin_memory())


class StepBatches(Dataset):
    """Global step → its batch, prepared in GradCache chunks (tokenised, images decoded and transformed).

    A pure function of the step, so DataLoader workers can build the coming steps in parallel and a resumed
    run gets the batches of the uninterrupted one. EANS-mined negatives depend on the signature banks as the
    previous step left them, so the trainer adds those itself.

    Args:
        model: whose ``prepare`` turns inputs into tensors (CPU only; workers use a forked copy).
    """

    def __init__(self, data: TrainingData, plan: BatchPlan, model: Any, hard_negatives: bool,
                 chunk_size: int | None) -> None:
        self.data, self.plan, self.model = data, plan, model
        self.hard_negatives, self.chunk_size = hard_negatives, chunk_size

    def __getitem__(self, step: int) -> StepInputs:
        """The step's batch; a row that cannot be prepared (``SAMPLE_ERRORS``) is replaced by the next row of
        its dataset that can, and reported in ``skipped``: one bad sample never ends a run, and the batch keeps
        its size (the same on every rank). Still a pure function of the step."""
        _, planned = self.plan.batch_at(step)
        rows, skipped = list(planned), []
        while True:
            batch = self.data.make_batch(rows, self.hard_negatives)
            try:
                return StepInputs(step, rows, batch, prepare_batch(self.model, batch, self.chunk_size), skipped)
            except SAMPLE_ERRORS:
                found = self._first_bad(rows)
                if found is None or len(skipped) >= len(self.data):
                    raise
                bad, error = found
                substitute = self._substitute(bad, rows, {s.row for s in skipped})
                skipped.append(SkippedRow(self.data.dataset_name(bad), bad, substitute, error))
                rows[rows.index(bad)] = substitute

    def _first_bad(self, rows: list[int]) -> tuple[int, str] | None:
        for row in rows:
            batch = self.data.make_batch([row], self.hard_negatives)
            try:
                prepare_batch(self.model, batch, None)
            except SAMPLE_ERRORS as error:
                return row, f"{type(error).__name__}: {error}"
        return None

    def _substitute(self, bad: int, rows: list[int], known_bad: set[int]) -> int:
        """The next row of ``bad``'s dataset (cyclically) that is neither in the batch nor known to be bad."""
        same = self.data.by_dataset[self.data.rows[bad][0]]
        start = same.index(bad)
        for offset in range(1, len(same)):
            candidate = same[(start + offset) % len(same)]
            if candidate not in rows and candidate not in known_bad and candidate != bad:
                return candidate
        raise DataError(f"dataset {self.data.dataset_name(bad)!r}: no row left to replace unpreparable row {bad}")


def step_loader(steps: StepBatches, start: int, stop: int, num_workers: int, prefetch_factor: int,
                pin_memory: bool, seed: int) -> DataLoader:
    """Steps ``start`` … ``stop - 1`` in order, prepared by ``num_workers`` processes (0: on this thread).

    Its own generator seeds the workers, so starting a loader leaves the global RNG (dropout, router jitter)
    exactly where it was: with or without workers, a resumed run draws the random numbers of an uninterrupted one.
    """
    return DataLoader(
        steps, batch_size=None, sampler=range(start, stop), collate_fn=_as_is, num_workers=num_workers,
        prefetch_factor=prefetch_factor if num_workers else None, pin_memory=pin_memory,
        generator=torch.Generator().manual_seed(seed),
    )


def _as_is(item: StepInputs) -> StepInputs:  # module level: workers started by spawn pickle it
    return item

"""BatchPlan builds each epoch's plan once and finds a step's epoch by arithmetic (issue 23 §7), with exactly the
batches of the plan it replaced: the same seed gives the same order, also after a resume."""

import json
import random

import pytest

from tsembed.errors import ConfigError
from tsembed.training.data import BatchPlan, TrainingData, TrainSource


@pytest.fixture(scope="module")
def data(tmp_path_factory) -> TrainingData:
    """Three text-only datasets of uneven sizes (partial batches, weights that round)."""
    root = tmp_path_factory.mktemp("plan")
    sources = []
    for name, rows in (("a", 37), ("b", 23), ("c", 50)):
        path = root / f"{name}.jsonl"
        path.write_text("".join(json.dumps({"qry": f"{name} query {i}", "qry_image_path": "", "pos_text": f"{name} {i}",
                                            "pos_image_path": "", "neg_text": "", "neg_image_path": ""}) + "\n"
                                for i in range(rows)))
        sources.append(TrainSource(name, path))
    return TrainingData(sources)


def reference_epoch(data: TrainingData, batch_size: int, homogeneous: bool, weights: dict[str, float], seed: int,
                    world_size: int, rank: int, epoch: int) -> list[list[int]]:
    """The plan as it was built before the closed-form epoch length (verbatim logic, no caching)."""
    weight = {s.name: float(weights.get(s.name, s.weight)) for s in data.sources}

    def epoch_rows(rng: random.Random, rows: list[int], w: float) -> list[int]:
        count = max(1, round(len(rows) * w))
        picked: list[int] = []
        while len(picked) < count:
            chunk = rows[:]
            rng.shuffle(chunk)
            picked.extend(chunk[: count - len(picked)])
        return picked

    rng = random.Random(seed * 1_000_003 + epoch)
    batches: list[list[int]] = []
    if homogeneous:
        for d, rows in sorted(data.by_dataset.items()):
            picked = epoch_rows(rng, rows, weight[data.sources[d].name])
            batches += [picked[i : i + batch_size] for i in range(0, len(picked), batch_size)]
    else:
        picked = []
        for d, rows in sorted(data.by_dataset.items()):
            picked += epoch_rows(rng, rows, weight[data.sources[d].name])
        rng.shuffle(picked)
        batches = [picked[i : i + batch_size] for i in range(0, len(picked), batch_size)]
    batches = [b for b in batches if len(b) == batch_size]
    rng.shuffle(batches)
    usable = len(batches) - len(batches) % world_size
    return batches[rank:usable:world_size]


def reference_batch_at(step: int, *args) -> tuple[int, list[int]]:
    epoch, position = 0, step
    while position >= len(reference_epoch(*args, epoch)):
        position -= len(reference_epoch(*args, epoch))
        epoch += 1
    return epoch, reference_epoch(*args, epoch)[position]


@pytest.mark.parametrize("homogeneous", [True, False])
@pytest.mark.parametrize(("weights", "batch_size"), [({}, 8), ({"a": 0.5, "c": 1.7}, 6), ({"b": 3.0}, 16)])
@pytest.mark.parametrize(("world_size", "rank"), [(1, 0), (2, 1), (3, 0)])
def test_batches_are_those_of_the_previous_plan(data, homogeneous, weights, batch_size, world_size, rank):
    args = (data, batch_size, homogeneous, weights, 7, world_size, rank)
    plan = BatchPlan(*args)
    per_epoch = len(reference_epoch(*args, 0))
    assert plan.batches_per_epoch == per_epoch > 0
    steps = range(4 * per_epoch + 3)  # into a fifth epoch
    assert [plan.batch_at(s) for s in steps] == [reference_batch_at(s, *args) for s in steps]
    resumed = BatchPlan(*args)  # a resumed run starts mid-epoch without the epochs before
    assert [resumed.batch_at(s) for s in steps[2 * per_epoch + 1 :]] == \
        [reference_batch_at(s, *args) for s in steps[2 * per_epoch + 1 :]]


def test_each_epoch_is_built_once_and_a_resume_builds_only_its_own(data, monkeypatch):
    built: list[int] = []
    original = BatchPlan._build
    monkeypatch.setattr(BatchPlan, "_build", lambda self, e: built.append(e) or original(self, e))
    plan = BatchPlan(data, 8, True, {}, seed=0)
    for step in range(6 * plan.batches_per_epoch):
        plan.batch_at(step)
    assert built == [0, 1, 2, 3, 4, 5]
    built.clear()
    resumed = BatchPlan(data, 8, True, {}, seed=0)
    resumed.batch_at(40 * plan.batches_per_epoch + 2)  # epoch 40: the earlier 40 epochs are never shuffled
    assert built == [40]
    built.clear()
    last = 6 * plan.batches_per_epoch - 1  # a worker one epoch ahead and one behind: both kept
    for step in (last, last + 1, last, last + 1):
        plan.batch_at(step)
    assert built == [6]


def test_a_batch_larger_than_every_dataset_is_refused(data):
    plan = BatchPlan(data, 64, True, {}, seed=0)
    with pytest.raises(ConfigError, match="leaves no full batch per rank"):
        plan.batch_at(0)

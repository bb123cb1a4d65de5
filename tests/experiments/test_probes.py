"""Bridge probes: the nearest-neighbour identity score and the held-out logistic probe on known toys."""

from __future__ import annotations

import numpy as np
import pytest

from tsembed.experiments.probes import identity_accuracy, probe_accuracy


def test_identity_is_one_when_tints_only_add_small_noise_and_near_chance_when_random() -> None:
    rng = np.random.default_rng(0)
    items, tints, dim = 30, 4, 16
    identity = rng.normal(size=(items, 1, dim))
    tinted = identity + 0.05 * rng.normal(size=(items, tints, dim))
    assert identity_accuracy(tinted.reshape(items * tints, dim), items, tints) == 1.0
    noise = rng.normal(size=(items * tints, dim))
    assert identity_accuracy(noise, items, tints) < 0.2


def test_identity_reads_vectors_emoji_major() -> None:
    rng = np.random.default_rng(1)
    items, tints, dim = 30, 4, 16
    tinted = rng.normal(size=(items, 1, dim)) + 0.05 * rng.normal(size=(items, tints, dim))
    tint_major = tinted.transpose(1, 0, 2).reshape(items * tints, dim)  # the wrong layout scores near chance
    assert identity_accuracy(tint_major, items, tints) < 0.2


def test_probe_accuracy_on_held_out_points() -> None:
    pytest.importorskip("sklearn")
    rng = np.random.default_rng(0)
    centres = {"a": np.array([3.0, 0.0]), "b": np.array([-3.0, 0.0]), "c": np.array([0.0, 3.0])}

    def draw(n: int) -> tuple[np.ndarray, list[str]]:
        labels = [list(centres)[i % 3] for i in range(n)]
        return np.stack([centres[y] + 0.3 * rng.normal(size=2) for y in labels]), labels

    train_x, train_y = draw(60)
    test_x, test_y = draw(30)
    assert probe_accuracy(train_x, train_y, test_x, test_y) == 1.0
    shuffled = list(rng.permutation(test_y))
    assert probe_accuracy(train_x, train_y, test_x, shuffled) < 0.7


def test_gender_identity_finds_the_same_emoji_across_genders_within_a_tone() -> None:
    from tsembed.experiments.probes import gender_identity_accuracy

    rng = np.random.default_rng(2)
    emoji, genders, tones, dim = 12, ("man", "woman", "person"), ("", "dark"), 16
    centre = {(e, t): rng.normal(size=dim) for e in range(emoji) for t in tones}
    keys = [(e, g, t) for e in range(emoji) for g in genders for t in tones]
    close = np.stack([centre[(e, t)] + 0.05 * rng.normal(size=dim) for e, _, t in keys])
    identities, gender, strata = [f"{e}/{t}" for e, _, t in keys], [g for _, g, _ in keys], [t for *_, t in keys]
    assert gender_identity_accuracy(close, identities, gender, strata) == 1.0
    assert gender_identity_accuracy(rng.normal(size=close.shape), identities, gender, strata) < 0.3

"""VQA datasets: a canvas of several emoji + a question -> a short text answer among candidate answers."""

from __future__ import annotations

import random
from collections.abc import Iterator

from tsembed.data.suite.context import BuildContext, ranked
from tsembed.data.suite.example import Example
from tsembed.data.suite.render import BACKGROUNDS
from tsembed.data.suite.scene import Scene

_ABSENT_SHARE = 0.15  # "how many" questions about an emoji that is not there (answer 0)
_ASK_REPEATED = 0.6  # share of "how many" questions about the repeated emoji (answers > 1)


def _names(scene: Scene) -> list[str]:
    return [it.name for it in scene.distinct_items()]


def _bases(scene: Scene) -> set[str]:
    """Bases shown on the canvas: an emoji of another base can neither be there nor look like one that is."""
    return {it.base for it in scene.distinct_items()}


def count_vqa(ctx: BuildContext, split: str, rng: random.Random, n: int) -> Iterator[Example]:
    answers = [(str(i), "") for i in range(10)]
    for scene in ctx.scenes(split):
        shown = scene.distinct_items()
        extra = ()
        if rng.random() < _ABSENT_SHARE:
            item = ctx.random_items(split, rng, 1, exclude_bases=_bases(scene))[0]
            extra = (item,)
        elif rng.random() < _ASK_REPEATED:
            item = max(shown, key=lambda it: scene.count(it.name))
        else:
            item = rng.choice(shown)
        yield Example(
            query=f"How many times does the {item.name} appear in the picture?",
            query_image=ctx.canvas(scene),
            positive=str(scene.count(item.name)),
            distractors=answers,
            emoji=(*shown, *extra),
        )


def background_vqa(ctx: BuildContext, split: str, rng: random.Random, n: int) -> Iterator[Example]:
    colours = [(name, "") for name in sorted(BACKGROUNDS)]
    for scene in ctx.scenes(split):
        yield Example(
            query="What colour is the background?",
            query_image=ctx.canvas(scene),
            positive=scene.background,
            distractors=colours,
            emoji=scene.distinct_items(),
        )


def _relation_vqa(
    ctx: BuildContext, split: str, rng: random.Random, drow: int, dcol: int, question: str
) -> Iterator[Example]:
    """Questions "<question> the <b>?" whose answer is the emoji at b - (drow, dcol)."""
    for scene in ctx.scenes(split):
        pairs = [(a, b) for a, b in scene.neighbours(drow, dcol) if scene.count(b[2].name) == 1]
        if not pairs:
            continue
        a, b = rng.choice(pairs)
        answer, others = a[2].name, [name for name in _names(scene) if name != a[2].name]
        distractors: list[tuple[str, str]] = []
        if ranked(split):
            extra = ctx.random_items(split, rng, ctx.config.vqa_choices, exclude_bases=_bases(scene))
            distractors = [(name, "") for name in others] + [(it.name, "") for it in extra]
        yield Example(
            query=f"{question} the {b[2].name}?",
            query_image=ctx.canvas(scene),
            positive=answer,
            negative=rng.choice(others),
            distractors=distractors,
            emoji=scene.distinct_items(),
        )


def left_of_vqa(ctx: BuildContext, split: str, rng: random.Random, n: int) -> Iterator[Example]:
    return _relation_vqa(ctx, split, rng, 0, 1, "What is to the left of")


def above_vqa(ctx: BuildContext, split: str, rng: random.Random, n: int) -> Iterator[Example]:
    return _relation_vqa(ctx, split, rng, 1, 0, "What is directly above")

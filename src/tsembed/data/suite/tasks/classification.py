"""Classification datasets: one emoji image -> a label from a fixed label set (all labels are candidates)."""

from __future__ import annotations

import random
from collections.abc import Callable, Iterator

from tsembed.data.suite.catalog import DEFAULT_TONE, EmojiItem
from tsembed.data.suite.context import BuildContext
from tsembed.data.suite.example import Example


def tone_label(tone: str) -> str:
    return "no skin tone (default yellow)" if tone == DEFAULT_TONE else f"{tone} skin tone"


def _classify(
    ctx: BuildContext,
    split: str,
    rng: random.Random,
    items: list[EmojiItem],
    label_of: Callable[[EmojiItem], str],
    labels: list[str],
    image_of: Callable[[EmojiItem], str] | None = None,
) -> Iterator[Example]:
    image_of = image_of or ctx.single
    distractors = [(label, "") for label in labels]
    for item in ctx.balanced(items, rng):
        yield Example(query_image=image_of(item), positive=label_of(item), distractors=distractors, emoji=(item,))


def emoji_group(ctx: BuildContext, split: str, rng: random.Random, n: int) -> Iterator[Example]:
    return _classify(ctx, split, rng, ctx.items(split), lambda it: it.group, ctx.groups)


def emoji_subgroup(ctx: BuildContext, split: str, rng: random.Random, n: int) -> Iterator[Example]:
    return _classify(ctx, split, rng, ctx.items(split), lambda it: it.subgroup, ctx.subgroups)


def skin_tone(ctx: BuildContext, split: str, rng: random.Random, n: int) -> Iterator[Example]:
    items = [it for it in ctx.items(split) if it.has_tone]
    labels = sorted({tone_label(it.tone) for it in ctx.catalog if it.has_tone})
    return _classify(ctx, split, rng, items, lambda it: tone_label(it.tone), labels)


def emoji_group_gray(ctx: BuildContext, split: str, rng: random.Random, n: int) -> Iterator[Example]:
    def image_of(item: EmojiItem) -> str:
        return ctx.gray(item, rng.choice((-1, 1)) * rng.randint(15, 45))

    return _classify(ctx, split, rng, ctx.items(split), lambda it: it.group, ctx.groups, image_of)

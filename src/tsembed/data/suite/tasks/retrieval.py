"""Retrieval datasets: text -> image, image -> text, and composed image + edit text -> image.

Candidate pools put near-duplicates first (other skin tones and genders of the same emoji), then random
emoji of the same split; emoji that look identical to the positive are never candidates.
"""

from __future__ import annotations

import random
from collections.abc import Callable, Iterator, Sequence

from tsembed.data.suite.catalog import DEFAULT_TONE, EmojiItem, variant_key
from tsembed.data.suite.context import BuildContext, ranked
from tsembed.data.suite.example import Example

_HARD = 5  # near-duplicates put in front of each pool
_GENDER_PHRASE = {"man": "a man", "woman": "a woman", "person": "a gender-neutral person"}


def _pool(
    ctx: BuildContext,
    split: str,
    rng: random.Random,
    target: EmojiItem,
    hard: Sequence[EmojiItem],
    population: Sequence[EmojiItem] | None = None,
) -> list[EmojiItem]:
    """Distractor emoji for `target`: `hard` first, then random ones; never one that looks the same."""
    k = ctx.config.pool_size - 1
    population = population if population is not None else ctx.items(split)
    out: list[EmojiItem] = []
    seen = {ctx.fingerprint[target.code]}  # look-alikes of the target or of each other are skipped
    # Walk a shuffled copy until the pool is full: skipped look-alikes never shrink it.
    for it in [*hard, *rng.sample(population, len(population))]:
        if len(out) >= k:
            break
        if ctx.fingerprint[it.code] not in seen:
            seen.add(ctx.fingerprint[it.code])
            out.append(it)
    return out


def _hard(ctx: BuildContext, split: str, rng: random.Random, item: EmojiItem) -> list[EmojiItem]:
    """Up to _HARD other variants of `item`'s base emoji that do not look like it."""
    look = ctx.fingerprint[item.code]
    variants = [it for it in ctx.same_base(item) if ctx.fingerprint[it.code] != look]
    return rng.sample(variants, min(_HARD, len(variants)))


def name_to_image(ctx: BuildContext, split: str, rng: random.Random, n: int) -> Iterator[Example]:
    for item in ctx.balanced(ctx.items(split), rng):
        hard = _hard(ctx, split, rng, item)
        negative = None
        if split == "train":
            options = hard + [
                it for it in ctx.same_subgroup(split, item) if ctx.fingerprint[it.code] != ctx.fingerprint[item.code]
            ]
            negative = rng.choice(options) if options else None
        distractors = [("", ctx.single(it)) for it in _pool(ctx, split, rng, item, hard)] if ranked(split) else []
        yield Example(
            query=item.name,
            positive_image=ctx.single(item),
            negative=None if negative is None else "",
            negative_image=ctx.single(negative) if negative else "",
            distractors=distractors,
            emoji=(item, negative) if negative else (item,),
        )


def image_to_name(ctx: BuildContext, split: str, rng: random.Random, n: int) -> Iterator[Example]:
    for item in ctx.balanced(ctx.items(split), rng):
        distractors = (
            [(it.name, "") for it in _pool(ctx, split, rng, item, _hard(ctx, split, rng, item))]
            if ranked(split)
            else []
        )
        yield Example(query_image=ctx.single(item), positive=item.name, distractors=distractors, emoji=(item,))


def shortcode_to_image(ctx: BuildContext, split: str, rng: random.Random, n: int) -> Iterator[Example]:
    for item in ctx.balanced([it for it in ctx.items(split) if it.shortcode], rng):
        distractors = [("", ctx.single(it)) for it in _pool(ctx, split, rng, item, [])] if ranked(split) else []
        yield Example(
            query=item.shortcode or "", positive_image=ctx.single(item), distractors=distractors, emoji=(item,)
        )


def _edits(
    ctx: BuildContext,
    split: str,
    rng: random.Random,
    groups: list[list[EmojiItem]],
    phrase: Callable[[EmojiItem], str],
    population: Sequence[EmojiItem],
) -> Iterator[Example]:
    """Composed retrieval: (source image, "the same <phrase(target)>") -> target image, within a group."""
    groups = [g for g in groups if len(g) >= 2]
    rng.shuffle(groups)
    seen: set[tuple[str, str]] = set()
    while True:
        produced = False
        for group in groups:
            source, target = rng.sample(group, 2)
            look_same = ctx.fingerprint[source.code] == ctx.fingerprint[target.code]  # e.g. man/person bald
            if (source.code, target.code) in seen or look_same:
                continue
            seen.add((source.code, target.code))
            produced = True
            rest = [it for it in group if it.code not in (source.code, target.code)]
            hard = [source, *rest, *_hard(ctx, split, rng, target)]
            negatives = [it for it in hard if ctx.fingerprint[it.code] != ctx.fingerprint[target.code]]
            negative = rng.choice(negatives) if split == "train" and negatives else None
            distractors = (
                [("", ctx.single(it)) for it in _pool(ctx, split, rng, target, hard, population)]
                if ranked(split)
                else []
            )
            yield Example(
                query=phrase(target),
                query_image=ctx.single(source),
                positive_image=ctx.single(target),
                negative=None if negative is None else "",
                negative_image=ctx.single(negative) if negative else "",
                distractors=distractors,
                emoji=(source, target, *([negative] if negative else [])),
            )
        if not produced:
            return


def _group(items: Sequence[EmojiItem], key: Callable[[EmojiItem], str]) -> list[list[EmojiItem]]:
    groups: dict[str, list[EmojiItem]] = {}
    for it in items:
        groups.setdefault(key(it), []).append(it)
    return [groups[k] for k in sorted(groups)]


def skin_tone_edit(ctx: BuildContext, split: str, rng: random.Random, n: int) -> Iterator[Example]:
    items = [it for it in ctx.items(split) if it.has_tone]

    def phrase(target: EmojiItem) -> str:
        tone = "no skin tone (default yellow)" if target.tone == DEFAULT_TONE else f"{target.tone} skin tone"
        return f"the same with {tone}"

    return _edits(
        ctx, split, rng, _group(items, lambda it: variant_key(it.code, tone=True, gender=False)), phrase, items
    )


def gender_edit(ctx: BuildContext, split: str, rng: random.Random, n: int) -> Iterator[Example]:
    items = [it for it in ctx.items(split) if it.gender]
    groups = []
    for group in _group(items, lambda it: variant_key(it.code, tone=False, gender=True)):
        by_gender: dict[str, EmojiItem] = {}
        for it in group:  # one emoji per gender, so the target is unambiguous
            by_gender.setdefault(it.gender or "", it)
        groups.append(list(by_gender.values()))
    return _edits(ctx, split, rng, groups, lambda t: f"the same but as {_GENDER_PHRASE[t.gender or 'person']}", items)

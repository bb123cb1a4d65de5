"""Conditional-similarity datasets of the conflict suite: the same query, two opposite notions of "similar".

Every query comes with one shared gallery holding exactly two "right" answers: the positive of condition X
(the same emoji under another colour or skin tone) and the positive of condition Y (another emoji under the
same colour or skin tone). Each is the other's hardest distractor; every other candidate matches the query in
neither respect. Both datasets of a pair walk the same episodes (same seed stream), so a query is ranked
against the same gallery under both conditions, and in training each condition's positive is the other's
explicit hard negative — the "instruction negative" of Promptriever and InF-IR. One shared adapter is thus
asked to pull the same pair of images together and push it apart, depending on the instruction only.
"""

from __future__ import annotations

import random
from collections.abc import Callable, Iterator, Sequence
from dataclasses import dataclass
from functools import cache

import numpy as np
from PIL import Image, ImageOps

from tsembed.data.registry import TINT_PALETTES, TINTS  # noqa: F401 (TINTS: re-exported for its users)
from tsembed.data.suite.catalog import DEFAULT_TONE, EmojiItem, variant_key
from tsembed.data.suite.context import BuildContext, ranked
from tsembed.data.suite.example import Example
from tsembed.data.suite.render import EmojiRenderer

_TINT_RGB = {name: rgb for palette in TINT_PALETTES.values() for name, rgb in palette.items()}
_TONE_WORDS = {DEFAULT_TONE: "no skin tone (default yellow)"}
#: Skin tones of the tone pair: every other Fitzpatrick step, so "the same tone" is visible at 128 px
#: (neighbouring steps differ by a few grey levels; a condition no model can see tests the backbone).
TONE_LEVELS = (DEFAULT_TONE, "light", "medium", "dark")
#: Genders of the gender pair (`EmojiItem.gender`): a person emoji drawn as a man, a woman, or gender-neutral.
#: In this order, so a gender-neutral look drawn exactly like the man or the woman is the one left out.
GENDERS = ("man", "woman", "person")
#: A gender look is kept only where at least this share of its pixels differs visibly (a channel by more than 48
#: levels) from every other kept look of its emoji. OpenMoji draws about one gender pair in ten alike (identical,
#: or a dozen pixels apart: a gender no model can see tests the backbone); the rest differ by >= 0.4 % (a
#: ponytail, at 96 px) and most by several per cent (hair, beard, face).
GENDER_MIN_DIFFERENCE = 0.003


@dataclass(frozen=True)
class Look:
    """One gallery entry: an emoji and the attribute it is shown with (a tint, or its own skin tone)."""

    item: EmojiItem
    attribute: str


@dataclass(frozen=True)
class Episode:
    """A query, the positive of each condition, and distractors that match the query in neither respect."""

    query: Look
    same_identity: Look  # same emoji, another attribute
    same_attribute: Look  # another emoji, same attribute
    distractors: tuple[Look, ...]


def tint_image(renderer: EmojiRenderer, item: EmojiItem, tint: str) -> Image.Image:
    """The emoji's luminance mapped onto one tint (black stays black, white becomes the tint), on white.

    Mapping white to the tint (not to white) colours the light fills too, so even a line-art emoji such as
    a clock face shows its colour.
    """
    tile = renderer.tile(item.char)
    gray = ImageOps.grayscale(tile.convert("RGB"))
    colour = ImageOps.colorize(gray, black=(0, 0, 0), white=_TINT_RGB[tint]).convert("RGBA")
    colour.putalpha(tile.getchannel("A"))
    canvas = Image.new("RGBA", tile.size, (255, 255, 255, 255))
    canvas.alpha_composite(colour)
    return canvas.convert("RGB")


def tinted(ctx: BuildContext, item: EmojiItem, tint: str) -> str:
    """The suite's stored copy of ``tint_image`` (its path)."""
    return ctx.store.get(("tint", item.code, tint), lambda: tint_image(ctx.renderer, item, tint))


@cache
def _light_share(renderer: EmojiRenderer, char: str) -> float:
    """Share of the glyph's ink that is light (grey level > 128): the part a tint shows on."""
    tile = renderer.tile(char)
    gray = np.asarray(ImageOps.grayscale(tile.convert("RGB")))
    ink = np.asarray(tile.getchannel("A")) > 128
    return float((gray[ink] > 128).mean()) if ink.any() else 0.0


def palette(ctx: BuildContext) -> dict[str, tuple[int, int, int]]:
    """The suite's tints (`SuiteConfig.tint_palette`)."""
    return TINT_PALETTES[ctx.config.tint_palette]


def tint_population(ctx: BuildContext, split: str) -> list[EmojiItem]:
    """Emoji without skin tones whose names hold no tint word ("green heart" would name two colours) and
    whose ink is at least 40 % light: a mostly black glyph stays black under any tint, and a colour no one
    can see would test the backbone, not conflict."""
    words = set(palette(ctx))
    return [it for it in ctx.items(split) if not it.has_tone and not set(it.name.lower().split()) & words
            and _light_share(ctx.renderer, it.char) >= 0.4]


def _tone_identity(item: EmojiItem) -> str:
    return variant_key(item.code, tone=True, gender=False)  # same emoji and gender, any tone


def _gender_identity(item: EmojiItem) -> str:
    return variant_key(item.code, tone=False, gender=True)  # same emoji and skin tone, any gender


@cache
def visible_difference(renderer: EmojiRenderer, a: str, b: str) -> float:
    """Share of pixels where the two emoji, as the suite draws them, differ visibly (a channel by > 48 levels)."""
    x = np.asarray(renderer.single(a), dtype=np.int16)
    y = np.asarray(renderer.single(b), dtype=np.int16)
    return float((np.abs(x - y).max(axis=-1) > 48).mean())


def gender_variants(ctx: BuildContext, split: str) -> dict[str, list[Look]]:
    """Emoji (and skin tone) -> its gender looks, man first, then woman, then person: each kept only if it
    differs visibly from those kept before it (GENDER_MIN_DIFFERENCE), and only emoji left with two or more."""
    variants: dict[str, list[Look]] = {}
    gendered = [it for it in ctx.items(split) if it.gender in GENDERS]
    for it in sorted(gendered, key=lambda it: (GENDERS.index(it.gender or ""), it.code)):
        looks = variants.setdefault(_gender_identity(it), [])
        if all(visible_difference(ctx.renderer, it.char, look.item.char) >= GENDER_MIN_DIFFERENCE for look in looks):
            looks.append(Look(it, it.gender or ""))
    return {key: looks for key, looks in sorted(variants.items()) if len(looks) >= 2}


def _episodes(
    ctx: BuildContext,
    split: str,
    rng: random.Random,
    items: Sequence[EmojiItem],
    looks_of: Callable[[EmojiItem], list[Look]],
    stratum: Callable[[Look], str] | None = None,
) -> Iterator[Episode]:
    """Episodes over `items` (each emoji once per pass, bases interleaved), each with a `pool_size` gallery.

    `looks_of(item)` are the ways one emoji can be shown (its tints, or its skin-tone variants). Distractors
    exclude the query's base emoji (so only one candidate is "the same emoji") and the query's attribute (so
    only one is "the same colour"); the hardest come first: other emoji in the identity positive's attribute,
    and the attribute positive's emoji in other attributes.

    `stratum(look)` (optional) holds a nuisance fixed within an episode (the gender pair's skin tone): the
    positives and distractors come from the query's stratum (all of an emoji's looks must share one), and only
    a gallery the stratum cannot fill is topped up from the others. None: one stratum (the other pairs).
    """
    strata = stratum or (lambda look: "")
    by_attribute: dict[tuple[str, str], list[Look]] = {}
    for it in items:
        for look in looks_of(it):
            by_attribute.setdefault((strata(look), look.attribute), []).append(look)
    in_stratum: dict[str, list[Look]] = {}
    for (where, _), looks in by_attribute.items():
        in_stratum.setdefault(where, []).extend(looks)
    everything = [look for looks in by_attribute.values() for look in looks]
    size = ctx.config.pool_size
    passes = max((len(looks_of(it)) for it in items), default=0)  # each pass shows every emoji once more
    asked: set[tuple[str, str]] = set()  # each look is a query once, so both sides keep every episode
    for item in (it for _ in range(passes) for it in ctx.balanced(items, rng)):
        own = looks_of(item)
        fresh = [look for look in own if (look.item.code, look.attribute) not in asked]
        if not fresh:
            continue
        query = rng.choice(fresh)
        asked.add((query.item.code, query.attribute))
        where = strata(query)
        others = [look for look in own if look.attribute != query.attribute]
        partners = [look for look in by_attribute[(where, query.attribute)] if look.item.base != item.base]
        if not others or not partners:
            continue
        same_identity, same_attribute = rng.choice(others), rng.choice(partners)
        distractors: list[Look] = []
        if ranked(split):
            near = by_attribute[(where, same_identity.attribute)]
            local = in_stratum[where]
            pool = [
                *rng.sample(near, min(4, len(near))),
                *(look for look in looks_of(same_attribute.item) if look.attribute != query.attribute),
                *rng.sample(local, min(len(local), 4 * size)),
                *(rng.sample(everything, min(len(everything), 4 * size)) if stratum is not None else ()),
            ]
            seen = {_look_key(ctx, same_identity), _look_key(ctx, same_attribute)}
            for look in pool:
                if len(distractors) >= size - 2:
                    break
                key = _look_key(ctx, look)
                if look.item.base == item.base or look.attribute == query.attribute or key in seen:
                    continue
                seen.add(key)
                distractors.append(look)
        yield Episode(query, same_identity, same_attribute, tuple(distractors))


def _look_key(ctx: BuildContext, look: Look) -> tuple[str, str]:
    return ctx.fingerprint[look.item.code], look.attribute  # identical-looking emoji give one image


def _tint_episodes(ctx: BuildContext, split: str, rng: random.Random) -> Iterator[Episode]:
    """Tint pair: every emoji without skin tones, shown in each tint of the suite's palette."""
    tints = list(palette(ctx))
    return _episodes(ctx, split, rng, tint_population(ctx, split), lambda it: [Look(it, t) for t in tints])


def _tone_episodes(ctx: BuildContext, split: str, rng: random.Random) -> Iterator[Episode]:
    """Tone pair: one entry per emoji (and gender) with skin tones; its looks are its TONE_LEVELS variants."""
    variants: dict[str, list[Look]] = {}
    for it in ctx.items(split):
        if it.tone in TONE_LEVELS:
            variants.setdefault(_tone_identity(it), []).append(Look(it, it.tone or ""))
    unique = [looks[0].item for _, looks in sorted(variants.items())]
    return _episodes(ctx, split, rng, unique, lambda it: variants[_tone_identity(it)])


def _gender_episodes(ctx: BuildContext, split: str, rng: random.Random) -> Iterator[Episode]:
    """Gender pair: one entry per person emoji and skin tone; its looks are its man / woman / person variants.

    The skin tone is held fixed within an episode (every candidate shows the query's tone), so the two
    positives and the distractors differ from the query in emoji and gender only, and gender is a fine
    attribute (hair, beard, face), like skin tone.
    """
    variants = gender_variants(ctx, split)
    unique = [looks[0].item for looks in variants.values()]
    return _episodes(ctx, split, rng, unique, lambda it: variants[_gender_identity(it)],
                     stratum=lambda look: look.item.tone or "")


# ----------------------------------------------------------------------------------------------------------
# Dataset builders. `_side` turns an episode into the Example of one condition.


def _side(
    split: str,
    episode: Episode,
    image: Callable[[Look], str],
    positive_is_identity: bool,
    query_text: str = "",
    query_image: bool = True,
) -> Example:
    positive, other = (
        (episode.same_identity, episode.same_attribute)
        if positive_is_identity
        else (episode.same_attribute, episode.same_identity)
    )
    train = split == "train"
    gallery = [other, *episode.distractors]
    return Example(
        query=query_text,
        query_image=image(episode.query) if query_image else "",
        positive_image=image(positive),
        negative="" if train else None,
        negative_image=image(other) if train else "",
        distractors=[("", image(look)) for look in gallery] if ranked(split) else [],
        emoji=(episode.query.item, positive.item, other.item, *(look.item for look in episode.distractors)),
    )


def _tint_image(ctx: BuildContext) -> Callable[[Look], str]:
    return lambda look: tinted(ctx, look.item, look.attribute)


def _tone_image(ctx: BuildContext) -> Callable[[Look], str]:
    return lambda look: ctx.single(look.item)


def _tone_phrase(look: Look) -> str:
    return _TONE_WORDS.get(look.attribute, f"{look.attribute} skin tone")


def _identity_name(item: EmojiItem) -> str:
    """The name without its skin-tone part ('man running: dark skin tone' -> 'man running')."""
    return item.name.split(":")[0].strip() if item.tone not in (None, DEFAULT_TONE) else item.name


def _builder(episodes: Callable[[BuildContext, str, random.Random], Iterator[Episode]], identity_side: bool,
             kind: str) -> Callable[[BuildContext, str, random.Random, int], Iterator[Example]]:
    """A dataset builder for one side of a pair; `kind`: tint or tone or gender (image query: a tinted emoji,
    or the emoji as drawn), text-tint or text-tone (text query)."""

    def build(ctx: BuildContext, split: str, rng: random.Random, n: int) -> Iterator[Example]:
        image = _tone_image(ctx) if kind in ("tone", "text-tone", "gender") else _tint_image(ctx)
        # Both sides of a pair draw from one stream (not `rng`), so they share queries and galleries.
        stream = ctx.rng("conflict", episodes.__name__, split)
        for ep in episodes(ctx, split, stream):
            if kind == "text-tint":
                text = f"{ep.query.attribute} {ep.query.item.name}"
            elif kind == "text-tone":
                text = f"{_identity_name(ep.query.item)} with {_tone_phrase(ep.query)}"
            else:
                text = ""
            yield _side(split, ep, image, identity_side, text, query_image=not kind.startswith("text"))

    return build


BUILDERS = {
    "ToneSameEmoji": _builder(_tone_episodes, True, "tone"),
    "ToneSameTone": _builder(_tone_episodes, False, "tone"),
    "TintSameEmoji": _builder(_tint_episodes, True, "tint"),
    "TintSameColour": _builder(_tint_episodes, False, "tint"),
    "TextSameObject": _builder(_tint_episodes, True, "text-tint"),
    "TextSameColour": _builder(_tint_episodes, False, "text-tint"),
    # out-of-distribution: unseen instruction wording, and an unseen combination (text queries about tones)
    "ToneSameEmojiReworded": _builder(_tone_episodes, True, "tone"),
    "TintSameColourReworded": _builder(_tint_episodes, False, "tint"),
    "TextToneSameObject": _builder(_tone_episodes, True, "text-tone"),
    "TextToneSameTone": _builder(_tone_episodes, False, "text-tone"),
    # the gender pair (`--conflict-streams ...,gender`): the same person emoji in any gender vs the same gender
    "GenderSameEmoji": _builder(_gender_episodes, True, "gender"),
    "GenderSameGender": _builder(_gender_episodes, False, "gender"),
    "GenderSameEmojiReworded": _builder(_gender_episodes, True, "gender"),
    "GenderSameGenderReworded": _builder(_gender_episodes, False, "gender"),
}

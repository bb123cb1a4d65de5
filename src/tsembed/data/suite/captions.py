"""Captioned images for aligning the offline backbone's visual bridge (LLaVA's stage 1, at emoji scale).

Why: every real VLM's projector is pretrained on caption data before task tuning; a projector that starts at
random init and learns its alignment during a multi-task fine-tune lets the tasks fight over it (the conflict
study's finding). The alignment set is drawn from one suite's *train* base emoji only, so a suite's dev and
eval emoji are never seen, and its captions never use a suite instruction: they describe what is in the
picture — the emoji's CLDR name (which names its skin tone), its group, its dominant colour, and for
recoloured copies the new colour. Recolouring is a hue rotation, a different operation from the conflict
suite's tint (a luminance colourisation onto one colour), so no suite image is ever reproduced. There are no
"same X, different Y" pairs: a positive is always one picture and its own caption.
"""

from __future__ import annotations

import random
import re
from collections.abc import Iterator
from dataclasses import dataclass

import numpy as np
from PIL import Image

from tsembed.data.suite.catalog import DEFAULT_TONE, EmojiItem
from tsembed.data.suite.context import BuildContext

#: Hue bins (degrees, start inclusive) -> basic colour word; red wraps around 0.
HUE_NAMES: tuple[tuple[float, str], ...] = (
    (15, "orange"), (45, "yellow"), (70, "green"), (165, "cyan"), (195, "blue"), (255, "purple"),
    (290, "pink"), (345, "red"),
)
#: Hue rotations (degrees) a recoloured copy may use.
HUE_SHIFTS = (60, 120, 180, 240, 300)
#: ": medium-dark skin tone" and the like in a CLDR name (several, comma-separated, for two-person emoji).
_TONE_SUFFIX = re.compile(r":?,? ?(light|medium-light|medium|medium-dark|dark) skin tone")
#: Below this share of saturated ink an emoji counts as having no dominant colour.
MIN_COLOURED_SHARE = 0.15

_CAPTIONS = (
    "{colour} {name}",
    "an emoji of {name}, mostly {colour}",
    "{name} drawn in {colour}",
    "a {colour} emoji: {name} ({group})",
    "{name}, a {subgroup} emoji in {colour}",
)
_CAPTIONS_NO_COLOUR = (
    "{name}",
    "an emoji of {name}",
    "{name} ({group})",
    "{name}, a {subgroup} emoji",
)


@dataclass(frozen=True)
class CaptionedImage:
    """One alignment pair: a picture and the sentence that describes it."""

    image: Image.Image
    caption: str
    kind: str  # "original", "hue", "canvas"
    chars: tuple[str, ...]  # the emoji shown (provenance: lets a test prove no dev/eval emoji is used)
    family: str  # base emoji (its tones, genders and hue copies share it); alignment batches keep families together


def colour_name(image: Image.Image) -> str | None:
    """The dominant basic colour word of the saturated pixels, or None for a mostly grey/black/white picture."""
    rgb = np.asarray(image.convert("RGB"), dtype=np.float32) / 255.0  # [H, W, 3]
    high, low = rgb.max(axis=-1), rgb.min(axis=-1)
    saturation = np.where(high > 0, (high - low) / np.maximum(high, 1e-6), 0.0)
    ink = low < 0.97  # not the white background
    coloured = ink & (saturation > 0.35) & (high > 0.25)
    if ink.sum() == 0 or coloured.sum() < MIN_COLOURED_SHARE * ink.sum():
        return None
    r, g, b = rgb[coloured].T  # [n] each
    high, low = np.maximum(np.maximum(r, g), b), np.minimum(np.minimum(r, g), b)
    span = np.maximum(high - low, 1e-6)
    hue = np.where(high == r, (g - b) / span % 6, np.where(high == g, (b - r) / span + 2, (r - g) / span + 4)) * 60.0
    words = np.array([_hue_word(float(h)) for h in range(360)])[hue.astype(int) % 360]
    names, counts = np.unique(words, return_counts=True)
    return str(names[int(np.argmax(counts))])  # ties: the alphabetically first (np.unique sorts)


def _hue_word(hue: float) -> str:
    name = "red"  # [0, 15) and [345, 360)
    for start, word in HUE_NAMES:
        if hue >= start:
            name = word
    return name


def hue_rotated(image: Image.Image, degrees: int) -> Image.Image:
    """The picture with every hue turned by ``degrees`` (saturation and brightness kept)."""
    hsv = np.array(image.convert("RGB").convert("HSV"), dtype=np.int16)
    hsv[..., 0] = (hsv[..., 0] + round(degrees / 360 * 256)) % 256
    return Image.fromarray(hsv.astype(np.uint8), mode="HSV").convert("RGB")


def _describe(item: EmojiItem, recoloured: bool = False) -> dict[str, str]:
    name = item.name
    if recoloured and item.tone is not None:  # a hue rotation recolours the skin too: its tone no longer holds
        name = _TONE_SUFFIX.sub("", name)
    elif item.tone == DEFAULT_TONE:
        name = f"{name} with the default yellow skin"
    return {"name": name, "group": item.group.lower(), "subgroup": item.subgroup.replace("-", " ")}


def _caption(rng: random.Random, item: EmojiItem, colour: str | None, recoloured: bool = False) -> str:
    fields = _describe(item, recoloured)
    if colour is None:
        return rng.choice(_CAPTIONS_NO_COLOUR).format(**fields)
    return rng.choice(_CAPTIONS).format(colour=colour, **fields)


def _canvas(ctx: BuildContext, items: list[EmojiItem], size: int) -> tuple[Image.Image, str]:
    """Two to four emoji on a 2 × 2 grid and a caption naming each with its place."""
    places = ("top left", "top right", "bottom left", "bottom right")
    cell = size // 2
    canvas = Image.new("RGBA", (size, size), (255, 255, 255, 255))
    parts = []
    for index, item in enumerate(items):
        row, col = divmod(index, 2)
        canvas.alpha_composite(ctx.renderer.tile(item.char, cell), (col * cell, row * cell))
        parts.append(f"{item.name} at the {places[index]}")
    return canvas.convert("RGB"), ", ".join(parts)


def alignment_pairs(ctx: BuildContext, seed: int, hue_copies: int = 2, canvases: int = 1000,
                    recolour: bool = True, max_emoji: int = 0) -> Iterator[CaptionedImage]:
    """Captioned pictures from the train split's emoji of ``ctx``'s suite, deterministic per seed.

    Each train emoji gives its own rendering and, with ``recolour``, ``hue_copies`` hue-rotated copies; then
    ``canvases`` multi-emoji canvases. Only ``ctx.items("train")`` is read; ``max_emoji`` > 0 keeps a seeded
    sample of that many (quick runs and tests).
    """
    rng = random.Random(f"align/{seed}")
    items = list(ctx.items("train"))
    if 0 < max_emoji < len(items):
        items = sorted(rng.sample(items, max_emoji), key=lambda it: it.code)
    for item in items:
        image = ctx.renderer.single(item.char)
        yield CaptionedImage(image, _caption(rng, item, colour_name(image)), "original", (item.char,), item.base)
        if not recolour:
            continue
        for shift in rng.sample(HUE_SHIFTS, min(hue_copies, len(HUE_SHIFTS))):
            turned = hue_rotated(image, shift)
            colour = colour_name(turned)
            if colour is not None:  # a grey emoji has no hue to turn
                yield CaptionedImage(turned, _caption(rng, item, colour, recoloured=True), "hue", (item.char,),
                                     item.base)
    for index in range(canvases if len(items) >= 4 else 0):
        picked = rng.sample(items, rng.randint(2, 4))
        image, caption = _canvas(ctx, picked, ctx.renderer.canvas_size)
        yield CaptionedImage(image, caption, "canvas", tuple(it.char for it in picked), f"canvas/{index}")

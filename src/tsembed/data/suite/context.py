"""Shared state of one suite build: the split emoji catalogue, seeded RNGs, and cached images on disk."""

from __future__ import annotations

import hashlib
import random
from collections.abc import Collection, Iterator, Sequence
from dataclasses import replace
from functools import lru_cache
from pathlib import Path

from PIL import Image, ImageDraw, ImageFont, ImageOps

from tsembed.data.registry import RANKED_SPLITS
from tsembed.data.suite.catalog import EmojiItem, load_catalog, split_of_base
from tsembed.data.suite.config import SuiteConfig
from tsembed.data.suite.render import EmojiRenderer, openmoji_font_path
from tsembed.data.suite.scene import Scene, random_scene
from tsembed.data.suite.store import ImageStore

_FINGERPRINT_SIZE = 24  # small enough to be fast, large enough to tell different glyphs apart


@lru_cache(maxsize=1)
def fingerprints() -> dict[str, str]:
    """Emoji code -> hash of its rendering; equal hashes mean identical-looking emoji (cached per process).

    Emoji the font cannot draw as one glyph (blank, or a sequence that did not ligate) are left out.
    """
    from PIL import features

    layout = ImageFont.Layout.RAQM if features.check("raqm") else ImageFont.Layout.BASIC
    font = ImageFont.truetype(str(openmoji_font_path()), _FINGERPRINT_SIZE, layout_engine=layout)
    s = _FINGERPRINT_SIZE
    out = {}
    for item in load_catalog():
        im = Image.new("RGBA", (3 * s, 2 * s))
        ImageDraw.Draw(im).text((3 * s // 2, s), item.char, font=font, anchor="mm", embedded_color=True)
        bbox = im.getbbox()
        if bbox is None or bbox[2] - bbox[0] > 1.5 * s:
            continue
        out[item.code] = hashlib.sha1(im.tobytes()).hexdigest()
    return out


def merge_identical_bases(items: Sequence[EmojiItem], prints: dict[str, str]) -> list[EmojiItem]:
    """Give emoji that render identically (e.g. the flags of France and St. Martin) one base key.

    Otherwise the same picture could sit on both sides of the train/eval split.
    """
    parent: dict[str, str] = {}

    def find(b: str) -> str:
        while parent.setdefault(b, b) != b:
            b = parent[b]
        return b

    first_base: dict[str, str] = {}
    for item in items:
        other = first_base.setdefault(prints[item.code], item.base)
        ra, rb = find(item.base), find(other)
        if ra != rb:
            parent[max(ra, rb)] = min(ra, rb)
    return [item if find(item.base) == item.base else replace(item, base=find(item.base)) for item in items]


def ranked(split: str) -> bool:
    """Eval-format splits (dev, eval): each query gets candidates, drawn from its own split's emoji."""
    return split in RANKED_SPLITS


class BuildContext:
    """Everything a dataset builder needs; builders stay pure functions of (context, split, rng)."""

    def __init__(self, config: SuiteConfig, root: Path) -> None:
        self.config = config
        self.renderer = EmojiRenderer(config.tile_size, config.canvas_size)
        self.store = ImageStore(root)
        self.fingerprint = fingerprints()
        catalog = [it for it in load_catalog() if it.code in self.fingerprint]
        self.catalog = merge_identical_bases(catalog, self.fingerprint)
        self._split: dict[str, list[EmojiItem]] = {split: [] for split in ("train", "dev", "eval")}
        for it in self.catalog:
            self._split[split_of_base(it.base, config.seed, config.eval_fraction, config.dev_fraction)].append(it)
        self.groups = sorted({it.group for it in self.catalog})
        self.subgroups = sorted({it.subgroup for it in self.catalog})
        self._bases = {split: self._group_by_base(items) for split, items in self._split.items()}
        self._by_base = {it.base: group for groups in self._bases.values() for group in groups for it in group}
        self._by_subgroup: dict[tuple[str, str], list[EmojiItem]] = {}
        for split, items in self._split.items():
            for it in items:
                self._by_subgroup.setdefault((split, it.subgroup), []).append(it)
        self._scenes: dict[tuple[str, int], Scene] = {}
        # Crops of one canvas are cut in a row; keep recent canvases instead of redrawing per crop.
        self._canvas_image = lru_cache(maxsize=256)(lambda scene: self.renderer.canvas(scene.spec()))

    @staticmethod
    def _group_by_base(items: Sequence[EmojiItem]) -> list[list[EmojiItem]]:
        by_base: dict[str, list[EmojiItem]] = {}
        for it in items:
            by_base.setdefault(it.base, []).append(it)
        return [by_base[b] for b in sorted(by_base)]

    # --- catalogue -------------------------------------------------------------------------------
    def items(self, split: str) -> list[EmojiItem]:
        """Emoji whose base emoji belongs to `split` ("train", "dev" or "eval"), sorted by code."""
        return self._split[split]

    def rng(self, *parts: object) -> random.Random:
        """Independent stream per purpose, so adding a dataset never changes another dataset's rows."""
        return random.Random("/".join(map(str, (self.config.seed, *parts))))

    def same_base(self, item: EmojiItem) -> list[EmojiItem]:
        """All variants (tones, genders, ...) sharing `item`'s base emoji, `item` included.

        A base belongs to one split only, so these never cross splits.
        """
        return self._by_base[item.base]

    def same_subgroup(self, split: str, item: EmojiItem) -> list[EmojiItem]:
        """Emoji of `split` in `item`'s subgroup, other than `item`."""
        return [it for it in self._by_subgroup.get((split, item.subgroup), []) if it.code != item.code]

    def random_items(
        self, split: str, rng: random.Random, k: int, exclude_bases: Collection[str] = ()
    ) -> list[EmojiItem]:
        """Up to k distinct random emoji of `split` whose base is not in `exclude_bases`.

        Excluding by base (not name) also keeps out look-alikes, e.g. "person bald" for "man bald".
        """
        items = self._split[split]
        picked = rng.sample(items, min(len(items), 4 * k + 8))
        out = [it for it in picked if it.base not in exclude_bases][:k]
        if len(out) < k:  # rare: most of the sample was excluded; fall back to a full shuffle
            out = [it for it in rng.sample(items, len(items)) if it.base not in exclude_bases][:k]
        return out

    def scenes(self, split: str, limit: int = 1_000_000) -> Iterator[Scene]:
        """Scenes 0, 1, 2, ... of a split. Datasets walk the same sequence, so canvases are shared
        between tasks (one picture, several questions) and written once."""
        for index in range(limit):
            yield self.scene(split, index)

    @staticmethod
    def balanced(items: Sequence[EmojiItem], rng: random.Random) -> Iterator[EmojiItem]:
        """Every item once, bases interleaved: first one variant of each base, then second variants, ...

        Keeps the 5 skin tones x 3 genders of people emoji from crowding out everything else.
        """
        by_base: dict[str, list[EmojiItem]] = {}
        for it in items:
            by_base.setdefault(it.base, []).append(it)
        bases = sorted(by_base)
        rng.shuffle(bases)
        for variants in by_base.values():
            rng.shuffle(variants)
        depth = max((len(v) for v in by_base.values()), default=0)
        for level in range(depth):
            for base in bases:
                if level < len(by_base[base]):
                    yield by_base[base][level]

    # --- images ----------------------------------------------------------------------------------
    def single(self, item: EmojiItem) -> str:
        return self.store.get(("single", item.code), lambda: self.renderer.single(item.char))

    def gray(self, item: EmojiItem, angle: int) -> str:
        """Grayscale copy rotated by `angle` degrees on white: the domain shift of EmojiGroupGray."""

        def render() -> Image.Image:
            im = ImageOps.grayscale(self.renderer.single(item.char))
            return im.rotate(angle, resample=Image.Resampling.BICUBIC, fillcolor=255).convert("RGB")

        return self.store.get(("gray", item.code, angle), render)

    def scene(self, split: str, index: int) -> Scene:
        """The `index`-th canvas scene of a split; each is seeded on its own, so pools can grow lazily."""
        key = (split, index)
        if key not in self._scenes:
            self._scenes[key] = random_scene(self._bases[split], self.rng("scene", split, index))
        return self._scenes[key]

    def canvas(self, scene: Scene) -> str:
        return self.store.get(("canvas", scene.key), lambda: self._canvas_image(scene))

    def crop(self, scene: Scene, row: int, col: int) -> str:
        def render() -> Image.Image:
            return self._canvas_image(scene).crop(self.renderer.cell_box(row, col))

        return self.store.get(("crop", scene.key, row, col), render)

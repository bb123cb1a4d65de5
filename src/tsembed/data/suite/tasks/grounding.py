"""Grounding datasets: a canvas + a referring expression -> the crop showing that emoji, among crops.

Candidates are the other crops of the same canvas (hardest) and crops of the other canvases used by the
dataset (a fixed gallery, so no extra images are written for them).
"""

from __future__ import annotations

import random
from collections.abc import Iterator

from tsembed.data.suite.context import BuildContext, ranked
from tsembed.data.suite.example import Example
from tsembed.data.suite.scene import Cell, Scene

_RELATIONS = (("to the right of", 0, 1), ("to the left of", 0, -1), ("directly above", -1, 0), ("directly below", 1, 0))


def _finish(
    ctx: BuildContext, split: str, rng: random.Random, chosen: list[tuple[Scene, str, Cell, list[Cell]]]
) -> Iterator[Example]:
    """chosen: (scene, referring text, target cell, hard cells); adds candidates and the train negative."""
    look = ctx.fingerprint  # emoji code -> rendering hash: equal hashes look the same
    gallery: dict[str, str] = {}  # crop path -> look of its emoji; identical crops are one file, kept once
    if ranked(split):
        for scene, *_ in chosen:
            for r, c, it in scene.cells:
                gallery.setdefault(ctx.crop(scene, r, c), look[it.code])
    for scene, text, (r, c, target), hard in chosen:
        positive = ctx.crop(scene, r, c)
        hard_crops = list(
            dict.fromkeys(ctx.crop(scene, hr, hc) for hr, hc, it in hard if look[it.code] != look[target.code])
        )
        distractors: list[tuple[str, str]] = []
        if ranked(split):
            pool = hard_crops[: ctx.config.pool_size - 1]
            in_pool = set(pool)
            # Crops showing the target or a look-alike (e.g. "person bald" for "man bald") are left out.
            for path, fp in rng.sample(list(gallery.items()), len(gallery)):
                if len(pool) >= ctx.config.pool_size - 1:
                    break
                if fp != look[target.code] and path not in in_pool:
                    pool.append(path)
                    in_pool.add(path)
            distractors = [("", path) for path in pool]
        yield Example(
            query=text,
            query_image=ctx.canvas(scene),
            positive_image=positive,
            negative="" if hard_crops else None,
            negative_image=rng.choice(hard_crops) if hard_crops else "",
            distractors=distractors,
            emoji=scene.distinct_items(),
        )


def emoji_grounding(ctx: BuildContext, split: str, rng: random.Random, n: int) -> Iterator[Example]:
    chosen = []
    for scene in ctx.scenes(split):
        if len(chosen) >= n:
            break
        if cells := scene.unique_cells():
            target = rng.choice(cells)
            chosen.append((scene, target[2].name, target, [cell for cell in scene.cells if cell != target]))
    return _finish(ctx, split, rng, chosen)


def relational_grounding(ctx: BuildContext, split: str, rng: random.Random, n: int) -> Iterator[Example]:
    chosen = []
    for scene in ctx.scenes(split):
        if len(chosen) >= n:
            break
        unique = {cell[2].name for cell in scene.unique_cells()}
        options = [
            (phrase, anchor, target)
            for phrase, dr, dc in _RELATIONS
            for anchor, target in scene.neighbours(dr, dc)
            if anchor[2].name in unique
        ]
        if options:
            phrase, anchor, target = rng.choice(options)
            hard = [anchor] + [cell for cell in scene.cells if cell not in (anchor, target)]
            chosen.append((scene, f"the emoji {phrase} the {anchor[2].name}", target, hard))
    return _finish(ctx, split, rng, chosen)

"""Multi-emoji canvas scenes (what sits in which cell), from which VQA and grounding questions are drawn."""

from __future__ import annotations

import random
from collections import Counter
from collections.abc import Sequence
from dataclasses import dataclass

from tsembed.data.suite.catalog import EmojiItem
from tsembed.data.suite.render import BACKGROUNDS, GRID, CanvasSpec

Cell = tuple[int, int, EmojiItem]
_COPIES = (1, 1, 2, 2, 3, 4)  # copies of the first emoji: answers of "how many" questions


@dataclass(frozen=True)
class Scene:
    """Emoji placed in cells of a GRID x GRID canvas, on a named background colour."""

    cells: tuple[Cell, ...]  # sorted by (row, col)
    background: str

    @property
    def key(self) -> tuple:
        return (self.background, tuple((r, c, it.code) for r, c, it in self.cells))

    def spec(self) -> CanvasSpec:
        return CanvasSpec(tuple((r, c, it.char) for r, c, it in self.cells), self.background)

    def at(self, row: int, col: int) -> EmojiItem | None:
        for r, c, it in self.cells:
            if (r, c) == (row, col):
                return it
        return None

    def count(self, name: str) -> int:
        return sum(it.name == name for _, _, it in self.cells)

    def unique_cells(self) -> list[Cell]:
        """Cells whose emoji appears once, so "the <name>" refers to exactly one place."""
        counts = Counter(it.name for _, _, it in self.cells)
        return [cell for cell in self.cells if counts[cell[2].name] == 1]

    def neighbours(self, drow: int, dcol: int) -> list[tuple[Cell, Cell]]:
        """Pairs (a, b) of occupied cells with b = a + (drow, dcol) and different emoji."""
        out = []
        for a in self.cells:
            item_b = self.at(a[0] + drow, a[1] + dcol)
            if item_b is not None and item_b.name != a[2].name:
                out.append((a, (a[0] + drow, a[1] + dcol, item_b)))
        return out

    def distinct_items(self) -> list[EmojiItem]:
        seen: dict[str, EmojiItem] = {}
        for _, _, it in self.cells:
            seen.setdefault(it.code, it)
        return list(seen.values())


def random_scene(bases: Sequence[Sequence[EmojiItem]], rng: random.Random) -> Scene:
    """3-5 emoji of different base emoji, the first repeated 1-4 times, on a random background.

    Args:
        bases: Variants grouped by base emoji (one split's emoji only).
        rng: Seeded per scene.
    """
    chosen = [rng.choice(variants) for variants in rng.sample(list(bases), rng.randint(3, 5))]
    copies = rng.choice(_COPIES)
    placed = [chosen[0]] * copies + chosen[1:]
    positions = rng.sample(range(GRID * GRID), len(placed))
    cells = sorted(
        ((p // GRID, p % GRID, it) for p, it in zip(positions, placed, strict=True)), key=lambda cell: cell[:2]
    )
    return Scene(tuple(cells), rng.choice(sorted(BACKGROUNDS)))

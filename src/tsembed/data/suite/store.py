"""Content-addressed PNG store: identical images are written once, and names never depend on build order."""

from __future__ import annotations

import hashlib
import io
from collections.abc import Callable, Hashable
from pathlib import Path

from PIL import Image


class ImageStore:
    """Writes PNGs under `root/subdir/<sha256[:16]>.png` and returns paths relative to `root`.

    Args:
        root: The suite root (the image root of every row).
        subdir: Folder for images inside the root.
    """

    def __init__(self, root: Path, subdir: str = "images") -> None:
        self.root = Path(root)
        self.subdir = subdir
        (self.root / subdir).mkdir(parents=True, exist_ok=True)
        self._by_key: dict[Hashable, str] = {}
        self._sizes: dict[str, int] = {}

    def put(self, image: Image.Image) -> str:
        """Encode and store; returns the path relative to the root."""
        buf = io.BytesIO()
        image.save(buf, format="PNG")  # no metadata: bytes depend on pixels only
        data = buf.getvalue()
        rel = f"{self.subdir}/{hashlib.sha256(data).hexdigest()[:16]}.png"
        if rel not in self._sizes:
            (self.root / rel).write_bytes(data)
            self._sizes[rel] = len(data)
        return rel

    def get(self, key: Hashable, render: Callable[[], Image.Image]) -> str:
        """Store `render()` once per logical key (avoids re-encoding the same tile for every row)."""
        if key not in self._by_key:
            self._by_key[key] = self.put(render())
        return self._by_key[key]

    @property
    def count(self) -> int:
        return len(self._sizes)

    @property
    def total_bytes(self) -> int:
        return sum(self._sizes.values())

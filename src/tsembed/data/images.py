"""Fast image checks before a run: exists, is a file, header decodes. Cached per path, checked in threads."""

from __future__ import annotations

from collections.abc import Iterable
from concurrent.futures import ThreadPoolExecutor
from pathlib import Path

from tsembed.data.rows import resolve_image


class ImageChecker:
    """Checks image paths relative to one image root; each distinct path is opened once.

    Args:
        image_root: Directory relative image paths are resolved against.
        verify: Also run PIL's `verify()` (reads the file; catches truncated PNGs) and, for a JPEG (whose
            `verify()` reads nothing), look for its end-of-image marker, decoding the file when it is not near
            the end. Without it only the header is decoded.
        workers: Threads used by `check_many` (the work is file I/O).
    """

    def __init__(self, image_root: str | Path | None, *, verify: bool = True, workers: int = 8) -> None:
        self.image_root = image_root
        self.verify = verify
        self.workers = workers
        self._cache: dict[str, str | None] = {}

    def _check(self, path: str) -> str | None:
        from PIL import Image, UnidentifiedImageError

        resolved = resolve_image(path, self.image_root)
        if resolved is None:
            return "is empty"
        if not resolved.exists():
            return f"not found under image root '{self.image_root}'"
        if not resolved.is_file():
            return f"is not a file (resolved to '{resolved}')"
        try:
            with Image.open(resolved) as im:
                if self.verify:
                    im.verify()
                    if im.format == "JPEG" and not _jpeg_complete(resolved):
                        with Image.open(resolved) as whole:  # no end marker near the end: decode to be sure
                            whole.load()  # (a motion photo carries a video after it; a cut file fails here)
        except (UnidentifiedImageError, OSError, SyntaxError, ValueError) as exc:
            return f"is not a readable image ({type(exc).__name__}: {exc})"
        return None

    def check(self, path: str) -> str | None:
        """None if the image is fine, else what is wrong with it (cached)."""
        if path not in self._cache:
            self._cache[path] = self._check(path)
        return self._cache[path]

    def check_many(self, paths: Iterable[str]) -> dict[str, str | None]:
        """Check distinct paths in parallel; returns path -> problem (None when fine)."""
        paths = list(paths)
        todo = sorted({p for p in paths if p not in self._cache})
        if len(todo) > 16 and self.workers > 1:
            with ThreadPoolExecutor(max_workers=self.workers) as pool:
                self._cache.update(zip(todo, pool.map(self._check, todo), strict=True))
        else:
            for p in todo:
                self.check(p)
        return {p: self._cache[p] for p in paths}


JPEG_TAIL_BYTES = 4096  # some writers pad after the end-of-image marker


def _jpeg_complete(path: Path) -> bool:
    """Whether a JPEG's end-of-image marker (FF D9) is in its last few kB (padding may follow it). The marker
    cannot occur inside the entropy-coded data (an FF byte there is stuffed as FF 00), so a file cut short lacks
    it; reading the tail is all this costs. False is not proof: data may follow the image (a motion photo's
    video), so the caller decodes such a file."""
    with open(path, "rb") as handle:
        size = handle.seek(0, 2)
        handle.seek(max(0, size - JPEG_TAIL_BYTES))
        return b"\xff\xd9" in handle.read()

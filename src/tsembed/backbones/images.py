"""Image loading, content hashing and the square resize + normalise transform."""

from __future__ import annotations

import hashlib
from pathlib import Path

import numpy as np
import torch
from PIL import Image, UnidentifiedImageError

from tsembed.backbones.placeholder import ImageLike
from tsembed.errors import DataError

# Bytes of the digests that key the vision feature cache (sha256).
DIGEST_BYTES = 32


def load_image(image: ImageLike, index: int | None = None) -> Image.Image:
    """An RGB PIL image; transparent pixels are composited onto white (emoji and icons are RGBA).

    Raises:
        DataError: the file is missing or not an image (names the path and batch position).
    """
    where = f"input {index}: " if index is not None else ""
    if isinstance(image, Image.Image):
        img = image
    else:
        path = Path(image)
        try:
            with Image.open(path) as opened:
                opened.load()
                img = opened.copy()
        except FileNotFoundError:
            raise DataError(f"{where}image file {str(path)!r} not found") from None
        except (UnidentifiedImageError, OSError) as exc:
            raise DataError(f"{where}image file {str(path)!r} cannot be read as an image ({exc})") from None
    if img.mode in ("RGBA", "LA", "P", "PA") or "transparency" in img.info:
        rgba = img.convert("RGBA")
        background = Image.new("RGBA", rgba.size, (255, 255, 255, 255))
        return Image.alpha_composite(background, rgba).convert("RGB")
    return img.convert("RGB")


def image_digest(image: ImageLike, index: int | None = None) -> bytes:
    """sha256 of the image content: the file's bytes, or mode + size + pixels of a PIL image."""
    sha = hashlib.sha256()
    if isinstance(image, Image.Image):
        sha.update(f"pil:{image.mode}:{image.size[0]}x{image.size[1]}:".encode())
        sha.update(image.tobytes())
        return sha.digest()
    path = Path(image)
    try:
        with path.open("rb") as handle:
            for block in iter(lambda: handle.read(1 << 20), b""):
                sha.update(block)
    except FileNotFoundError:
        where = f"input {index}: " if index is not None else ""
        raise DataError(f"{where}image file {str(path)!r} not found") from None
    return sha.digest()


def image_to_tensor(
    image: Image.Image, size: int, mean: tuple[float, float, float], std: tuple[float, float, float]
) -> torch.Tensor:
    """Resize to size × size (no crop: canvases keep their edges) and normalise to [3, size, size]."""
    resized = image.resize((size, size), Image.Resampling.BICUBIC)
    array = np.asarray(resized, dtype=np.float32) / 255.0  # [H, W, 3]
    array = (array - np.asarray(mean, dtype=np.float32)) / np.asarray(std, dtype=np.float32)
    return torch.from_numpy(array).permute(2, 0, 1).contiguous()  # [3, H, W]

"""Decode request images (base64 data URLs) under byte and pixel limits; never fetch URLs."""

from __future__ import annotations

import base64
import binascii
import io

from PIL import Image, UnidentifiedImageError

from tsembed.inference.server.errors import APIError


def decode_data_url(value: str, param: str, max_bytes: int, max_pixels: int) -> Image.Image:
    """A loaded PIL image from ``data:image/...;base64,<payload>``.

    Raises:
        APIError: 400 for a remote URL, a non-image or non-base64 data URL, bad base64, an unreadable
            image, or one over the byte/pixel limits (``param`` names the field).
    """
    if value.startswith(("http://", "https://", "file:")):
        raise APIError(400, "image URLs are not fetched by this server; send the image as a base64 data URL "
                            "(data:image/png;base64,...)", param=param, code="unsupported_image_url")
    if not value.startswith("data:"):
        raise APIError(400, "image must be a base64 data URL (data:image/png;base64,...)", param=param,
                       code="invalid_image")
    header, sep, payload = value.partition(",")
    mime = header[5:].split(";")[0]
    if not sep or ";base64" not in header or (mime and not mime.startswith("image/")):
        raise APIError(400, f"image data URL must be data:image/<type>;base64,...; got header {header[:40]!r}",
                       param=param, code="invalid_image")
    payload = "".join(payload.split())
    if len(payload) * 3 // 4 > max_bytes:
        raise APIError(400, f"image is larger than the limit of {max_bytes} bytes", param=param,
                       code="image_too_large")
    try:
        raw = base64.b64decode(payload, validate=True)
    except (binascii.Error, ValueError):
        raise APIError(400, "image is not valid base64", param=param, code="invalid_base64") from None
    try:
        image = Image.open(io.BytesIO(raw))
        width, height = image.size
        if width * height > max_pixels:
            raise APIError(400, f"image has {width}x{height} pixels, over the limit of {max_pixels}",
                           param=param, code="image_too_large")
        image.load()
    except APIError:
        raise
    except (UnidentifiedImageError, OSError, SyntaxError, ValueError, Image.DecompressionBombError) as exc:
        raise APIError(400, f"image cannot be decoded ({type(exc).__name__})", param=param,
                       code="invalid_image") from None
    return image

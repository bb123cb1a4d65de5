"""Request images (base64 data URLs) in two steps, so memory is bounded before any pixel is decoded.

``open_data_url`` checks the byte limit and reads only the image header (PIL's ``Image.open`` is lazy), so
the request's pixel count is known and charged against the per-request and server-wide pixel budgets
before ``decode_images`` materialises a single pixel. Remote URLs are never fetched.
"""

from __future__ import annotations

import base64
import binascii
import io
import warnings

from PIL import Image, UnidentifiedImageError

from tsembed.inference.server.errors import APIError

_DECODE_ERRORS = (UnidentifiedImageError, OSError, SyntaxError, ValueError, EOFError)


def open_data_url(value: str, param: str, max_bytes: int, max_pixels: int, max_side: int) -> Image.Image:
    """A lazily opened PIL image (header read, pixels not decoded) from ``data:image/...;base64,<payload>``.

    Raises:
        APIError: 400 for a remote URL, a non-image or non-base64 data URL, bad base64, an unreadable header,
            or an image over the byte, per-image pixel or side-length limit (``param`` names the field).
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
        with warnings.catch_warnings():  # PIL warns past its own bomb limit; ours is the one that counts
            warnings.simplefilter("ignore", Image.DecompressionBombWarning)
            image = Image.open(io.BytesIO(raw))
    except Image.DecompressionBombError:  # dimensions past PIL's hard limit: far past ours
        raise _too_many_pixels(None, max_pixels, param) from None
    except _DECODE_ERRORS as exc:
        raise APIError(400, f"image cannot be decoded ({type(exc).__name__})", param=param,
                       code="invalid_image") from None
    width, height = image.size
    if width * height > max_pixels:
        raise _too_many_pixels(f"{width}x{height}", max_pixels, param)
    if max(width, height) > max_side:  # a 1x20,000,000 strip: few pixels, but resizing it costs ~600 MB
        raise APIError(400, f"image is {width}x{height} pixels; sides are limited to {max_side} pixels "
                       "(max_image_side)", param=param, code="image_too_large")
    return image


def _too_many_pixels(size: str | None, max_pixels: int, param: str) -> APIError:
    has = f"has {size} pixels" if size else "declares more pixels than this server decodes"
    return APIError(400, f"image {has}, over the limit of {max_pixels} pixels per image (max_image_pixels)",
                    param=param, code="image_too_large")


def image_pixels(image: Image.Image) -> int:
    """Pixels the decoded image will hold (from the header alone)."""
    width, height = image.size
    return int(width) * int(height)


def decode_images(images: list[tuple[str, Image.Image]]) -> None:
    """Decode lazily opened images in place (``(param, image)`` pairs); call only after admission.

    Raises:
        APIError: 400 naming the field of an image whose data is truncated or corrupt.
    """
    for param, image in images:
        try:
            with warnings.catch_warnings():
                warnings.simplefilter("ignore", Image.DecompressionBombWarning)
                image.load()
        except (*_DECODE_ERRORS, Image.DecompressionBombError) as exc:
            raise APIError(400, f"image cannot be decoded ({type(exc).__name__}: {str(exc)[:80]})", param=param,
                           code="invalid_image") from None

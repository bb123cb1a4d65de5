"""Where the image goes in an input's text: MMEB's ``<|image_1|>`` placeholder.

Every backbone splits its inputs here, so all of them agree on the rules:

* the placeholder marks the image position; an input with an image and no placeholder puts the
  image first (MMEB's convention: "<|image_1|> Represent the given image.");
* a placeholder without an image, more than one placeholder, or an input with neither text nor
  image is a ``DataError`` naming the batch position.
"""

from __future__ import annotations

from collections.abc import Sequence
from dataclasses import dataclass
from pathlib import Path

from PIL import Image

from tsembed.errors import DataError
from tsembed.inputs import IMAGE_PLACEHOLDER, EmbedInput

ImageLike = str | Path | Image.Image


@dataclass(frozen=True)
class Segments:
    """One input split at its image: ``before`` + image + ``after`` (no image: all text in ``before``)."""

    before: str
    after: str
    image: ImageLike | None

    @property
    def has_image(self) -> bool:
        return self.image is not None

    @property
    def text(self) -> str:
        """The text without the image, the two sides joined by one space."""
        return " ".join(part for part in (self.before.strip(), self.after.strip()) if part)


def split_input(item: EmbedInput, index: int) -> Segments:
    """Split one input at its image.

    Args:
        item: the input.
        index: its position in the batch, for error messages.

    Raises:
        DataError: not an ``EmbedInput``, empty, or placeholder and image disagree.
    """
    if not isinstance(item, EmbedInput):
        raise DataError(f"input {index}: expected an EmbedInput(text=..., image=...), got {type(item).__name__}")
    text, image = item.text, item.image
    if text is None and image is None:
        raise DataError(f"input {index}: has neither text nor image")
    text = text or ""
    count = text.count(IMAGE_PLACEHOLDER)
    if count > 1:
        raise DataError(f"input {index}: text has {count} {IMAGE_PLACEHOLDER} placeholders; one image per input")
    if image is None:
        if count:
            raise DataError(f"input {index}: text has the {IMAGE_PLACEHOLDER} placeholder but the input has no image")
        return Segments(before=text, after="", image=None)
    if not count:
        return Segments(before="", after=text, image=image)
    before, _, after = text.partition(IMAGE_PLACEHOLDER)
    return Segments(before=before, after=after, image=image)


def split_inputs(inputs: Sequence[EmbedInput]) -> list[Segments]:
    """``split_input`` over a batch; an empty batch is a ``DataError``."""
    if len(inputs) == 0:
        raise DataError("empty batch: give at least one input")
    return [split_input(item, i) for i, item in enumerate(inputs)]

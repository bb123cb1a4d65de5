"""The one input type every backbone accepts, so data rows and `encode()` calls meet in one place."""

from __future__ import annotations

from dataclasses import dataclass
from pathlib import Path
from typing import TYPE_CHECKING, Union

if TYPE_CHECKING:
    from PIL.Image import Image

#: The MMEB placeholder marking where the image sits inside the text.
IMAGE_PLACEHOLDER = "<|image_1|>"

ImageLike = Union[str, Path, "Image"]


@dataclass(frozen=True)
class EmbedInput:
    """One side of a pair (query, positive, negative or candidate) as the model sees it.

    Attributes:
        text: Instruction plus content. When `image` is set it contains `<|image_1|>` where the image
            goes (MMEB convention); `None` for an image-only input.
        image: A path (absolute once resolved against an image root) or an already opened PIL image.
        task: The task the input is embedded for (e.g. ``"retrieval"``), for models trained with task
            hints (``moe.task_hints``); models without them ignore it.
    """

    text: str | None = None
    image: ImageLike | None = None
    task: str | None = None

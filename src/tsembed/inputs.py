"""The one input type every backbone, data reader and API takes, and what makes two inputs "the same".

It sits at the package's core so that backbones, data, training, evaluation and inference all import it
from here and none of them has to import another layer for it.
"""

from __future__ import annotations

from collections.abc import Callable, Iterable
from dataclasses import dataclass, replace
from pathlib import Path
from typing import TYPE_CHECKING, Union

if TYPE_CHECKING:
    from PIL.Image import Image

#: The MMEB placeholder marking where the image sits inside the text.
IMAGE_PLACEHOLDER = "<|image_1|>"

#: Characters an image counts for in ``length_key``: an image is batched with long texts.
IMAGE_LENGTH = 512

ImageLike = Union[str, Path, "Image"]

#: ``input_key``: (text, image reference, task).
InputKey = tuple[str | None, str, str | None]


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


def text_only(item: EmbedInput) -> EmbedInput:
    """The input's text alone (its image and the image placeholder dropped): for an image input, its instruction."""
    text = " ".join((item.text or "").replace(IMAGE_PLACEHOLDER, " ").split())
    return EmbedInput(text=text, task=item.task)


def length_key(item: EmbedInput) -> int:
    """Sort key for batching similar inputs together: text length, an image counted as ``IMAGE_LENGTH``
    characters (so image inputs share batches with long texts rather than padding short ones)."""
    return len(item.text or "") + (IMAGE_LENGTH if item.image is not None else 0)


def image_reference(image: ImageLike) -> str:
    """The image part of ``input_key``: the path as given, or the in-memory image object itself."""
    return str(image) if isinstance(image, str | Path) else f"<in-memory image {id(image)}>"


def input_key(item: EmbedInput, image_id: Callable[[ImageLike], str] = image_reference) -> InputKey:
    """What makes two inputs the same input: equal text, equal image and equal task.

    Inputs with equal keys embed identically, so callers embed one of them and reuse the result.
    ``image_id`` names the image: by path (default; what de-duplication within a run needs) or by
    content (the embedding cache, whose keys must survive a moved image folder).
    """
    return (item.text, "" if item.image is None else image_id(item.image), item.task)


def with_task(items: Iterable[EmbedInput], task: str | None) -> list[EmbedInput]:
    """Declare ``task`` for every input that declares none; an input's own task wins.

    The one rule for a task given from outside (``encode(..., task=...)``, an eval set's meta-task, a
    training dataset's task): it fills the gap, it never overrides what the input says.
    """
    items = list(items)
    if task is None:
        return items
    return [x if x.task is not None else replace(x, task=task) for x in items]

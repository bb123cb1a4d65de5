"""Turn what users pass to ``encode`` (strings, images, paths, dicts) into ``EmbedInput``s.

Accepted, as in sentence-transformers' multimodal ``encode``:

* ``str``: text; but a string ending in an image extension that names an existing file is that image;
* ``pathlib.Path``: an image file;
* ``PIL.Image.Image``: an image;
* ``{"text": ..., "image": ...}``: text, image or both (the image goes where ``<|image_1|>`` sits);
* ``EmbedInput``: passed through.
"""

from __future__ import annotations

from collections.abc import Sequence
from dataclasses import replace
from pathlib import Path
from typing import Any

from tsembed.errors import DataError
from tsembed.inputs import EmbedInput

IMAGE_EXTENSIONS = (".png", ".jpg", ".jpeg", ".webp", ".bmp", ".gif", ".tif", ".tiff")
DICT_KEYS = ("text", "image", "task")
#: Where a row's content goes inside an instruction template; without it the content follows the instruction.
TEXT_SLOT = "{text}"


def _is_pil(value: Any) -> bool:
    try:
        from PIL import Image
    except ImportError:  # pragma: no cover - pillow is a core dependency
        return False
    return isinstance(value, Image.Image)


def looks_like_image_path(value: str) -> bool:
    """A string is taken as an image only if it ends in an image extension and the file exists."""
    return value.lower().endswith(IMAGE_EXTENSIONS) and "\n" not in value and Path(value).is_file()


def _image(value: Any, where: str) -> Any:
    if value is None or _is_pil(value):
        return value
    if isinstance(value, str | Path):
        path = Path(value)
        if not path.is_file():
            raise DataError(f"{where}: `image` file '{path}' not found")
        return path
    raise DataError(f"{where}: `image` must be a path or a PIL image, got {type(value).__name__}")


def to_embed_input(value: Any, index: int = 0) -> EmbedInput:
    """One user input as an ``EmbedInput``.

    Raises:
        DataError: unsupported type, unknown dict keys, a missing image file or an empty input;
            the message names the input's position.
    """
    where = f"input {index}"
    if isinstance(value, EmbedInput):
        return value
    if isinstance(value, Path):
        return EmbedInput(image=_image(value, where))
    if isinstance(value, str):
        return EmbedInput(image=Path(value)) if looks_like_image_path(value) else EmbedInput(text=value)
    if _is_pil(value):
        return EmbedInput(image=value)
    if isinstance(value, dict):
        unknown = sorted(set(value) - set(DICT_KEYS))
        if unknown:
            raise DataError(f"{where}: unknown keys {unknown}; an input dict takes {list(DICT_KEYS)}")
        text = value.get("text")
        if text is not None and not isinstance(text, str):
            raise DataError(f"{where}: `text` must be a string, got {type(text).__name__}")
        image = _image(value.get("image"), where)
        if not text and image is None:
            raise DataError(f"{where}: an input dict needs `text`, `image` or both")
        task = value.get("task")
        if task is not None and not isinstance(task, str):
            raise DataError(f"{where}: `task` must be a string, got {type(task).__name__}")
        return EmbedInput(text=text or None, image=image, task=task)
    raise DataError(
        f"{where}: unsupported input type {type(value).__name__}; pass a string, a PIL image, an image path, "
        "or a dict with `text` and/or `image`"
    )


def to_embed_inputs(values: Sequence[Any]) -> list[EmbedInput]:
    return [to_embed_input(v, i) for i, v in enumerate(values)]


def apply_instruction(instruction: str | None, item: EmbedInput) -> EmbedInput:
    """Instruction + content (MMEB): ``"{text}"`` in the instruction marks the content's slot, else a space
    joins them. An image-only input gets the instruction as its text (the image goes first, as in MMEB's
    "<|image_1|> Represent the given image.")."""
    if not instruction:
        return item
    content = item.text or ""
    if TEXT_SLOT in instruction:
        text = instruction.replace(TEXT_SLOT, content)
    else:
        text = f"{instruction} {content}" if content else instruction
    return replace(item, text=text)


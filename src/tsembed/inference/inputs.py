"""Turn what users pass to ``encode`` (strings, images, paths, dicts) into ``EmbedInput``s.

Accepted, as in sentence-transformers' multimodal ``encode``:

* ``str``: text; but a string ending in an image extension that names an existing file is that image, and
  one that looks like an image path (an image extension, no line break, no spaces unless it has a path
  separator) but names no file is an error, not silently text: pass ``{"text": ...}`` to embed it as text;
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
    return _image_path_shaped(value) and Path(value).is_file()


def _image_path_shaped(value: str) -> bool:
    """Ends in an image extension and reads as a path, not a sentence (no line break; no whitespace unless it
    holds a path separator, as ``My Photos/cat.jpg`` does and ``I saved cat.jpg`` does not)."""
    if not value.lower().endswith(IMAGE_EXTENSIONS) or "\n" in value or len(value) > 4096:
        return False
    return not any(c.isspace() for c in value) or "/" in value or "\\" in value


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
        if _image_path_shaped(value):
            if Path(value).is_file():
                return EmbedInput(image=Path(value))
            raise DataError(
                f"{where}: {value!r} looks like an image path but no such file exists (relative to {Path.cwd()}); "
                f'fix the path, or pass {{"text": "{value}"}} to embed it as text'
            )
        return EmbedInput(text=value)
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


def instruction_as_prompt(instruction: str | None) -> str:
    """A sentence-transformers prompt (a prefix: ``prompt + text``) that ``prompt_as_instruction`` turns back
    into ``instruction``; an instruction holding ``{text}`` stays a template."""
    if not instruction:
        return ""
    return instruction if TEXT_SLOT in instruction else f"{instruction} "


def prompt_as_instruction(prompt: str | None) -> str | None:
    """The instruction that applies a sentence-transformers ``prompt`` the way sentence-transformers does
    (``prompt + text``); a prompt holding ``{text}`` is a template. One trailing space is ``apply_instruction``'s
    join, so an image-only input gets the prompt without it, as it gets the model's own instruction."""
    if not prompt:
        return None
    if TEXT_SLOT in prompt:
        return prompt
    if prompt.endswith(" ") and not prompt[:-1].endswith(tuple(" \t\n")) and prompt.strip():
        return prompt[:-1]
    return prompt + TEXT_SLOT


def instructed_length(instruction: str | None, content: str | None) -> int:
    """The length of ``apply_instruction``'s text for ``content``, computed without building it: an instruction
    repeating ``{text}`` k times makes it k times the content, which a limit checked before applying misses."""
    content = content or ""
    if not instruction:
        return len(content)
    if TEXT_SLOT in instruction:
        return len(instruction) + instruction.count(TEXT_SLOT) * (len(content) - len(TEXT_SLOT))
    return len(instruction) + 1 + len(content) if content else len(instruction)


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


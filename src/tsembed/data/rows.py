"""MMEB train and eval rows as typed records, and their conversion to model inputs.

Field names are MMEB's exactly (`qry`, `pos_text`, `tgt_img_path`, ...): rows are read and written by
name, never by position. Image paths stay as written in the file (relative to an image root); they
are resolved only when a row becomes an `EmbedInput`.
"""

from __future__ import annotations

from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from tsembed.inputs import IMAGE_PLACEHOLDER, EmbedInput

TRAIN_FIELDS: tuple[str, ...] = ("qry", "qry_image_path", "pos_text", "pos_image_path", "neg_text", "neg_image_path")
TRAIN_REQUIRED: tuple[str, ...] = TRAIN_FIELDS[:4]
EVAL_FIELDS: tuple[str, ...] = ("qry_text", "qry_img_path", "tgt_text", "tgt_img_path")
EVAL_REQUIRED: tuple[str, ...] = EVAL_FIELDS
#: MMEB-V2's image tasks (VLM2Vec's `MMEB_Test_Instruct`) keep the instructions apart from the content.
INSTRUCTION_FIELDS: tuple[str, ...] = ("qry_inst", "tgt_inst")


def join_instruction(instruction: str, content: str, has_image: bool) -> str:
    """One input's text from a separate instruction and content, as VLM2Vec joins them for MMEB-V2's image tasks:
    the image first (``<|image_1|>``, wherever the instruction had it), then the instruction, then the content."""
    body = " ".join(part for part in (instruction.replace(IMAGE_PLACEHOLDER, "").strip(), content.strip()) if part)
    return f"{IMAGE_PLACEHOLDER}\n{body}" if has_image else body


def merge_instructions(record: dict[str, Any]) -> dict[str, Any]:
    """An eval record with `qry_inst`/`tgt_inst` turned into the one-text-per-input form every reader uses.

    The query is ``qry_inst`` + ``qry_text``; a candidate with an image is ``tgt_inst`` + its text, and a text-only
    candidate keeps its text (a class name or a caption), which is how VLM2Vec scores these files. A record without
    the two fields comes back unchanged; fields must already be strings / lists of strings (validation checks).
    """
    if not any(name in record for name in INSTRUCTION_FIELDS):
        return record
    merged = {k: v for k, v in record.items() if k not in INSTRUCTION_FIELDS}
    qry_inst, tgt_inst = record.get("qry_inst") or "", record.get("tgt_inst") or ""
    if qry_inst:
        merged["qry_text"] = join_instruction(qry_inst, record.get("qry_text") or "", bool(record.get("qry_img_path")))
    if tgt_inst and isinstance(record.get("tgt_text"), list | tuple):
        paths = list(record.get("tgt_img_path") or [])
        merged["tgt_text"] = [
            join_instruction(tgt_inst, text or "", True) if i < len(paths) and paths[i] else text
            for i, text in enumerate(record["tgt_text"])
        ]
    return merged


#: (text field, image field) of each input of a train row.
TRAIN_SIDES: tuple[tuple[str, str], ...] = (("qry", "qry_image_path"), ("pos_text", "pos_image_path"),
                                           ("neg_text", "neg_image_path"))
#: How a report names rows whose image had no placeholder (``add_image_placeholders``).
PLACEHOLDER_ADDED = (f"an image without a {IMAGE_PLACEHOLDER} placeholder in its text: added one in front, as "
                     "VLM2Vec's readers do")


def _with_placeholder(text: Any, image: Any) -> Any:
    """``text`` with ``<|image_1|>`` in front when ``image`` is set and the text names no image placeholder at all
    (VLM2Vec's readers prepend the image token the same way); anything else unchanged."""
    if not (isinstance(image, str) and image) or not (text is None or isinstance(text, str)):
        return text
    text = text or ""
    if "<|image_" in text:
        return text  # has a placeholder (or a wrong one, which validation reports)
    return f"{IMAGE_PLACEHOLDER} {text.strip()}" if text.strip() else IMAGE_PLACEHOLDER


def add_image_placeholders(record: Any, kind: str) -> tuple[Any, list[str]]:
    """A train (``kind="train"``) or eval record where every input with an image and no placeholder in its text
    gets ``<|image_1|>`` in front, as VLM2Vec reads MMEB (e.g. MMEB-train's VisDial rows: ``neg_text: ""`` with
    ``neg_image_path`` set). Returns the record (a new dict when changed) and the text fields changed."""
    if not isinstance(record, dict):
        return record, []
    changed: dict[str, Any] = {}
    if kind == "train":
        for text_field, image_field in TRAIN_SIDES:
            new = _with_placeholder(record.get(text_field), record.get(image_field))
            if new != record.get(text_field):
                changed[text_field] = new
    else:
        new = _with_placeholder(record.get("qry_text"), record.get("qry_img_path"))
        if new != record.get("qry_text"):
            changed["qry_text"] = new
        texts, paths = record.get("tgt_text"), record.get("tgt_img_path")
        if isinstance(texts, list | tuple) and isinstance(paths, list | tuple) and len(texts) == len(paths):
            fixed = [_with_placeholder(t, p) for t, p in zip(texts, paths, strict=True)]
            if fixed != list(texts):
                changed["tgt_text"] = fixed
    if not changed:
        return record, []
    return {**record, **changed}, list(changed)


def resolve_image(path: str, image_root: str | Path | None) -> Path | None:
    """'' -> None; a relative path is joined to `image_root` (absolute paths are kept)."""
    if not path:
        return None
    p = Path(path)
    if p.is_absolute() or image_root is None:
        return p
    return Path(image_root) / p


def _input(text: str, image: str, image_root: str | Path | None) -> EmbedInput:
    return EmbedInput(text=text or None, image=resolve_image(image, image_root))


@dataclass(frozen=True)
class TrainRow:
    """One MMEB training pair (query, positive) with an optional explicit hard negative."""

    qry: str
    qry_image_path: str = ""
    pos_text: str = ""
    pos_image_path: str = ""
    neg_text: str = ""
    neg_image_path: str = ""

    @property
    def has_negative(self) -> bool:
        return bool(self.neg_text or self.neg_image_path)

    def query_input(self, image_root: str | Path | None = None) -> EmbedInput:
        return _input(self.qry, self.qry_image_path, image_root)

    def positive_input(self, image_root: str | Path | None = None) -> EmbedInput:
        return _input(self.pos_text, self.pos_image_path, image_root)

    def negative_input(self, image_root: str | Path | None = None) -> EmbedInput | None:
        """The hard negative, or None when the row has none."""
        return _input(self.neg_text, self.neg_image_path, image_root) if self.has_negative else None

    def to_record(self) -> dict[str, str]:
        return {name: getattr(self, name) for name in TRAIN_FIELDS}

    @classmethod
    def from_record(cls, record: dict[str, Any]) -> TrainRow:
        """Build from a validated record; missing optional fields and None become ''; an image without a placeholder
        gets one (``add_image_placeholders``)."""
        record, _ = add_image_placeholders(record, "train")
        return cls(**{name: record.get(name) or "" for name in TRAIN_FIELDS})


@dataclass(frozen=True)
class EvalRow:
    """One MMEB eval query with its candidates; candidate 0 is the positive."""

    qry_text: str
    qry_img_path: str = ""
    tgt_text: tuple[str, ...] = field(default_factory=tuple)
    tgt_img_path: tuple[str, ...] = field(default_factory=tuple)

    def __post_init__(self) -> None:
        # Tuples keep the frozen row hashable and safe to share; lists are accepted on input.
        object.__setattr__(self, "tgt_text", tuple(self.tgt_text))
        object.__setattr__(self, "tgt_img_path", tuple(self.tgt_img_path))

    @property
    def num_candidates(self) -> int:
        return len(self.tgt_text)

    def query_input(self, image_root: str | Path | None = None) -> EmbedInput:
        return _input(self.qry_text, self.qry_img_path, image_root)

    def candidate_input(self, index: int, image_root: str | Path | None = None) -> EmbedInput:
        return _input(self.tgt_text[index], self.tgt_img_path[index], image_root)

    def target_inputs(self, image_root: str | Path | None = None) -> list[EmbedInput]:
        """All candidates in file order; index 0 is the positive."""
        return [self.candidate_input(i, image_root) for i in range(self.num_candidates)]

    def positive_input(self, image_root: str | Path | None = None) -> EmbedInput:
        return self.candidate_input(0, image_root)

    def to_record(self) -> dict[str, Any]:
        return {
            "qry_text": self.qry_text,
            "qry_img_path": self.qry_img_path,
            "tgt_text": list(self.tgt_text),
            "tgt_img_path": list(self.tgt_img_path),
        }

    @classmethod
    def from_record(cls, record: dict[str, Any]) -> EvalRow:
        """Build from a validated record (`qry_inst`/`tgt_inst` merged in); None image paths become ''."""
        record, _ = add_image_placeholders(merge_instructions(record), "eval")
        return cls(
            qry_text=record.get("qry_text") or "",
            qry_img_path=record.get("qry_img_path") or "",
            tgt_text=tuple(t or "" for t in record["tgt_text"]),
            tgt_img_path=tuple(p or "" for p in record["tgt_img_path"]),
        )

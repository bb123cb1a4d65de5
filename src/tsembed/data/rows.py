"""MMEB train and eval rows as typed records, and their conversion to model inputs.

Field names are MMEB's exactly (`qry`, `pos_text`, `tgt_img_path`, ...): rows are read and written by
name, never by position. Image paths stay as written in the file (relative to an image root); they
are resolved only when a row becomes an `EmbedInput`.
"""

from __future__ import annotations

from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from tsembed.data.inputs import EmbedInput

TRAIN_FIELDS: tuple[str, ...] = ("qry", "qry_image_path", "pos_text", "pos_image_path", "neg_text", "neg_image_path")
TRAIN_REQUIRED: tuple[str, ...] = TRAIN_FIELDS[:4]
EVAL_FIELDS: tuple[str, ...] = ("qry_text", "qry_img_path", "tgt_text", "tgt_img_path")
EVAL_REQUIRED: tuple[str, ...] = EVAL_FIELDS


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
        """Build from a validated record; missing optional fields and None become ''."""
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
        """Build from a validated record; None image paths become ''."""
        return cls(
            qry_text=record.get("qry_text") or "",
            qry_img_path=record.get("qry_img_path") or "",
            tgt_text=tuple(t or "" for t in record["tgt_text"]),
            tgt_img_path=tuple(p or "" for p in record["tgt_img_path"]),
        )

"""Validation findings: each names file, row, field and value; a report turns them into one error."""

from __future__ import annotations

import logging
from dataclasses import dataclass, field
from typing import Any

from tsembed.errors import DataError

logger = logging.getLogger(__name__)

#: How to drop bad rows, per reader: each names only flags its command has.
TRAIN_SKIP_HINT = "pass --set data.skip_invalid=true to `tsembed train` (skip_invalid=True in Python)"
EVAL_SKIP_HINT = "pass --skip-invalid to `tsembed eval` (skip_invalid=True in Python)"
VALIDATE_SKIP_HINT = "pass --skip-invalid to see which rows would be dropped"
SKIP_HINT = "pass skip_invalid=True"
#: How many problems an error message lists before it only counts the rest.
MAX_LISTED = 50


def _short(value: Any, limit: int = 80) -> str:
    text = repr(value)
    return text if len(text) <= limit else text[: limit - 4] + "...'"


def lone_surrogate(text: str) -> str | None:
    """Why ``text`` is not valid Unicode, or None: a lone UTF-16 surrogate (what JSON's ``"\\ud800"`` escape
    decodes to) passes every ``isinstance(str)`` check and then crashes the tokenizer with a bare TypeError."""
    try:
        text.encode("utf-8")
    except UnicodeEncodeError as exc:
        return (f"holds a lone surrogate U+{ord(text[exc.start]):04X} at character {exc.start}, which is not valid "
                "Unicode (a broken \\uXXXX escape?); fix the text or drop the row")
    return None


@dataclass(frozen=True)
class Problem:
    """One thing wrong with one row (row numbers are 1-based; in jsonl they are line numbers)."""

    file: str
    row: int | None
    field: str | None
    value: Any
    message: str

    def __str__(self) -> str:
        where = self.file if self.row is None else f"{self.file} row {self.row}"
        if self.field is None:
            return f"{where}: {self.message}"
        return f"{where}: `{self.field}` {_short(self.value)} {self.message}"


@dataclass
class ValidationReport:
    """Outcome of checking one file: what was read, what was wrong, what was kept.

    Attributes:
        file: The file checked, as given.
        kind: "train" or "eval".
        num_rows: Rows read (including bad ones).
        problems: Every problem found, in row order.
        kept: 0-based indices of the rows that passed (all rows when nothing was wrong).
        image_root: Root the image paths were resolved against.
        notes: Rows read as VLM2Vec reads them rather than refused (a placeholder added, a repeated positive kept
            under the vlm2vec tie rule): what was done -> how many kept rows.
    """

    file: str
    kind: str
    num_rows: int
    problems: list[Problem] = field(default_factory=list)
    kept: list[int] = field(default_factory=list)
    image_root: str | None = None
    hints: list[str] = field(default_factory=list)
    notes: dict[str, int] = field(default_factory=dict)

    @property
    def ok(self) -> bool:
        return not self.problems

    @property
    def num_skipped(self) -> int:
        return self.num_rows - len(self.kept)

    @property
    def bad_rows(self) -> list[int]:
        """1-based row numbers with at least one problem."""
        return sorted({p.row for p in self.problems if p.row is not None})

    def note_lines(self) -> list[str]:
        return [f"note: {count} row(s) with {what}" for what, count in self.notes.items()]

    def log_notes(self) -> None:
        """Rows read as VLM2Vec reads them are said so in the log, once per file and kind of change."""
        for what, count in self.notes.items():
            logger.info("%s: %d of %d rows with %s", self.file, count, self.num_rows, what)

    def summary(self) -> str:
        if self.ok:
            return f"{self.file}: {self.num_rows} {self.kind} rows, all valid"
        return (
            f"{self.file}: {len(self.problems)} problem(s) in {len(self.bad_rows)} of {self.num_rows} "
            f"{self.kind} rows (image root '{self.image_root}')"
        )

    def describe(self, limit: int = MAX_LISTED) -> str:
        """Summary line plus the first `limit` problems, one per line."""
        lines = [self.summary(), *(f"hint: {h}" for h in self.hints), *self.note_lines()]
        lines += [f"  {p}" for p in self.problems[:limit]]
        if len(self.problems) > limit:
            lines.append(f"  ... and {len(self.problems) - limit} more problem(s)")
        return "\n".join(lines)

    def raise_if_problems(self, skip_hint: str = SKIP_HINT) -> None:
        """Raise one DataError listing the problems (capped at MAX_LISTED).

        Args:
            skip_hint: How the caller's user drops bad rows (a flag the command really has).
        """
        if not self.ok:
            raise DataError(self.describe() + f"\n(fix the rows, or {skip_hint} to drop them with a report)")

    def log_skipped(self) -> None:
        """Skipped rows are always reported, never silent."""
        if self.num_skipped:
            logger.warning(
                "skipped %d of %d rows of %s:\n%s", self.num_skipped, self.num_rows, self.file, self.describe(limit=10)
            )

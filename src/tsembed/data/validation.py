"""Check MMEB records before a run starts and report every problem at once.

Structural checks (fields, types, empty text, candidate lists, `<|image_1|>` placeholders, image paths
that stay under the image root) run per record; image checks run afterwards over the distinct paths, so
a suite with 40k candidate references to a few hundred images opens each image once.

Eval rows get the checks scoring needs too, so `tsembed data validate` rejects exactly the rows `eval`
rejects. MMEB files say which candidate is the positive only by position (the first), so a list written
in another order cannot be detected in general. What can be checked is checked, per row:

* an explicit label, when the row carries one: an integer ``pos_index`` / ``positive_index`` /
  ``label`` / ``tgt_label`` must be 0; a string ``label`` / ``tgt_label`` that equals the text of
  candidate j must have j = 0 (a string matching no candidate, e.g. a bare class name beside
  instruction-wrapped candidates, says nothing and is accepted);
* candidate 0 must not repeat another candidate (same text and image path): the positive would tie
  with a distractor, and a file built with a shuffled list often shows exactly this. Under the ``vlm2vec`` tie rule
  (VLM2Vec's ``argmax``: the tie goes to the positive) such a row is kept, and counted in the report's notes;
* candidate 0 must not be empty ("neither text nor image").

An input with an image but no ``<|image_1|>`` in its text (MMEB-train's VisDial negatives: ``neg_text: ""``
with ``neg_image_path`` set) is read as VLM2Vec reads it: the placeholder is added in front
(``tsembed.data.rows.add_image_placeholders``), and the report counts the rows in its notes.

These label fields, and MMEB-V2's separate instructions `qry_inst`/`tgt_inst` (merged into the texts before any
check, see `tsembed.data.rows.merge_instructions`), are the only extra fields an eval row may carry.
"""

from __future__ import annotations

import difflib
import posixpath
import re
from collections.abc import Sequence
from dataclasses import replace
from pathlib import Path
from typing import Any, Literal

from tsembed.data.formats import RawRecord
from tsembed.data.images import ImageChecker
from tsembed.data.problems import Problem, ValidationReport, lone_surrogate
from tsembed.data.rows import (
    EVAL_FIELDS,
    EVAL_REQUIRED,
    INSTRUCTION_FIELDS,
    PLACEHOLDER_ADDED,
    TRAIN_FIELDS,
    TRAIN_REQUIRED,
    add_image_placeholders,
    merge_instructions,
)
from tsembed.errors import DataError
from tsembed.inputs import IMAGE_PLACEHOLDER

Kind = Literal["train", "eval"]
_ANY_PLACEHOLDER = re.compile(r"<\|image_(\d+)\|>")
# A path to check: (record index, field label, path).
_ImageRef = tuple[int, str, str]
LABEL_FIELDS: tuple[str, ...] = ("pos_index", "positive_index", "label", "tgt_label")
#: How a report names the rows kept under the vlm2vec tie rule although the positive is repeated.
REPEATED_POSITIVE = "the positive repeated among the candidates: kept, the tie goes to the positive (vlm2vec tie rule)"
_REORDER = "the MMEB protocol scores candidate 0 as the positive; put the positive first in `tgt_text`/`tgt_img_path`"


def outside_root(path: str) -> str | None:
    """Why an image path leaves the image root (absolute, or climbing out with '..'), or None.

    A data file names images relative to its root; one that reaches elsewhere (``/etc/…``, ``../../x``)
    is a broken or hostile file, and runs on another machine would not find it anyway.
    """
    if path.startswith(("/", "\\")) or Path(path).is_absolute() or re.match(r"^[A-Za-z]:", path):
        return "is an absolute path; image paths must be relative to the image root"
    parts = posixpath.normpath(path.replace("\\", "/")).split("/")
    if parts[0] == "..":
        return "leaves the image root through '..'; image paths must stay under the image root"
    return None


def infer_kind(records: Sequence[RawRecord], file: str) -> Kind:
    """'train' if the first record has `qry`, 'eval' if it has `qry_text`."""
    for rec in records:
        if isinstance(rec.value, dict):
            if "qry" in rec.value:
                return "train"
            if "qry_text" in rec.value:
                return "eval"
            raise DataError(
                f"{file} row {rec.row}: cannot tell train from eval rows: no `qry` (train) or "
                f"`qry_text` (eval) field among {sorted(rec.value)}; pass kind='train'|'eval'"
            )
    raise DataError(f"{file}: no records to tell train from eval rows; pass kind='train'|'eval'")


class _RecordChecker:
    """Collects the problems of one record; keeps the per-field checks short and uniform."""

    def __init__(self, rec: RawRecord, index: int, refs: list[_ImageRef], allow_repeated_positive: bool = False
                 ) -> None:
        self.rec, self.index, self.refs = rec, index, refs
        self.allow_repeated_positive = allow_repeated_positive
        self.problems: list[Problem] = []
        self.notes: list[str] = []

    def add_placeholders(self, kind: str) -> None:
        """Read an image without a placeholder as VLM2Vec does (one added in front), noting it."""
        value, changed = add_image_placeholders(self.rec.value, kind)
        if changed:
            self.rec = replace(self.rec, value=value)
            self.notes.append(PLACEHOLDER_ADDED)

    def add(self, field: str | None, value: Any, message: str) -> None:
        self.problems.append(Problem(self.rec.file, self.rec.row, field, value, message))

    def fields(self, allowed: tuple[str, ...], required: tuple[str, ...], strict: bool) -> bool:
        if not isinstance(self.rec.value, dict):
            self.add(
                None, None, f"expected a JSON object with fields {list(allowed)}, got {type(self.rec.value).__name__}"
            )
            return False
        for name in required:
            if name not in self.rec.value:
                self.add(name, None, "is missing")
        if strict:
            for name in self.rec.value:
                if name not in allowed:
                    close = difflib.get_close_matches(name, allowed, n=1)
                    hint = f" (did you mean `{close[0]}`?)" if close else f"; allowed: {list(allowed)}"
                    self.add(name, self.rec.value[name], f"is an unknown field{hint}")
        return True

    def text(self, name: str) -> str | None:
        """The field as a string ('' for None/missing), or None after reporting a wrong type."""
        value = self.rec.value.get(name)
        if value is None:
            return ""
        if not isinstance(value, str):
            self.add(name, value, f"must be a string, got {type(value).__name__}")
            return None
        broken = lone_surrogate(value)
        if broken:
            self.add(name, value, broken)
            return None
        return value

    def str_list(self, name: str) -> list[str] | None:
        value = self.rec.value.get(name)
        if value is None:
            return None  # reported as missing already
        if not isinstance(value, list | tuple):
            self.add(name, value, f"must be a list of strings, got {type(value).__name__}")
            return None
        bad = [i for i, v in enumerate(value) if v is not None and not isinstance(v, str)]
        if bad:
            self.add(f"{name}[{bad[0]}]", value[bad[0]], f"must be a string, got {type(value[bad[0]]).__name__}")
            return None
        for i, v in enumerate(value):
            broken = lone_surrogate(v) if v else None
            if broken:
                self.add(f"{name}[{i}]", v, broken)
                return None
        return [v or "" for v in value]

    def side(
        self, text_field: str, text: str | None, image_field: str, image: str | None, what: str, optional: bool = False
    ) -> None:
        """One input (text + image): not empty, placeholder count matches, image path recorded."""
        if text is None or image is None:
            return
        if not text.strip() and not image:
            if not optional:
                self.add(text_field, text, f"is empty: the {what} has neither text nor image")
            return
        count = text.count(IMAGE_PLACEHOLDER)
        others = sorted({m.group(0) for m in _ANY_PLACEHOLDER.finditer(text)} - {IMAGE_PLACEHOLDER})
        if others:
            self.add(
                text_field,
                text,
                f"contains unsupported placeholder(s) {others}; MMEB rows have one image, marked {IMAGE_PLACEHOLDER}",
            )
        if image and count != 1:
            self.add(
                text_field,
                text,
                f"has an image (`{image_field}`={image!r}) but contains {count} "
                f"{IMAGE_PLACEHOLDER} placeholder(s); expected exactly 1",
            )
        elif not image and count:
            self.add(
                text_field, text, f"contains {count} {IMAGE_PLACEHOLDER} placeholder(s) but `{image_field}` is empty"
            )
        if image and (reason := outside_root(image)) is not None:
            self.add(image_field, image, reason)
        elif image:
            self.refs.append((self.index, image_field, image))


def _check_train(c: _RecordChecker, strict: bool) -> None:
    if not c.fields(TRAIN_FIELDS, TRAIN_REQUIRED, strict):
        return
    c.add_placeholders("train")
    t = {name: c.text(name) for name in TRAIN_FIELDS}
    c.side("qry", t["qry"], "qry_image_path", t["qry_image_path"], "query")
    c.side("pos_text", t["pos_text"], "pos_image_path", t["pos_image_path"], "positive")
    c.side("neg_text", t["neg_text"], "neg_image_path", t["neg_image_path"], "negative", optional=True)


def _check_eval(c: _RecordChecker, strict: bool) -> None:
    if not c.fields(EVAL_FIELDS + LABEL_FIELDS + INSTRUCTION_FIELDS, EVAL_REQUIRED, strict):
        return
    if any(c.text(name) is None for name in INSTRUCTION_FIELDS if name in c.rec.value):
        return
    c.rec = replace(c.rec, value=merge_instructions(c.rec.value))  # checks run on the texts the model will see
    c.add_placeholders("eval")
    value = c.rec.value
    for name in LABEL_FIELDS:
        if name in value:
            _check_label(c, name, value[name])
    qry_text, qry_img = c.text("qry_text"), c.text("qry_img_path")
    c.side("qry_text", qry_text, "qry_img_path", qry_img, "query")
    texts, paths = c.str_list("tgt_text"), c.str_list("tgt_img_path")
    if texts is None or paths is None:
        return
    if not texts and not paths:
        c.add("tgt_text", texts, "is empty: an eval row needs at least one candidate (the positive)")
        return
    if len(texts) != len(paths):
        c.add(
            "tgt_img_path",
            f"<{len(paths)} items>",
            f"has {len(paths)} entries but `tgt_text` has {len(texts)}; candidate lists must align",
        )
        return
    for i, (text, path) in enumerate(zip(texts, paths, strict=True)):
        c.side(f"tgt_text[{i}]", text, f"tgt_img_path[{i}]", path, f"candidate {i}")
    first = (texts[0], paths[0])
    if first != ("", "") and first in zip(texts[1:], paths[1:], strict=True):
        if c.allow_repeated_positive:
            c.notes.append(REPEATED_POSITIVE)
            return
        j = 1 + list(zip(texts[1:], paths[1:], strict=True)).index(first)
        c.add("tgt_text[0]", texts[0], f"(the positive, image {paths[0]!r}) is repeated as candidate {j}: it would "
              f"tie with a distractor; {_REORDER}, once, or score ties as VLM2Vec does (tie_rule='vlm2vec', "
              "--tie-rule vlm2vec), which keeps the row")


def _check_label(c: _RecordChecker, name: str, value: object) -> None:
    """An explicit label must point at candidate 0 (see the module docstring)."""
    texts = c.rec.value.get("tgt_text")
    if isinstance(value, bool):
        c.add(name, value, "must be an integer index or a label text, got a boolean")
    elif isinstance(value, int) and value != 0:
        c.add(name, value, f"says the positive is candidate {value}; {_REORDER}")
    elif isinstance(value, str) and isinstance(texts, list) and value in texts and texts[0] != value:
        c.add(name, value, f"matches candidate {texts.index(value)}, not candidate 0; {_REORDER}")


def _missing_columns(records: Sequence[RawRecord], required: tuple[str, ...]) -> list[str]:
    """One line per required column that no record of a file has (a wrong file or an old export, not a bad row)."""
    by_file: dict[str, list[dict]] = {}
    for rec in records:
        if isinstance(rec.value, dict):
            by_file.setdefault(rec.file, []).append(rec.value)
    hints = []
    for file, values in by_file.items():
        missing = [name for name in required if all(name not in v for v in values)]
        if missing:
            hints.append(f"{file}: column(s) {missing} missing from all {len(values)} rows; "
                         f"its columns are {sorted(set().union(*values))}")
    return hints


def validate_records(
    records: Sequence[RawRecord],
    kind: Kind,
    *,
    file: str,
    image_root: str | Path | None,
    check_images: bool = True,
    strict_fields: bool = True,
    checker: ImageChecker | None = None,
    read_problems: Sequence[Problem] = (),
    tie_rule: str = "pessimistic",
) -> ValidationReport:
    """Check every record and return a report listing all problems (nothing is raised here).

    Args:
        records: Records as read by `read_records`.
        kind: "train" or "eval".
        file: Name used in the report.
        image_root: Root for relative image paths.
        check_images: Open each distinct image (header + verify).
        strict_fields: Unknown fields are problems (a typo such as `qry_image` would otherwise be ignored).
        checker: Reuse an `ImageChecker` (and its cache) across files.
        read_problems: Problems met while decoding the file (e.g. invalid JSON lines), merged in row order.
        tie_rule: How eval rows will be scored (``tsembed.evaluation.metrics``): under "vlm2vec" a repeated positive
            is kept (noted), under "pessimistic" it is a problem.
    """
    if kind not in ("train", "eval"):
        raise DataError(f"kind must be 'train' or 'eval', got {kind!r}")
    check = _check_train if kind == "train" else _check_eval
    refs: list[_ImageRef] = []
    per_record: list[list[Problem]] = []
    notes: dict[str, int] = {}
    for index, rec in enumerate(records):
        c = _RecordChecker(rec, index, refs, allow_repeated_positive=tie_rule == "vlm2vec")
        check(c, strict_fields)
        per_record.append(c.problems)
        if not c.problems:
            for note in dict.fromkeys(c.notes):
                notes[note] = notes.get(note, 0) + 1
    hints = []
    if check_images and refs:
        checker = checker or ImageChecker(image_root)
        status = checker.check_many(path for _, _, path in refs)
        for index, field, path in refs:
            if status[path] is not None:
                rec = records[index]
                per_record[index].append(Problem(rec.file, rec.row, field, path, status[path]))
        if len(status) > 1 and all(s is not None and s.startswith("not found") for s in status.values()):
            inner = Path(image_root or ".") / "images"
            hints.append(
                f"none of the {len(status)} images was found under image root '{image_root}'; is the image root right?"
                + (f" (it has an images/ folder: try '{inner}')" if inner.is_dir() else "")
            )
    hints += _missing_columns(records, TRAIN_REQUIRED if kind == "train" else EVAL_REQUIRED)
    problems = sorted([*read_problems, *(p for ps in per_record for p in ps)], key=lambda p: (p.file, p.row or 0))
    kept = [i for i, ps in enumerate(per_record) if not ps]
    return ValidationReport(
        file=file,
        kind=kind,
        num_rows=len(records) + len(read_problems),
        problems=problems,
        kept=kept,
        hints=hints,
        image_root=None if image_root is None else str(image_root),
        notes=notes,
    )

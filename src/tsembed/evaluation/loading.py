"""Read an eval file for scoring: the data package's validation plus checks that candidate 0 is the positive.

MMEB files say which candidate is the positive only by position (the first), so a list written in
another order cannot be detected in general. What can be checked is checked, per row:

* an explicit label, when the row carries one: an integer ``pos_index`` / ``positive_index`` /
  ``label`` / ``tgt_label`` must be 0; a string ``label`` / ``tgt_label`` that equals the text of
  candidate j must have j = 0 (a string matching no candidate, e.g. a bare class name beside
  instruction-wrapped candidates, says nothing and is accepted);
* candidate 0 must not repeat another candidate (same text and image path): the positive would tie
  with a distractor, and a file built with a shuffled list often shows exactly this;
* candidate 0 must not be empty (the data validator reports "neither text nor image").

These label fields are the only extra fields accepted; any other unknown field is still an error, so a
typo such as ``qry_img`` is not silently ignored. A failing row is an error naming file, row and field,
or, with ``skip_invalid``, is dropped and counted in the report like every other bad row.
"""

from __future__ import annotations

from dataclasses import dataclass, replace

from tsembed.data.formats import RawRecord, read_records
from tsembed.data.images import ImageChecker
from tsembed.data.problems import Problem, ValidationReport
from tsembed.data.rows import EvalRow
from tsembed.data.validation import validate_records
from tsembed.evaluation.sources import EvalSet

LABEL_FIELDS: tuple[str, ...] = ("pos_index", "positive_index", "label", "tgt_label")
_REORDER = "the MMEB protocol scores candidate 0 as the positive; put the positive first in `tgt_text`/`tgt_img_path`"


@dataclass
class LoadedEvalSet:
    """The valid rows of one eval set and the report of what was dropped or wrong."""

    spec: EvalSet
    rows: list[EvalRow]
    report: ValidationReport


def _label_problem(rec: RawRecord, field: str, value: object) -> Problem | None:
    texts = rec.value.get("tgt_text")
    if isinstance(value, bool):
        return Problem(rec.file, rec.row, field, value, "must be an integer index or a label text, got a boolean")
    if isinstance(value, int):
        if value != 0:
            return Problem(rec.file, rec.row, field, value, f"says the positive is candidate {value}; {_REORDER}")
        return None
    if isinstance(value, str) and isinstance(texts, list) and value in texts and texts[0] != value:
        j = texts.index(value)
        return Problem(rec.file, rec.row, field, value, f"matches candidate {j}, not candidate 0; {_REORDER}")
    return None


def _positive_problems(rec: RawRecord) -> list[Problem]:
    """Checks of this module that the data validator does not make (see the module docstring)."""
    value = rec.value
    if not isinstance(value, dict):
        return []
    problems = [p for f in LABEL_FIELDS if f in value and (p := _label_problem(rec, f, value[f])) is not None]
    texts, paths = value.get("tgt_text"), value.get("tgt_img_path")
    if isinstance(texts, list) and isinstance(paths, list) and len(texts) == len(paths) and texts:
        first = (texts[0] or "", paths[0] or "")
        if first != ("", ""):
            for j in range(1, len(texts)):
                if (texts[j] or "", paths[j] or "") == first:
                    problems.append(
                        Problem(
                            rec.file,
                            rec.row,
                            "tgt_text[0]",
                            texts[0],
                            f"(the positive, image {paths[0]!r}) is repeated as candidate {j}: it would tie with a "
                            f"distractor; {_REORDER}, once",
                        )
                    )
                    break
    return problems


def load_eval_set(
    spec: EvalSet, *, skip_invalid: bool = False, check_images: bool = True, checker: ImageChecker | None = None
) -> LoadedEvalSet:
    """Read and check every row of ``spec``; raise on the first bad file unless ``skip_invalid``.

    Raises:
        DataError: A row is malformed and ``skip_invalid`` is False; the message lists file, row and field
            of every problem (capped).
    """
    records, read_problems = read_records(spec.path)
    extra = {i: _positive_problems(rec) for i, rec in enumerate(records)}
    stripped = [
        replace(r, value={k: v for k, v in r.value.items() if k not in LABEL_FIELDS})
        if isinstance(r.value, dict)
        else r
        for r in records
    ]
    report = validate_records(
        stripped,
        "eval",
        file=str(spec.path),
        image_root=spec.image_root,
        check_images=check_images,
        strict_fields=True,
        checker=checker,
        read_problems=read_problems,
    )
    added = [p for ps in extra.values() for p in ps]
    if added:
        report.problems = sorted([*report.problems, *added], key=lambda p: (p.file, p.row or 0))
        report.kept = [i for i in report.kept if not extra[i]]
    if skip_invalid:
        report.log_skipped()
    else:
        report.raise_if_problems()
    rows = [EvalRow.from_record(stripped[i].value) for i in report.kept]
    return LoadedEvalSet(spec, rows, report)

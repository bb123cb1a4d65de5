"""Read an eval file for scoring: the data package's validation, which for eval rows also checks that
candidate 0 can be the positive (explicit labels, a repeated positive; see ``tsembed.data.validation``),
so ``tsembed data validate`` rejects exactly the rows scoring would. A failing row is an error naming
file, row and field, or, with ``skip_invalid``, is dropped and counted in the report like every other bad row.
"""

from __future__ import annotations

from dataclasses import dataclass

from tsembed.data.formats import read_records
from tsembed.data.images import ImageChecker
from tsembed.data.problems import EVAL_SKIP_HINT, ValidationReport
from tsembed.data.rows import EvalRow
from tsembed.data.validation import LABEL_FIELDS, validate_records
from tsembed.evaluation.sources import EvalSet

__all__ = ["LABEL_FIELDS", "LoadedEvalSet", "load_eval_set"]  # LABEL_FIELDS: its old home


@dataclass
class LoadedEvalSet:
    """The valid rows of one eval set and the report of what was dropped or wrong."""

    spec: EvalSet
    rows: list[EvalRow]
    report: ValidationReport


def load_eval_set(
    spec: EvalSet, *, skip_invalid: bool = False, check_images: bool = True, checker: ImageChecker | None = None,
    tie_rule: str = "pessimistic",
) -> LoadedEvalSet:
    """Read and check every row of ``spec``; raise on the first bad file unless ``skip_invalid``. ``tie_rule``:
    how the rows will be scored ("vlm2vec" keeps a row whose positive is repeated; see ``validate_records``).

    Raises:
        DataError: A row is malformed and ``skip_invalid`` is False; the message lists file, row and field
            of every problem (capped).
    """
    records, read_problems = read_records(spec.path)
    report = validate_records(
        records,
        "eval",
        file=str(spec.path),
        image_root=spec.image_root,
        check_images=check_images,
        strict_fields=True,
        checker=checker,
        read_problems=read_problems,
        tie_rule=tie_rule,
    )
    if skip_invalid:
        report.log_skipped()
    else:
        report.raise_if_problems(EVAL_SKIP_HINT)
    report.log_notes()
    rows = [EvalRow.from_record(records[i].value) for i in report.kept]  # label fields are not read
    return LoadedEvalSet(spec, rows, report)

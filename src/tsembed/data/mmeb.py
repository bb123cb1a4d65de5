"""Read, validate and write MMEB train/eval files (jsonl or parquet) as typed rows.

>>> split = read_train("train.jsonl", image_root="data")           # raises one DataError listing all problems
>>> split = read_eval("eval.parquet", "data", skip_invalid=True)   # drops bad rows; split.report says which
>>> split.rows[0].query_input(split.image_root)                    # EmbedInput(text=..., image=Path(...))
"""

from __future__ import annotations

from collections.abc import Iterable, Iterator, Mapping
from dataclasses import dataclass
from pathlib import Path
from typing import Any, Generic, TypeVar

from tsembed.data.formats import read_records, write_records
from tsembed.data.images import ImageChecker
from tsembed.data.problems import EVAL_SKIP_HINT, TRAIN_SKIP_HINT, ValidationReport
from tsembed.data.rows import TRAIN_FIELDS, EvalRow, TrainRow
from tsembed.data.validation import Kind, infer_kind, validate_records

RowT = TypeVar("RowT", TrainRow, EvalRow)


@dataclass
class MMEBSplit(Generic[RowT]):
    """The valid rows of one file, the image root they refer to, and the validation report."""

    path: Path
    kind: Kind
    image_root: Path
    rows: list[RowT]
    report: ValidationReport

    def __len__(self) -> int:
        return len(self.rows)

    def __iter__(self) -> Iterator[RowT]:
        return iter(self.rows)

    def __getitem__(self, index: int) -> RowT:
        return self.rows[index]


def default_image_root(path: Path, image_root: str | Path | None) -> Path:
    """`image_root` if given; else the suite root when the file sits in a built suite; else its directory."""
    if image_root is not None:
        return Path(image_root)
    start = path if path.is_dir() else path.parent
    for candidate in (start, start.parent):
        if (candidate / "suite.json").is_file():
            return candidate
    return start


def validate_file(
    path: str | Path,
    image_root: str | Path | None = None,
    kind: Kind | None = None,
    *,
    check_images: bool = True,
    strict_fields: bool = True,
    checker: ImageChecker | None = None,
    tie_rule: str = "pessimistic",
) -> ValidationReport:
    """Check a file without raising: the report lists every problem (file, row, field, value).

    Args:
        path: A .jsonl/.json/.parquet file or a directory of them.
        image_root: Root for relative image paths; default: the enclosing suite's root if the file is
            inside a built suite, else the file's directory.
        kind: "train" or "eval"; inferred from the first record's fields when None.
        check_images: Open every distinct image once (existence, header, verify).
        strict_fields: Unknown fields are problems.
        checker: Share an `ImageChecker` (and its cache) between files.
        tie_rule: How eval rows will be scored: "vlm2vec" keeps rows that repeat their positive (see
            `tsembed.data.validation`).
    """
    report, _ = _load(Path(path), image_root, kind, check_images, strict_fields, checker, tie_rule)
    return report


def validate_layout(
    root: str | Path,
    image_root: str | Path | None = None,
    kind: Kind | None = None,
    *,
    check_images: bool = True,
    strict_fields: bool = True,
    tie_rule: str = "pessimistic",
) -> list[ValidationReport]:
    """Check MMEB as cloned from the Hub (a folder per dataset, see `tsembed.data.mmeb_layout`): one report per
    dataset folder and split it holds (``test``; ``original``, ``diverse_instruction``), in name order. Image paths
    resolve against ``image_root``, by default the clone itself, as `tsembed eval` and training resolve them."""
    from tsembed.data.mmeb_layout import split_names, split_path

    root = Path(root)
    checker = ImageChecker(Path(image_root) if image_root is not None else root) if check_images else None
    reports = []
    for folder in sorted(p for p in root.iterdir() if p.is_dir() and not p.name.startswith(".")):
        for split in split_names(folder):
            path = split_path(folder, split)
            if path is not None:
                reports.append(validate_file(path, image_root or root, kind, check_images=check_images,
                                             strict_fields=strict_fields, checker=checker, tie_rule=tie_rule))
    return reports


def _load(
    path: Path,
    image_root: str | Path | None,
    kind: Kind | None,
    check_images: bool,
    strict_fields: bool,
    checker: ImageChecker | None,
    tie_rule: str = "pessimistic",
) -> tuple[ValidationReport, list[Any]]:
    records, read_problems = read_records(path)
    kind = kind or infer_kind(records, str(path))
    report = validate_records(
        records,
        kind,
        file=str(path),
        image_root=default_image_root(path, image_root),
        check_images=check_images,
        strict_fields=strict_fields,
        checker=checker,
        read_problems=read_problems,
        tie_rule=tie_rule,
    )
    return report, [records[i].value for i in report.kept]


def _read(
    path: str | Path,
    image_root: str | Path | None,
    kind: Kind,
    skip_invalid: bool,
    check_images: bool,
    strict_fields: bool,
    checker: ImageChecker | None,
) -> MMEBSplit:
    path = Path(path)
    report, values = _load(path, image_root, kind, check_images, strict_fields, checker)
    if skip_invalid:
        report.log_skipped()
    else:
        report.raise_if_problems(TRAIN_SKIP_HINT if kind == "train" else EVAL_SKIP_HINT)
    report.log_notes()
    row_type = TrainRow if kind == "train" else EvalRow
    rows = [row_type.from_record(v) for v in values]
    return MMEBSplit(path=path, kind=kind, image_root=default_image_root(path, image_root), rows=rows, report=report)


def read_train(
    path: str | Path,
    image_root: str | Path | None = None,
    *,
    skip_invalid: bool = False,
    check_images: bool = True,
    strict_fields: bool = True,
    checker: ImageChecker | None = None,
) -> MMEBSplit[TrainRow]:
    """Read and validate an MMEB train file (`qry`, `qry_image_path`, `pos_text`, `pos_image_path`,
    optional `neg_text`, `neg_image_path`).

    Args:
        path: A .jsonl/.json/.parquet file or a directory of shards.
        image_root: Root for relative image paths; default as in `validate_file`.
        skip_invalid: Drop bad rows (logged, counted in `split.report`) instead of raising.
        check_images: Open every distinct image once; off for a quick structural check.
        strict_fields: Unknown fields are problems.
        checker: Share an `ImageChecker` cache between files.

    Raises:
        DataError: Any problem and `skip_invalid` is False; the message lists them all (capped).
    """
    return _read(path, image_root, "train", skip_invalid, check_images, strict_fields, checker)


def read_eval(
    path: str | Path,
    image_root: str | Path | None = None,
    *,
    skip_invalid: bool = False,
    check_images: bool = True,
    strict_fields: bool = True,
    checker: ImageChecker | None = None,
) -> MMEBSplit[EvalRow]:
    """Read and validate an MMEB eval file (`qry_text`, `qry_img_path`, `tgt_text`, `tgt_img_path`;
    candidate 0 is the positive). Arguments and errors as `read_train`."""
    return _read(path, image_root, "eval", skip_invalid, check_images, strict_fields, checker)


def _train_schema() -> Any:
    import pyarrow as pa

    return pa.schema([(name, pa.string()) for name in TRAIN_FIELDS])


def _eval_schema() -> Any:
    import pyarrow as pa

    return pa.schema(
        [
            ("qry_text", pa.string()),
            ("qry_img_path", pa.string()),
            ("tgt_text", pa.list_(pa.string())),
            ("tgt_img_path", pa.list_(pa.string())),
        ]
    )


def write_train(path: str | Path, rows: Iterable[TrainRow | Mapping[str, Any]]) -> Path:
    """Write train rows atomically; `.parquet` or `.jsonl` by suffix. All six fields are written."""
    records = [(r if isinstance(r, TrainRow) else TrainRow.from_record(dict(r))).to_record() for r in rows]
    schema = _train_schema() if Path(path).suffix == ".parquet" else None
    return write_records(path, records, schema=schema)


def write_eval(path: str | Path, rows: Iterable[EvalRow | Mapping[str, Any]]) -> Path:
    """Write eval rows atomically; `.parquet` or `.jsonl` by suffix."""
    records = [(r if isinstance(r, EvalRow) else EvalRow.from_record(dict(r))).to_record() for r in rows]
    schema = _eval_schema() if Path(path).suffix == ".parquet" else None
    return write_records(path, records, schema=schema)

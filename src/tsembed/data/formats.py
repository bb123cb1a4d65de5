"""Read and write MMEB records as jsonl or parquet; writes are atomic (temp file, then rename).

Records are plain dicts keyed by MMEB field name. Reading never interprets fields: that is
validation's job, so a malformed line becomes a `Problem` with its line number instead of an
exception from deep inside a parser.
"""

from __future__ import annotations

import json
from collections.abc import Iterable, Iterator
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from tsembed.data.problems import Problem
from tsembed.errors import DataError
from tsembed.fileio import atomic_path

JSONL_SUFFIXES = (".jsonl", ".json")
PARQUET_SUFFIXES = (".parquet",)


@dataclass(frozen=True)
class RawRecord:
    """A record as read: its file, 1-based row (line number in jsonl) and the decoded value."""

    file: str
    row: int
    value: Any  # a dict when the row decoded to an object


def _files(path: Path) -> list[Path]:
    """A file, the data files of a directory, or the files a glob in the last part names (Hub shards such as
    ``test-*.parquet``), sorted by name."""
    if any(ch in path.name for ch in "*?["):
        found = sorted(p for p in path.parent.glob(path.name) if p.is_file())
        if not found:
            raise DataError(f"no data file matches '{path}'")
        return [f for p in found for f in _files(p)]
    if path.is_dir():
        found = sorted(p for p in path.iterdir() if p.suffix in JSONL_SUFFIXES + PARQUET_SUFFIXES)
        if not found:
            raise DataError(f"'{path}' is a directory without .jsonl, .json or .parquet files")
        return found
    if not path.exists():
        raise DataError(f"data file '{path}' does not exist")
    if path.suffix not in JSONL_SUFFIXES + PARQUET_SUFFIXES:
        raise DataError(f"'{path}': unsupported file type '{path.suffix}'; use .jsonl, .json or .parquet")
    return [path]


def _read_jsonl(path: Path, problems: list[Problem]) -> Iterator[RawRecord]:
    """Decode line by line so a non-UTF-8 byte is a Problem on its line, skippable like bad JSON."""
    with path.open("rb") as fh:
        first = fh.read(1)
        fh.seek(0)
        if first == b"[":  # a .json file holding one array of records
            raw = fh.read()
            try:
                data = json.loads(raw.decode("utf-8"))
            except UnicodeDecodeError as exc:
                line = raw.count(b"\n", 0, exc.start) + 1
                problems.append(_encoding_problem(path, line, raw, exc, exc.start))
                return
            except json.JSONDecodeError as exc:
                problems.append(Problem(str(path), exc.lineno, None, None, f"invalid JSON: {exc.msg}"))
                return
            for i, value in enumerate(data, start=1):
                yield RawRecord(str(path), i, value)
            return
        offset = 0  # of the current line's first byte in the file
        for lineno, raw_line in enumerate(fh, start=1):
            start, offset = offset, offset + len(raw_line)
            try:
                line = raw_line.decode("utf-8")
            except UnicodeDecodeError as exc:
                problems.append(_encoding_problem(path, lineno, raw_line, exc, start + exc.start))
                continue
            if not line.strip():
                continue
            try:
                yield RawRecord(str(path), lineno, json.loads(line))
            except json.JSONDecodeError as exc:
                problems.append(Problem(str(path), lineno, None, _clip(line), f"invalid JSON: {exc.msg}"))


def _encoding_problem(path: Path, lineno: int, raw: bytes, exc: UnicodeDecodeError, offset: int) -> Problem:
    byte = raw[exc.start]
    return Problem(str(path), lineno, None, None,
                   f"not valid UTF-8: byte 0x{byte:02x} at byte offset {offset} of the file ({exc.reason})")


def _clip(line: str) -> str:
    line = line.rstrip("\n")
    return line if len(line) <= 60 else line[:57] + "..."


def _read_parquet(path: Path, problems: list[Problem]) -> Iterator[RawRecord]:
    import pyarrow.parquet as pq

    try:
        table = pq.read_table(path)
    except Exception as exc:  # pyarrow raises several unrelated types for a corrupt file
        problems.append(Problem(str(path), None, None, None, f"cannot read parquet: {exc}"))
        return
    for i, value in enumerate(table.to_pylist(), start=1):
        yield RawRecord(str(path), i, value)


def read_records(path: str | Path) -> tuple[list[RawRecord], list[Problem]]:
    """Read every record of a jsonl/json/parquet file, a directory of them, or a glob (``<dir>/test-*.parquet``).

    Returns:
        The records, and the problems met while decoding (bad JSON lines, unreadable parquet).

    Raises:
        DataError: The path does not exist or has an unsupported type.
    """
    records: list[RawRecord] = []
    problems: list[Problem] = []
    for file in _files(Path(path)):
        reader = _read_parquet if file.suffix in PARQUET_SUFFIXES else _read_jsonl
        records.extend(reader(file, problems))
    return records, problems


def write_records(path: str | Path, records: Iterable[dict[str, Any]], schema: Any = None) -> Path:
    """Write records atomically as jsonl (one object per line) or parquet, chosen by suffix.

    Args:
        path: Target file; `.jsonl`/`.json` or `.parquet`.
        records: Dicts keyed by field name; written in order.
        schema: Optional `pyarrow.Schema` for parquet, so empty lists and all-'' columns keep their type.
    """
    path = Path(path)
    records = list(records)
    with atomic_path(path) as tmp:
        if path.suffix in PARQUET_SUFFIXES:
            import pyarrow as pa
            import pyarrow.parquet as pq

            pq.write_table(pa.Table.from_pylist(records, schema=schema), tmp)
        elif path.suffix in JSONL_SUFFIXES:
            with tmp.open("w", encoding="utf-8", newline="\n") as fh:
                for rec in records:
                    fh.write(json.dumps(rec, ensure_ascii=False) + "\n")
        else:
            raise DataError(f"'{path}': unsupported file type '{path.suffix}'; use .jsonl or .parquet")
    return path

"""``tsembed embed``: embed a corpus file into one parquet table, resumably and across ranks.

Rows are split into fixed shards. Each finished shard is written atomically under ``<out>.shards/``
with its sha256 beside it (``shard-00000.npy.sha256``, ``sha256sum -c`` format), so a rerun skips it;
under ``torchrun`` rank r takes shards r, r + world, ... . When every shard exists, rank 0 merges them
into ``<out>`` (atomically) and removes the shard folder. A manifest pins the input file, the model's
content hash (not only its path) and the settings, so shards of another run or another model are never
mixed in; a shard whose checksum or shape is wrong (truncated, garbled) is embedded again, never merged.
"""

from __future__ import annotations

import json
import logging
import os
import shutil
from collections.abc import Callable
from dataclasses import asdict, dataclass, field
from pathlib import Path
from typing import Any

import numpy as np
from torch import nn

from tsembed.data.formats import read_records
from tsembed.data.images import ImageChecker
from tsembed.data.problems import Problem, ValidationReport, lone_surrogate
from tsembed.data.rows import resolve_image
from tsembed.encoding import embed_items
from tsembed.errors import ConfigError, DataError, TsembedError
from tsembed.fileio import atomic_write
from tsembed.inference.inputs import apply_instruction
from tsembed.inference.vectors import EMBEDDING_COLUMN, embeddings_table, nonfinite_rows, write_table
from tsembed.inputs import EmbedInput
from tsembed.weights import sha256_file

logger = logging.getLogger(__name__)

MANIFEST_NAME = "manifest.json"


@dataclass(frozen=True)
class CorpusFields:
    """Which row fields hold the text, the image path and the id."""

    text: str = "text"
    image: str = "image"
    id: str = "id"


@dataclass
class EmbedJobConfig:
    """What to embed and how; fields are the ``tsembed embed`` options.

    Args:
        input: rows as jsonl/json/parquet (or a directory of them); each row has ``text`` and/or
            ``image`` (a path relative to ``image_root``) and optionally ``id``; other fields are
            kept as metadata columns.
        out: the parquet file to write.
        image_root: root of relative image paths; default: the input file's directory.
        instruction: prepended to every row (``{text}`` marks the content slot).
        task: the task every row is embedded for (models trained with ``moe.task_hints``).
        shard_size: rows per resumable shard.
        batch_size: rows per forward pass.
        rank, world_size: this process's shard share (from ``RANK``/``WORLD_SIZE`` under torchrun).
        keep_shards: leave ``<out>.shards/`` in place after merging.
        model_dir: the model's directory (recorded in the output's metadata).
        model_fingerprint: the model's content hash (``TSEmbedModel.fingerprint``); shards embedded by a
            model with another fingerprint are refused. Empty: the model is pinned by ``model_dir`` only.
        restart: discard the shards of an earlier run instead of resuming or refusing them.
    """

    input: Path
    out: Path
    image_root: Path | None = None
    instruction: str | None = None
    task: str | None = None
    fields: CorpusFields = field(default_factory=CorpusFields)
    shard_size: int = 1024
    batch_size: int = 32
    rank: int = 0
    world_size: int = 1
    keep_shards: bool = False
    model_dir: str = ""
    model_fingerprint: str = ""
    restart: bool = False
    show_progress: bool = True
    extra_meta: dict[str, Any] = field(default_factory=dict)

    def __post_init__(self) -> None:
        self.input, self.out = Path(self.input), Path(self.out)
        if self.out.suffix != ".parquet":
            raise ConfigError(f"--out must be a .parquet file, got '{self.out}'")
        if self.shard_size < 1 or self.batch_size < 1:
            raise ConfigError(f"shard_size and batch_size must be >= 1, got {self.shard_size}, {self.batch_size}")
        if not 0 <= self.rank < self.world_size:
            raise ConfigError(f"rank must be in [0, world_size), got rank={self.rank}, world_size={self.world_size}")

    @property
    def shard_dir(self) -> Path:
        return self.out.with_name(self.out.name + ".shards")


@dataclass
class CorpusRows:
    """Validated rows: model inputs, string ids and the metadata columns carried to the output."""

    inputs: list[EmbedInput]
    columns: dict[str, list[Any]]

    def __len__(self) -> int:
        return len(self.inputs)


def _check_row(value: Any, rec_file: str, row: int, fields: CorpusFields, problems: list[Problem]) -> bool:
    def bad(field_name: str | None, val: Any, msg: str) -> bool:
        problems.append(Problem(rec_file, row, field_name, val, msg))
        return False

    if not isinstance(value, dict):
        return bad(None, None, f"expected a JSON object with `{fields.text}` and/or `{fields.image}`")
    if EMBEDDING_COLUMN in value:
        return bad(EMBEDDING_COLUMN, None, "is reserved for the output; rename the input field")
    ok = True
    text, image = value.get(fields.text), value.get(fields.image)
    if text is not None and not isinstance(text, str):
        ok = bad(fields.text, text, f"must be a string, got {type(text).__name__}")
    if image is not None and not isinstance(image, str):
        ok = bad(fields.image, image, f"must be a path string, got {type(image).__name__}")
    for name, val in ((fields.text, text), (fields.image, image)):
        broken = lone_surrogate(val) if ok and isinstance(val, str) else None
        if broken:
            ok = bad(name, val, broken)
    if ok and not text and not image:
        ok = bad(fields.text, text, f"is empty and the row has no `{fields.image}`")
    return ok


def read_corpus(path: str | Path, image_root: str | Path | None = None, fields: CorpusFields = CorpusFields(),
                instruction: str | None = None, task: str | None = None) -> CorpusRows:
    """Read and check every row before any embedding starts; relative images resolve against ``image_root``
    (default: the file's directory).

    Raises:
        DataError: listing every bad row (file, row, field, value): wrong types, empty rows, missing or
            unreadable images, duplicate ids.
    """
    path = Path(path)
    records, problems = read_records(path)
    root = Path(image_root) if image_root is not None else (path if path.is_dir() else path.parent)
    kept = [i for i, r in enumerate(records) if _check_row(r.value, r.file, r.row, fields, problems)]
    # verify: a truncated image is caught here, before the job starts, not by the shard that decodes it
    checker = ImageChecker(root, verify=True)
    checker.check_many(v for i in kept if (v := records[i].value.get(fields.image)) and isinstance(v, str))
    seen: dict[str, int] = {}
    good: list[tuple[str, dict[str, Any]]] = []
    for i in kept:
        rec = records[i]
        image = rec.value.get(fields.image) or None
        if image is not None and (problem := checker.check(image)) is not None:
            problems.append(Problem(rec.file, rec.row, fields.image, image, problem))
            continue
        ident = str(rec.value.get(fields.id, i))
        if ident in seen:
            problems.append(Problem(rec.file, rec.row, fields.id, ident, f"repeats the id of row {seen[ident]}"))
            continue
        seen[ident] = rec.row
        good.append((ident, rec.value))
    report = ValidationReport(str(path), "corpus", len(records), problems, kept, str(root))
    if problems:
        raise DataError(report.describe())
    if not good:
        raise DataError(f"{path}: no rows to embed")
    own = {fields.text, fields.image, fields.id, "id", "text", "image"}
    extra = list(dict.fromkeys(k for _, v in good for k in v if k not in own))
    columns: dict[str, list[Any]] = {
        "id": [ident for ident, _ in good],
        "text": [v.get(fields.text) or None for _, v in good],
        "image": [v.get(fields.image) or None for _, v in good],
        **{k: [v.get(k) for _, v in good] for k in extra},
    }
    inputs = [
        apply_instruction(instruction, EmbedInput(text=t, image=resolve_image(im, root) if im else None, task=task))
        for t, im in zip(columns["text"], columns["image"], strict=True)
    ]
    return CorpusRows(inputs, columns)


def _fingerprint(cfg: EmbedJobConfig, num_rows: int) -> dict[str, Any]:
    files = sorted(cfg.input.iterdir()) if cfg.input.is_dir() else [cfg.input]
    return {
        "input": [{"path": str(f.resolve()), "size": f.stat().st_size, "mtime_ns": f.stat().st_mtime_ns}
                  for f in files],
        "num_rows": num_rows,
        "shard_size": cfg.shard_size,
        "model": {"sha256": cfg.model_fingerprint} if cfg.model_fingerprint else {"path": cfg.model_dir},
        "instruction": cfg.instruction,
        "task": cfg.task,
        "fields": [cfg.fields.text, cfg.fields.image, cfg.fields.id],
    }


def _check_manifest(cfg: EmbedJobConfig, num_rows: int) -> None:
    """Write the manifest, or refuse to resume shards that belong to another input or model."""
    path = cfg.shard_dir / MANIFEST_NAME
    expected = _fingerprint(cfg, num_rows)
    if path.is_file():
        try:
            found = json.loads(path.read_text())
        except json.JSONDecodeError:
            found = None
        found = found if isinstance(found, dict) else {}
        if found != expected:
            diff = sorted(k for k in expected if found.get(k) != expected[k])
            was, now = found.get("model"), expected["model"]
            what = f"of another run (differs in {diff})"
            if "sha256" in now and was != now:
                then = was.get("sha256", "unrecorded") if isinstance(was, dict) else "unrecorded"
                what = (f"embedded by another model (weights sha256 {then[:12]}… then, "
                        f"{now['sha256'][:12]}… now)")
            raise ConfigError(f"{cfg.shard_dir} holds shards {what}; rerun with --restart to discard them "
                              "and start over")
        return
    text = json.dumps(expected, indent=2)
    atomic_write(path, lambda p: p.write_text(text))


def shard_path(cfg: EmbedJobConfig, shard: int) -> Path:
    return cfg.shard_dir / f"shard-{shard:05d}.npy"


def _checksum_path(path: Path) -> Path:
    return path.with_name(path.name + ".sha256")


def _shard_rows(cfg: EmbedJobConfig, shard: int, num_rows: int) -> int:
    return min((shard + 1) * cfg.shard_size, num_rows) - shard * cfg.shard_size


def load_shard(cfg: EmbedJobConfig, shard: int, num_rows: int) -> np.ndarray | None:
    """The shard's vectors if it is complete and intact; None if it is missing or must be embedded again.

    Intact: its sha256 matches the one written beside it and it holds one finite float32 row per input.
    """
    path = shard_path(cfg, shard)
    if not path.is_file():
        return None
    listed = _checksum_path(path)
    problem = None
    if not listed.is_file():
        problem = f"no checksum file {listed.name}"
    elif listed.read_text().split(" ", 1)[0] != sha256_file(path):
        problem = "its sha256 differs from the one written with it (truncated or garbled)"
    else:
        vectors = np.load(path)
        if vectors.dtype != np.float32 or vectors.ndim != 2 or len(vectors) != _shard_rows(cfg, shard, num_rows):
            problem = f"it holds {vectors.dtype} {vectors.shape}, expected {_shard_rows(cfg, shard, num_rows)} rows"
        elif nonfinite_rows(vectors):
            problem = "it holds NaN or Inf"
        else:
            return vectors
    logger.warning("%s: %s; embedding it again", path, problem)
    return None


def my_shards(cfg: EmbedJobConfig, num_rows: int) -> list[int]:
    num_shards = -(-num_rows // cfg.shard_size)
    return [s for s in range(num_shards) if s % cfg.world_size == cfg.rank]


def embed_shards(model: nn.Module, cfg: EmbedJobConfig, rows: CorpusRows) -> int:
    """Embed this rank's unfinished (missing or damaged) shards; returns how many were written now."""
    _check_manifest(cfg, len(rows))
    todo = [s for s in my_shards(cfg, len(rows)) if load_shard(cfg, s, len(rows)) is None]
    done_before = len(my_shards(cfg, len(rows))) - len(todo)
    if done_before:
        logger.info("resuming: %d shard(s) of rank %d already done", done_before, cfg.rank)
    _embed(model, cfg, rows, todo)
    return len(todo)


def _embed(model: nn.Module, cfg: EmbedJobConfig, rows: CorpusRows, shards: list[int]) -> None:
    bar = _progress(sum(_shard_rows(cfg, s, len(rows)) for s in shards), cfg)
    try:
        for s in shards:
            batch = rows.inputs[s * cfg.shard_size : (s + 1) * cfg.shard_size]
            out = embed_items(model, batch, cfg.batch_size, on_batch=bar.update if bar else None)
            vectors = out.embeddings.numpy().astype(np.float32)
            bad = nonfinite_rows(vectors)
            if bad:  # never store them: a NaN row scores NaN against every query
                ids = [rows.columns["id"][s * cfg.shard_size + i] for i in bad[:10]]
                raise TsembedError(f"the model produced NaN/Inf embeddings for rows with ids {ids}; nothing of "
                                   f"shard {s} was written")
            _write_shard(shard_path(cfg, s), vectors)
    finally:
        if bar is not None:
            bar.close()


def _write_shard(path: Path, vectors: np.ndarray) -> None:
    """The shard, then its checksum: a shard without a matching checksum is never taken as done."""
    def save(tmp: Path) -> None:
        with tmp.open("wb") as fh:
            np.save(fh, vectors)

    _checksum_path(path).unlink(missing_ok=True)
    atomic_write(path, save)
    line = f"{sha256_file(path)}  {path.name}\n"
    atomic_write(_checksum_path(path), lambda p: p.write_text(line))


def _progress(total: int, cfg: EmbedJobConfig) -> Any:
    if not cfg.show_progress or total == 0:
        return None
    from tqdm.auto import tqdm

    desc = "embed" if cfg.world_size == 1 else f"embed (rank {cfg.rank}/{cfg.world_size})"
    return tqdm(total=total, desc=desc, unit="row")


def merge_shards(cfg: EmbedJobConfig, rows: CorpusRows, model: nn.Module | None = None) -> Path:
    """Concatenate all shards (every rank's) into ``cfg.out``, atomically; then drop the shard folder.

    A damaged shard (wrong checksum or shape) is embedded again with ``model`` first, never merged.
    """
    num_shards = -(-len(rows) // cfg.shard_size)
    missing = [s for s in range(num_shards) if not shard_path(cfg, s).is_file()]
    if missing:
        raise DataError(f"{cfg.shard_dir}: shards {missing[:10]} are missing; rerun the embed command to finish them")
    shards = [load_shard(cfg, s, len(rows)) for s in range(num_shards)]
    damaged = [s for s, v in enumerate(shards) if v is None]
    if damaged:
        if model is None:
            raise DataError(f"{cfg.shard_dir}: shards {damaged[:10]} are damaged; rerun the embed command")
        _embed(model, cfg, rows, damaged)
        shards = [v if v is not None else load_shard(cfg, s, len(rows)) for s, v in enumerate(shards)]
    vectors = np.concatenate(shards)
    meta = {"model": cfg.model_dir, "model_sha256": cfg.model_fingerprint or None, "instruction": cfg.instruction,
            "task": cfg.task,
            "input": str(cfg.input), **cfg.extra_meta}
    write_table(cfg.out, embeddings_table(rows.columns, vectors, meta))
    if not cfg.keep_shards:
        shutil.rmtree(cfg.shard_dir, ignore_errors=True)
    return cfg.out


def run_embed_job(model: nn.Module, cfg: EmbedJobConfig, barrier: Callable[[], None] | None = None) -> Path | None:
    """Embed this rank's shards, wait for every rank (``barrier``), and merge on rank 0.

    Returns the output path on rank 0, None on other ranks.
    """
    rows = read_corpus(cfg.input, cfg.image_root, cfg.fields, cfg.instruction, cfg.task)
    if cfg.restart:
        if cfg.rank == 0 and cfg.shard_dir.exists():
            logger.info("--restart: discarding %s", cfg.shard_dir)
            shutil.rmtree(cfg.shard_dir)
        if cfg.world_size > 1 and barrier is not None:
            barrier()  # no rank writes a shard before the old folder is gone
    written = embed_shards(model, cfg, rows)
    logger.info("rank %d: embedded %d shard(s)", cfg.rank, written)
    if cfg.world_size > 1 and barrier is not None:
        barrier()
    if cfg.rank != 0:
        return None
    out = merge_shards(cfg, rows, model)
    logger.info("wrote %d embeddings to %s", len(rows), out)
    return out


def distributed_env() -> tuple[int, int, int]:
    """(rank, world_size, local_rank) from the variables torchrun sets; (0, 1, 0) otherwise."""
    return int(os.environ.get("RANK", 0)), int(os.environ.get("WORLD_SIZE", 1)), int(os.environ.get("LOCAL_RANK", 0))


def gloo_barrier() -> None:
    """Wait for every torchrun rank (a gloo group is enough: only a barrier passes through it)."""
    from datetime import timedelta

    import torch.distributed as dist

    if not dist.is_initialized():
        dist.init_process_group("gloo", timeout=timedelta(hours=12))
    dist.barrier()


def job_summary(cfg: EmbedJobConfig) -> dict[str, Any]:
    return {k: str(v) if isinstance(v, Path) else v for k, v in asdict(cfg).items()}

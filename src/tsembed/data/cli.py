"""`tsembed data ...`: build the offline benchmark suite and validate MMEB files. Heavy imports are lazy."""

from __future__ import annotations

from pathlib import Path
from typing import Annotated, Literal

import typer

data_app = typer.Typer(
    name="data",
    help="MMEB data: build the offline OpenMoji benchmark suite, validate train/eval files.",
    no_args_is_help=True,
)


@data_app.command("build-suite")
def build_suite_cmd(
    out: Annotated[Path, typer.Option("--out", help="Directory to write the suite to.")],
    seed: Annotated[int, typer.Option(help="Seed of the base-emoji split and all sampling.")] = 0,
    max_train: Annotated[int, typer.Option("--max-train", help="Train pairs per in-distribution dataset.")] = 1000,
    max_eval: Annotated[int, typer.Option("--max-eval", help="Eval queries per dataset.")] = 200,
    pool_size: Annotated[int | None, typer.Option(
        help="Candidates per retrieval/grounding eval query [default: 200]; gallery size per query of the "
             "conflict suite [default: 20].")] = None,
    vqa_choices: Annotated[int, typer.Option(help="Candidate answers of the name-answer VQA datasets.")] = 20,
    eval_fraction: Annotated[float, typer.Option(help="Share of base emoji held out for evaluation.")] = 0.25,
    dev_fraction: Annotated[float, typer.Option(
        help="Share of base emoji held out as a dev split of the IND datasets: compare configs there, not on eval "
             "[default: 0, no dev split].")] = 0.0,
    tile_size: Annotated[int, typer.Option(help="Pixel size of single-emoji images.")] = 96,
    canvas_size: Annotated[int, typer.Option(help="Pixel size of multi-emoji canvases.")] = 128,
    file_format: Annotated[str, typer.Option("--format", help="Row file format: jsonl or parquet.")] = "jsonl",
    dataset: Annotated[
        list[str] | None, typer.Option("--dataset", help="Build only this dataset (repeatable); default: all.")
    ] = None,
    kind: Annotated[Literal["standard", "conflict"], typer.Option(
        help="standard: 15 datasets over four meta-tasks (breadth); conflict: conditional similarity, the same "
             "query under opposite instructions against one shared gallery (task conflict).")] = "standard",
    instructions: Annotated[bool, typer.Option(
        help="Conflict suite: --no-instructions words every condition alike (the control that shows the "
             "conditions conflict).")] = True,
    targets: Annotated[Literal["named", "generic"], typer.Option(
        help="Conflict suite: 'named' target instructions say what to keep; 'generic' gives every target MMEB's "
             "'Represent the given image.', so only the query names the condition.")] = "named",
    conflict_streams: Annotated[str, typer.Option(
        help="Conflict suite: comma-separated streams of condition pairs to build: tone (identity vs skin tone), "
             "tint (shape vs colour), text (object vs colour word, and text queries about tones), gender (the same "
             "person emoji in any gender vs the same gender; opt-in).")] = "tone,tint,text",
    train_wordings: Annotated[int, typer.Option(
        help="Conflict suite: wordings per in-distribution query instruction in the train split (train rows cycle "
             "through them; dev and eval keep the one wording, the reworded eval datasets stay unseen).")] = 1,
    tint_palette: Annotated[Literal["six", "twelve"], typer.Option(
        help="Conflict suite: the tints of the shape/colour and object/colour-word pairs: six hues 60 degrees apart, "
             "or twelve (one more between each neighbouring pair: a finer colour condition).")] = "six",
    overwrite: Annotated[bool, typer.Option(help="Replace an existing suite at --out.")] = False,
    progress: Annotated[bool, typer.Option(help="Show a progress bar.")] = True,
) -> None:
    """Build the offline OpenMoji benchmark suite in MMEB format.

    --kind standard: 15 datasets over classification, VQA, retrieval and grounding, 10 in-distribution
    (train + eval) and 5 out-of-distribution (eval only). --kind conflict: 3 pairs of conditions (identity vs
    skin tone, shape vs colour, object vs colour word) where each condition's positive is the other's hardest
    distractor, plus 4 out-of-distribution checks; --conflict-streams tone,tint,text,gender adds a fourth pair
    (the same person emoji in any gender vs the same gender) and 2 reworded checks. Same seed and options give
    byte-identical files.
    """
    from tsembed.data.suite import build_suite

    suite = build_suite(
        out,
        seed,
        max_train_per_dataset=max_train,
        max_eval_per_dataset=max_eval,
        pool_size=pool_size,
        vqa_choices=vqa_choices,
        eval_fraction=eval_fraction,
        dev_fraction=dev_fraction,
        tile_size=tile_size,
        canvas_size=canvas_size,
        format=file_format,
        datasets=dataset or None,
        kind=kind,
        instructions=instructions,
        targets=targets,
        conflict_streams=tuple(s.strip() for s in conflict_streams.split(",") if s.strip()),
        train_wordings=train_wordings,
        tint_palette=tint_palette,
        overwrite=overwrite,
        progress=progress,
    )
    m = suite.manifest
    for name, d in m["datasets"].items():
        c = d["counts"]
        typer.echo(
            f"  {name:<24} {d.get('condition') or d['meta_task']:<15} {'OOD' if d['ood'] else 'IND'}  "
            f"train {c['train']:>5}  eval {c['eval']:>4}  candidates {c['candidates_max']}"
            + (f"  dev {c['dev']:>4}" if "dev" in c else "")
        )
    typer.echo(
        f"suite written to {suite.root} ({len(m['datasets'])} datasets, {m['images']['count']} images, "
        f"{m['images']['bytes'] / 2**20:.1f} MiB); see {suite.root / 'README.md'}"
    )


@data_app.command("validate")
def validate_cmd(
    file: Annotated[Path, typer.Argument(help="MMEB .jsonl/.json/.parquet file, a directory of shards, or MMEB as "
                                         "cloned from the Hub (a folder per dataset: every dataset and split).")],
    image_root: Annotated[
        Path | None,
        typer.Option(
            help="Root of relative image paths (default: the enclosing suite root, else the file directory; for a Hub "
                 "clone the clone itself, as eval reads it).",
        ),
    ] = None,
    kind: Annotated[
        Literal["train", "eval"] | None,
        typer.Option(help="train or eval (default: inferred from the first row's fields)."),
    ] = None,
    skip_invalid: Annotated[
        bool, typer.Option(help="Report bad rows as skippable and exit 0 instead of failing.")
    ] = False,
    check_images: Annotated[bool, typer.Option(help="Open every distinct image (header + verify).")] = True,
    allow_extra_fields: Annotated[
        bool, typer.Option(help="Ignore fields that are not MMEB fields instead of reporting them.")
    ] = False,
    tie_rule: Annotated[
        Literal["pessimistic", "vlm2vec"],
        typer.Option(help="How eval rows will be scored (as `tsembed eval --tie-rule`): vlm2vec keeps rows that repeat "
                          "their positive."),
    ] = "pessimistic",
) -> None:
    """Check an MMEB train or eval file before a run.

    Checks fields, empty queries, candidate lists, <|image_1|> placeholders and images, and lists every
    problem with file, row, field and value. Exit status 1 when there are problems (0 with --skip-invalid).
    """
    from tsembed.data.mmeb import validate_file, validate_layout
    from tsembed.data.mmeb_layout import is_layout
    from tsembed.data.problems import VALIDATE_SKIP_HINT
    from tsembed.errors import DataError

    options = {"check_images": check_images, "strict_fields": not allow_extra_fields, "tie_rule": tie_rule}
    if is_layout(file):
        reports = validate_layout(file, image_root, kind, **options)
        if not reports:
            raise DataError(f"'{file}': no dataset folder holds a split file")
    else:
        reports = [validate_file(file, image_root, kind, **options)]
    bad = [r for r in reports if not r.ok]
    for report in reports:
        if report.ok:
            typer.echo("\n".join([report.summary(), *report.note_lines()]))
    if bad and not skip_invalid:
        if len(reports) == 1:
            bad[0].raise_if_problems(VALIDATE_SKIP_HINT)
        raise DataError("\n".join(r.describe() for r in bad)
                        + f"\n{len(bad)} of {len(reports)} files have problems ({VALIDATE_SKIP_HINT})")
    for report in bad:
        typer.echo(report.describe())
        typer.echo(f"--skip-invalid: {report.num_skipped} of {report.num_rows} rows would be skipped, "
                   f"{len(report.kept)} kept")


def register(app: typer.Typer) -> None:
    """Attach the `data` sub-commands to the root `tsembed` app."""
    app.add_typer(data_app, name="data")

"""`tsembed eval` and `tsembed inspect-routing`: thin wrappers over ``evaluate`` and ``analyze_routing``."""

from __future__ import annotations

import os
from pathlib import Path

import typer

from tsembed.cli_options import BACKBONE_PATH

CACHE_ENV = "TSEMBED_CACHE_DIR"


def default_cache_dir() -> Path:
    """``$TSEMBED_CACHE_DIR/embeddings`` or ``~/.cache/tsembed/embeddings`` (beside the vision feature cache)."""
    return Path(os.environ.get(CACHE_ENV) or Path.home() / ".cache" / "tsembed") / "embeddings"


def _load_model(model_dir: Path, device: str, backbone_path: str | None = None):
    import torch

    from tsembed.devices import check_device
    from tsembed.model import TSEmbedModel

    if device == "auto":
        device = "cuda" if torch.cuda.is_available() else "cpu"
    device = check_device(device)  # a clear error for cuda on a CPU-only build, before the model loads
    return TSEmbedModel.from_pretrained(model_dir, backbone_path=backbone_path).to(device).eval()


def _cache(cache_dir: Path | None, no_cache: bool) -> Path | None:
    return None if no_cache else (cache_dir or default_cache_dir())


_MODEL = typer.Option(
    ..., "--model", "-m", help="Model directory (save_pretrained output).", exists=True, file_okay=False
)
_SUITE = typer.Option(
    ..., "--suite", "-s", exists=True,
    help="Suite directory with suite.json, MMEB-eval as downloaded (a folder per dataset), or an eval "
    ".jsonl/.parquet file.",
)
_IMAGE_ROOT = typer.Option(
    None, "--image-root", exists=True, file_okay=False,
    help="Where image paths resolve [default: the suite's own root; for MMEB-eval the clone]: e.g. the folder "
    "MMEB-eval's images.zip was unpacked into.",
)
FORMATS = ("tsembed", "mmeb")
_DATASETS = typer.Option(None, "--datasets", "-d", help="Only these datasets (repeat or comma-separate).")
_BATCH = typer.Option(32, "--batch-size", "-b", min=1, help="Inputs per forward pass.")
_CACHE_DIR = typer.Option(
    None, "--cache-dir", help=f"Embedding cache root [default: ${CACHE_ENV}/embeddings or ~/.cache/tsembed/embeddings]."
)
_NO_CACHE = typer.Option(False, "--no-cache", help="Do not read or write the embedding cache.")
_SKIP = typer.Option(False, "--skip-invalid", help="Drop malformed rows (counted and reported) instead of failing.")
_NO_IMG_CHECK = typer.Option(False, "--no-check-images", help="Skip opening every image before encoding.")
_DEVICE = typer.Option("auto", "--device", help="auto | cpu | cuda | cuda:N.")
_QUIET = typer.Option(False, "--no-progress", help="Hide progress bars.")
_SPLIT = typer.Option("eval", "--split", help="eval, or dev: a suite's development split (build-suite --dev-fraction). "
                      "Compare configs on dev; report eval.")


def eval_command(
    model: Path = _MODEL,
    suite: Path = _SUITE,
    datasets: list[str] | None = _DATASETS,
    out: Path = typer.Option(Path("eval-results"), "--out", "-o", help="Folder for results.json and results.md."),
    batch_size: int = _BATCH,
    cache_dir: Path | None = _CACHE_DIR,
    no_cache: bool = _NO_CACHE,
    global_pool: bool = typer.Option(
        False,
        "--global-pool",
        help="Also rank against the union of each dataset's candidates: recall@1/5/10, MRR, nDCG@10.",
    ),
    skip_invalid: bool = _SKIP,
    no_check_images: bool = _NO_IMG_CHECK,
    device: str = _DEVICE,
    no_progress: bool = _QUIET,
    split: str = _SPLIT,
    image_root: Path | None = _IMAGE_ROOT,
    output_format: str = typer.Option(
        "tsembed", "--format", help="tsembed: results.json + results.md; mmeb: also the MMEB leaderboard's files as "
        "VLM2Vec-V2 lays them out: OUT/mmeb/image/<Dataset>_score.json and <Dataset>_pred.jsonl, and "
        "OUT/mmeb/<model-name>.json (what its report_score_v2.py reads and writes).",
    ),
    tie_rule: str | None = typer.Option(
        None, "--tie-rule", help="vlm2vec: a tie goes to the candidate listed first, the positive, as VLM2Vec's "
        "argmax scores it (rows that repeat their positive are kept); pessimistic: a tie counts against the "
        "positive (a collapsed model scores 0). [default: vlm2vec with --format mmeb, so the numbers compare with "
        "the leaderboard's; else pessimistic]",
    ),
    target_routing: str | None = typer.Option(
        None, "--target-routing", help="own: every input routed by itself; query: each row's candidates are embedded "
        "with its query's experts, as a corpus indexed once per route is searched with the query's route (composed "
        "models, and models trained with moe.target_routing=query; costs one candidate encoding per route used) "
        "[default: the model's own protocol]."),
    model_name: str | None = typer.Option(
        None, "--model-name", help="Model name in the MMEB leaderboard file [default: the model folder's name; "
        "for runs/x/model or runs/x/checkpoint-N the run's]."
    ),
    model_backbone: str | None = typer.Option(
        None, "--model-backbone", help="Leaderboard metadata: backbone [default: the model's backbone kind]."),
    model_size: str | None = typer.Option(
        None, "--model-size", help="Leaderboard metadata, e.g. '2B parameters' [default: counted from the model]."),
    embedding_dimension: int | None = typer.Option(
        None, "--embedding-dimension", help="Leaderboard metadata [default: the embeddings' size]."),
    max_length_tokens: int | None = typer.Option(
        None, "--max-length-tokens", help="Leaderboard metadata [default: the backbone's max_length, when it has one].",
    ),
    release_date: str | None = typer.Option(
        None, "--release-date", help="Leaderboard metadata: model_release_date, YYYY-MM-DD."),
    model_url: str | None = typer.Option(None, "--model-url", help="Leaderboard metadata: paper, code or Hub link."),
    data_source: str = typer.Option("Self-Reported", "--data-source", help="Leaderboard metadata: who ran it."),
    update_card: bool = typer.Option(
        False, "--update-card", help="Also write the results into the model directory's README.md model card "
        "(its model-index: one entry per dataset)."
    ),
    backbone_path: str | None = BACKBONE_PATH,
) -> None:
    """Evaluate a model on an MMEB-format suite: hit@1 per dataset, meta-task, IND/OOD and overall."""
    from tsembed.evaluation.harness import evaluate
    from tsembed.evaluation.metrics import TIE_RULES, VLM2VEC

    if output_format not in FORMATS:
        raise typer.BadParameter(f"must be one of {list(FORMATS)}, got {output_format!r}", param_hint="--format")
    if tie_rule is not None and tie_rule not in TIE_RULES:
        raise typer.BadParameter(f"must be one of {list(TIE_RULES)}, got {tie_rule!r}", param_hint="--tie-rule")
    if release_date is not None:
        _check_date(release_date)
    tie_rule = tie_rule or (VLM2VEC if output_format == "mmeb" else "pessimistic")
    loaded = _load_model(model, device, backbone_path)
    results = evaluate(
        loaded,
        suite,
        datasets,
        cache_dir=_cache(cache_dir, no_cache),
        batch_size=batch_size,
        global_pool=global_pool,
        skip_invalid=skip_invalid,
        check_images=not no_check_images,
        progress=not no_progress,
        split=split,
        image_root=image_root,
        tie_rule=tie_rule,
        predictions_dir=out / "mmeb" / "image" if output_format == "mmeb" else None,
        target_routing=target_routing,
    )
    if not any(d.num_rows for d in results.datasets):
        from tsembed.errors import DataError

        files = sorted({d.file for d in results.datasets}) or [str(suite)]
        raise DataError(f"nothing to evaluate: no eval rows in {', '.join(files)} (empty, or every row skipped); "
                        "no results written")
    results.settings["model_dir"] = str(model)
    json_path, md_path = results.save(out)
    typer.echo(results.to_markdown())
    typer.echo(f"wrote {json_path} and {md_path}")
    if output_format == "mmeb":
        from tsembed.evaluation.leaderboard import default_model_name, write_mmeb

        metadata = {
            "model_backbone": model_backbone or loaded.config.backbone.get("kind"),
            "model_size": model_size or _parameter_count(loaded),
            "embedding_dimension": embedding_dimension or results.settings.get("embedding_dim"),
            "max_length_tokens": max_length_tokens or getattr(loaded.backbone, "max_length", None),
            "model_release_date": release_date,
            "data_source": data_source,
            "url": model_url,
        }
        written = write_mmeb(results, out / "mmeb", model_name or default_model_name(model), metadata)
        typer.echo(f"wrote {len(written) - 1} MMEB score and pred files under {out / 'mmeb' / 'image'} and "
                   f"{written[-1]}")
    if update_card:
        from tsembed.card import write_model_card

        typer.echo(f"wrote {write_model_card(model, loaded, results)}")


def _check_date(value: str) -> None:
    from datetime import date

    try:
        date.fromisoformat(value)
    except ValueError:
        raise typer.BadParameter(f"expected YYYY-MM-DD, got {value!r}", param_hint="--release-date") from None


def _parameter_count(model) -> str:
    """'22.7M parameters' / '2.2B parameters', as the leaderboard writes sizes."""
    n = sum(p.numel() for p in model.parameters())
    return f"{n / 1e9:.1f}B parameters" if n >= 1e9 else f"{n / 1e6:.1f}M parameters"


def inspect_routing_command(
    model: Path = _MODEL,
    suite: Path = _SUITE,
    out: Path = typer.Option(Path("routing-analysis"), "--out", "-o", help="Folder for routing.json and PNG plots."),
    layers: list[str] | None = typer.Option(
        None,
        "--layers",
        "-l",
        help="Adapted layers to analyse: names, indices (-1 = last) or full-match regexes; repeat or comma-separate.",
    ),
    datasets: list[str] | None = _DATASETS,
    include_targets: bool = typer.Option(False, "--include-targets", help="Also route each dataset's candidates."),
    max_per_dataset: int | None = typer.Option(None, "--max-per-dataset", min=1, help="Rows per dataset to use."),
    batch_size: int = _BATCH,
    cache_dir: Path | None = _CACHE_DIR,
    no_cache: bool = _NO_CACHE,
    skip_invalid: bool = _SKIP,
    no_check_images: bool = _NO_IMG_CHECK,
    device: str = _DEVICE,
    no_progress: bool = _QUIET,
    split: str = _SPLIT,
    backbone_path: str | None = BACKBONE_PATH,
) -> None:
    """Plot expert usage per dataset and layer, load balance, routing entropy and dataset/expert NMI."""
    from tsembed.evaluation.routing import analyze_routing
    from tsembed.evaluation.routing_report import ROUTING_FILE

    report = analyze_routing(
        _load_model(model, device, backbone_path),
        suite,
        out,
        layers,
        datasets,
        include_targets=include_targets,
        max_per_dataset=max_per_dataset,
        cache_dir=_cache(cache_dir, no_cache),
        batch_size=batch_size,
        skip_invalid=skip_invalid,
        check_images=not no_check_images,
        progress=not no_progress,
        split=split,
    )
    if not report.has_routing:
        typer.echo(f"nothing to analyse: {report.reason}; wrote {out / ROUTING_FILE}")
        return
    nmi_d, nmi_t = report.nmi.get("dataset_mean"), report.nmi.get("meta_task_mean")
    typer.echo(
        f"{len(report.layers)} layers x {report.num_experts} experts"
        + (f" ({report.num_null_experts} of them null)" if report.num_null_experts else "")
        + f" over {len(report.datasets)} datasets; "
        f"mean NMI(dataset, top-1 expert) = {nmi_d:.3f}"
        + (f", NMI(meta-task, top-1 expert) = {nmi_t:.3f}" if nmi_t is not None else "")
    )
    pairs = report.pair_agreement
    typer.echo(f"query and positive share the top-1 expert in {pairs['mean']:.1%} of pairs "
               f"(chance from expert usage {pairs['chance_mean']:.1%}); per dataset in routing.json")
    typer.echo(f"wrote {out / ROUTING_FILE} and {', '.join(report.plots)}")


def register(app: typer.Typer) -> None:
    """Add the evaluation sub-commands to the root `tsembed` app."""
    app.command("eval")(eval_command)
    app.command("inspect-routing")(inspect_routing_command)

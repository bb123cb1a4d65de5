"""`tsembed demo` and `tsembed ablate`."""

from __future__ import annotations

from pathlib import Path

import typer


def register(app: typer.Typer) -> None:
    @app.command("demo")
    def demo(
        out: Path = typer.Option(Path("demo-report"), help="Report directory."),
        suite: Path = typer.Option(Path("demo-suite"), help="Suite directory (built here if absent)."),
        work: Path = typer.Option(Path("demo-runs"), help="Training runs, models and the embedding cache."),
        quick: bool = typer.Option(False, "--quick", help="60 steps instead of the default config's (< 5 min)."),
        seed: int = typer.Option(0, help="Seed of the suite and of training."),
        overrides: list[str] = typer.Option([], "--set", help="Override a training config key (repeatable)."),
    ) -> None:
        """The main job: build the offline suite, train TSEmbed and a single-LoRA baseline, evaluate, report.

        Reruns skip finished work (trained models and evaluations are kept under --work).
        """
        from tsembed.experiments.demo import run_demo

        report = run_demo(out, suite, work, quick, seed, overrides)
        typer.echo(f"report written to {report}")

    @app.command("ablate")
    def ablate(
        config: Path = typer.Option(None, "--config", "-c", help="Base training config (default: packaged)."),
        seeds: list[int] = typer.Option([0, 1, 2], "--seeds", help="Seeds (repeat the option: --seeds 0 --seeds 1)."),
        variants: list[str] = typer.Option([], "--variant", help="Only these variants (repeatable)."),
        modes: list[str] = typer.Option(["weight"], "--mode", help="EANS modes for full TSEmbed (repeatable)."),
        suite: Path = typer.Option(Path("demo-suite"), help="Suite directory (built if absent)."),
        out: Path = typer.Option(Path("runs/ablation"), help="Where runs and the summary go."),
        overrides: list[str] = typer.Option([], "--set", help="Override a base config key (repeatable)."),
    ) -> None:
        """Train and evaluate every ablation variant for every seed; write mean ± std tables and a plot.

        Variants: base (untrained), lora (same budget), moe (no EANS), moe_eans_no_stage1, tsembed_<mode>.
        Finished runs are skipped, so an interrupted ablation resumes where it stopped.
        """
        from tsembed.experiments.ablation import run_ablation
        from tsembed.experiments.demo import ensure_suite

        ensure_suite(suite, 0)
        summary = run_ablation(config, overrides, seeds, variants or None, tuple(modes), suite, out, out / "eval-cache")
        from tsembed.experiments.ablation import markdown_table

        typer.echo(markdown_table(summary["variants"]))

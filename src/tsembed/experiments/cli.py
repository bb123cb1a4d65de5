"""`tsembed demo`, `tsembed ablate`, `tsembed study` and `tsembed task-conflict`."""

from __future__ import annotations

from pathlib import Path

import typer

from tsembed.cli_options import BACKBONE_PATH, DERIVE


def register(app: typer.Typer) -> None:
    @app.command("demo")
    def demo(
        out: Path = typer.Option(Path("demo-report"), help="Report directory."),
        suite: Path = typer.Option(Path("demo-suite"), help="Suite directory (built here if absent)."),
        work: Path = typer.Option(Path("demo-runs"), help="Training runs, models and the embedding cache."),
        quick: bool = typer.Option(False, "--quick", help="40 steps per model instead of the default config's "
                                   "(< 5 min on 2 CPU cores)."),
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
        summary_only: bool = typer.Option(False, "--summary-only", help="Train nothing: summarise the runs that "
                                          "finished (missing ones are named and left out; routing NMI is measured "
                                          "where it was not yet)."),
        split: str = typer.Option("eval", "--eval-split", help="eval, or dev: compare variants and settings on the "
                                  "suite's dev split (build-suite --dev-fraction), report eval; models are shared."),
        derived: list[str] = DERIVE,
    ) -> None:
        """Train and evaluate every ablation variant for every seed; write mean ± std tables and a plot.

        Variants: base (untrained), lora (same budget), moe (no EANS), moe_eans_no_stage1, tsembed_<mode>; when
        named: moe_equal_active, tsembed_equal_active, shared_routed (shared + routed + null experts, lora's budget).
        Finished runs are skipped, so an interrupted ablation resumes where it stopped. Each MoE run also gets
        its routing analysis (plots and NMI of meta-task and dataset with the top-1 expert) in <run>/routing/.
        """
        from tsembed.experiments.ablation import run_ablation, summary_stem
        from tsembed.experiments.demo import ensure_suite

        if not summary_only:
            ensure_suite(suite, 0)
        run_ablation(config, overrides, seeds, variants or None, tuple(modes), suite, out, out / "eval-cache",
                     summary_only=summary_only, split=split, derived=derived)
        typer.echo((out / f"{summary_stem(split)}.md").read_text())

    from tsembed.experiments.study.cli import register as register_study

    register_study(app)  # `tsembed study`: the ablation's runs, planned by a checked-in YAML file

    @app.command("task-scaling")
    def task_scaling(
        suite: Path = typer.Option(..., help="Suite directory (e.g. build-suite --kind conflict)."),
        out: Path = typer.Option(Path("runs/task-scaling"), help="Where runs and task-scaling.{json,md,png} go."),
        config: Path = typer.Option(None, "--config", "-c", help="Base training config (default: packaged)."),
        seeds: list[int] = typer.Option([0], "--seeds", help="Seeds (repeat the option); each fixes a task order."),
        variants: list[str] = typer.Option([], "--variant", help="Models (repeatable) [default: lora, moe, "
                                           "tsembed_weight, tsembed_equal_active]."),
        sizes: list[int] = typer.Option([], "--size", help="Task-set sizes (repeatable) [default: 1, 2, 4, … all]."),
        steps_per_task: int = typer.Option(50, min=1, help="Training steps per task in the set."),
        min_steps: int = typer.Option(150, min=1, help="At least this many steps (specialists included)."),
        split: str = typer.Option("eval", "--eval-split", help="eval, or dev (compare settings there)."),
        overrides: list[str] = typer.Option([], "--set", help="Override a base config key (repeatable)."),
        derived: list[str] = DERIVE,
    ) -> None:
        """Train on nested task sets of growing size; each task's hit@1 relative to its specialist LoRA.

        Writes a table, task-scaling.json and a plot (tasks on the x axis, relative hit@1 on the y axis, one
        line per model). Finished runs are kept and skipped, so an interrupted grid resumes.
        """
        from tsembed.experiments.scaling import Budget, run_task_scaling

        run_task_scaling(config, overrides, suite, out, seeds, variants or None, sizes or None,
                         Budget(steps_per_task, min_steps), split, derived=derived)
        typer.echo((out / "task-scaling.md").read_text())

    @app.command("conflict-summary")
    def conflict_summary_cmd(
        out: Path = typer.Option(..., help="Where to write summary.json."),
        study: Path = typer.Option(None, help="A study file (`tsembed study`); its summary is rewritten from the "
                                   "runs in --runs, then read: paired differences with bootstrap intervals."),
        runs: Path = typer.Option(None, help="The study's --out folder (with --study)."),
        ablation: Path = typer.Option(None, help="Or an ablation summary (ablation.json) with both variants."),
        conflict: Path = typer.Option(None, help="A task-conflict report (conflict.json) of the same suite."),
        tsembed: str = typer.Option("tsembed_weight", help="With --ablation: the routed model's variant name."),
        lora: str = typer.Option("lora", help="With --ablation: the same-parameters single LoRA's variant name."),
    ) -> None:
        """Headline numbers of a conflict study: paired TSEmbed − LoRA overall and per condition, conflict cosine.

        From a study (the primary `eval` stage on the conflict suite, with `eval-generic` and `breadth` as
        secondary endpoints) or from an older ablation summary."""
        import json

        from tsembed.errors import ConfigError, DataError
        from tsembed.experiments.conflict_summary import conflict_summary, study_conflict_summary
        from tsembed.fileio import atomic_write

        def read(path: Path) -> dict:
            try:
                return json.loads(path.read_text())
            except (OSError, json.JSONDecodeError) as exc:
                raise DataError(f"cannot read '{path}': {exc}") from None

        if (study is None) == (ablation is None) or (study is not None and runs is None):
            raise ConfigError("give --study FILE --runs DIR, or --ablation FILE")
        report = read(conflict) if conflict else None
        if study is not None:
            from tsembed.experiments.study.spec import load_study
            from tsembed.experiments.study.summary import summarize_study

            spec = load_study(study)
            summary = study_conflict_summary(spec, summarize_study(spec, runs), report)
        else:
            summary = conflict_summary(read(ablation), report, tsembed, lora)
        text = json.dumps(summary, indent=2) + "\n"
        atomic_write(out, lambda p: p.write_text(text))
        typer.echo(text)

    @app.command("probe-bridge")
    def probe_bridge(
        suite: Path = typer.Option(..., "--suite", help="Offline suite with a dev split (--dev-fraction)."),
        bridge: Path = typer.Option(None, "--bridge", help="bridge.safetensors from `tsembed align` (default: "
                                    "none, only the raw features and the random projector are probed)."),
        out: Path = typer.Option(..., "--out", help="JSON file for {stage: {tint, tone, group, identity}}."),
        per_task: int = typer.Option(400, help="Emoji per probe task and split."),
        seed: int = typer.Option(0, help="Seed of the emoji sample and the probes."),
        task: list[str] = typer.Option(None, "--task", help="Run only this probe (repeatable): tint, tone, group, "
                                       "identity, gender, gender_identity [default: all]."),
    ) -> None:
        """Linear probes (train emoji -> dev emoji) of tint, skin tone, group and gender, and nearest-neighbour
        identity across tints and across genders, on raw EfficientNet features (R0), the random projector (R1), the
        aligned one (R2) and frozen MiniLM over the aligned tokens (R3). Needs scikit-learn."""
        import json

        from tsembed.errors import ConfigError
        from tsembed.experiments.probes import PROBE_TASKS, run_probes
        from tsembed.fileio import atomic_write

        if task and set(task) - set(PROBE_TASKS):
            raise ConfigError(f"--task must be among {list(PROBE_TASKS)}, got {task}")
        results = run_probes(suite, bridge, per_task=per_task, seed=seed, tasks=tuple(task or PROBE_TASKS))
        text = json.dumps(results, indent=2) + "\n"
        atomic_write(out, lambda p: p.write_text(text))
        for stage, scores in results.items():
            typer.echo(f"{stage:10s} " + "  ".join(f"{k} {v:.3f}" for k, v in scores.items()))

    @app.command("task-conflict")
    def task_conflict(
        config: Path = typer.Option(None, "--config", "-c", help="Training config (YAML, or a run's config.json); "
                                    "default: packaged."),
        model: Path = typer.Option(None, "--model", help="Trained model directory (a run's model/ or a "
                                   "checkpoint's model/); default: the config's model at initialisation."),
        batches: int = typer.Option(4, min=1, help="Batches per dataset to average the gradient over."),
        out: Path = typer.Option(None, help="Write conflict.json and conflict.md here."),
        overrides: list[str] = typer.Option([], "--set", help="Override a config key (repeatable)."),
        backbone_path: str | None = BACKBONE_PATH,
    ) -> None:
        """Cosine between the training datasets' loss gradients: do the tasks conflict? (training data only)

        On a conflict suite (build-suite --kind conflict) it also reports the cosine of each condition pair.
        """
        from tsembed.experiments.conflict import run_task_conflict

        text = run_task_conflict(config, overrides, model, batches, out, backbone_path).markdown()
        typer.echo(text)

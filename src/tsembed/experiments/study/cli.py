"""`tsembed study check|run|summarize FILE --out DIR`."""

from __future__ import annotations

from pathlib import Path

import typer

FILE = typer.Argument(..., help="The study file (YAML; docs/studies.md).", exists=True, dir_okay=False)
OUT = typer.Option(..., "--out", help="The study's directory: runs, study.json (the commit), summary.{json,md}.")


def register(app: typer.Typer) -> None:
    study_app = typer.Typer(help="Studies as data: run a checked-in YAML study (variants, seeds, suites, splits, "
                            "the selection rule) and summarise it with bootstrap intervals. See docs/studies.md.",
                            no_args_is_help=True)
    app.add_typer(study_app, name="study")

    @study_app.command("check")
    def check(file: Path = FILE, out: Path = typer.Option(None, "--out", help="Also count the runs finished there.")
              ) -> None:
        """Validate the study file (every error names the field) and list its runs per stage."""
        from tsembed.experiments.study.run import base_config, plan_stage, variants
        from tsembed.experiments.study.spec import load_study

        study = load_study(file)
        base = base_config(study)
        resolved = variants(study, base)
        typer.echo(f"{study.name}: {len(study.suites)} suites, {len(study.variants)} variants, "
                   f"{len(study.stages)} stages — valid")
        for stage in study.stages:
            if stage.selected and out is None:
                names = ", ".join([*stage.variants, "the selected variant"])
                typer.echo(f"  {stage.name} ({stage.split}): {names} × {len(stage.suites)} suites × "
                           f"{len(stage.seeds)} seeds (after the selection)")
                continue
            try:
                tasks = plan_stage(study, out or Path("/nonexistent"), stage, resolved)
            except Exception as exc:  # noqa: BLE001 - e.g. the selection stage is not finished
                typer.echo(f"  {stage.name} ({stage.split}): {exc}")
                continue
            done = sum(t.done() for t in tasks) if out else 0
            typer.echo(f"  {stage.name} ({stage.split}): {len(tasks)} runs" + (f", {done} finished" if out else ""))
        if (g := study.gate) is not None:
            typer.echo(f"  gate on stage {g.stage}: {g.min_conditions} of {len(g.specialists)} specialists beat "
                       f"{g.joint} by >= {g.min_margin:g} points" + (f"; guards {', '.join(g.guards)}" if g.guards
                                                                     else ""))

    @study_app.command("run")
    def run(
        file: Path = FILE,
        out: Path = OUT,
        jobs: int = typer.Option(1, "--jobs", "-j", min=1, help="Runs side by side, each on one thread (a "
                                 "subprocess each when > 1; its log in RUN/study.log)."),
        stages: list[str] = typer.Option([], "--stage", help="Only these stages (repeatable) [default: all, in "
                                         "order]."),
        allow_commit_change: bool = typer.Option(False, "--allow-commit-change", help="Continue a study first run "
                                                 "from another git commit (recorded in study.json)."),
    ) -> None:
        """Run what is missing (finished runs are skipped, so an interrupted study resumes), then summarise.

        Builds missing suites, trains and evaluates each (stage, suite, seed, variant) with the ablation's
        machinery; a stage with `selected: true` runs the selection's winner once its stage has finished.
        Refuses to continue a study from another commit than the one recorded in OUT/study.json.
        """
        from tsembed.experiments.study.run import execute
        from tsembed.experiments.study.spec import load_study
        from tsembed.experiments.study.summary import SUMMARY, summarize_study

        study = load_study(file)
        execute(study, out, stages or None, jobs, allow_commit_change)
        summarize_study(study, out)
        typer.echo((out / f"{SUMMARY}.md").read_text())

    @study_app.command("summarize")
    def summarize(file: Path = FILE, out: Path = OUT) -> None:
        """Write OUT/summary.{json,md} from the finished runs alone: tables per stage and suite family, the
        selection, and each comparison's paired difference with hierarchical bootstrap intervals."""
        from tsembed.experiments.study.spec import load_study
        from tsembed.experiments.study.summary import SUMMARY, summarize_study

        summarize_study(load_study(file), out)
        typer.echo((out / f"{SUMMARY}.md").read_text())

"""`tsembed train`: both stages from one YAML config."""

from __future__ import annotations

from pathlib import Path

import typer


def register(app: typer.Typer) -> None:
    @app.command("train")
    def train(
        config: Path = typer.Option(None, "--config", "-c", help="YAML training config (default: the packaged "
                                    "offline default, configs/default.yaml)."),
        overrides: list[str] = typer.Option([], "--set", help="Override a config key, e.g. --set optim.lr=5e-4 "
                                            "(repeatable; values parsed as YAML)."),
        resume: str = typer.Option(None, "--resume", help="'auto' (latest checkpoint in run.output_dir) or a "
                                   "checkpoint-<step> directory."),
    ) -> None:
        """Train a TSEmbed model: stage 1 (InfoNCE + routing losses), then stage 2 (EANS).

        Runs as one CPU process or under torchrun / accelerate launch unchanged.
        """
        from tsembed.training.config import default_config_path, load_train_config
        from tsembed.training.trainer import Trainer, init_distributed, shutdown_distributed

        cfg = load_train_config(config or default_config_path(), overrides)  # validated before any model loads
        init_distributed()
        final = Trainer(cfg).fit(resume=resume)
        shutdown_distributed()  # the Trainer (and its DDP) is gone by now
        typer.echo(f"model saved to {final}")

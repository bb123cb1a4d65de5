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

        Config keys (sections model, data, loss, eans, schedule, optim, run): each is documented in
        src/tsembed/training/config.py (the TrainConfig dataclasses; loss and eans in training/loss_config.py
        and training/eans.py) and shown with comments in the shipped src/tsembed/configs/default.yaml; an
        unknown key is an error that lists the valid ones.
        """
        from tsembed.training.config import default_config_path, load_train_config
        from tsembed.training.trainer import Trainer, init_distributed, shutdown_distributed

        cfg = load_train_config(config or default_config_path(), overrides)  # validated before any model loads
        init_distributed()
        final = Trainer(cfg).fit(resume=resume)
        shutdown_distributed()  # the Trainer (and its DDP) is gone by now
        typer.echo(f"model saved to {final}")

    @app.command("align")
    def align(
        suite: Path = typer.Option(..., "--suite", help="Offline suite directory (built by `tsembed data "
                                   "build-suite`); only its train-split emoji are used."),
        out: Path = typer.Option(..., "--out", help="Directory for bridge.safetensors and bridge.json."),
        steps: int = typer.Option(400, help="Optimiser steps."),
        batch_size: int = typer.Option(64, help="Captioned images per step (in-batch negatives)."),
        lr: float = typer.Option(1e-3, help="Projector learning rate."),
        seed: int = typer.Option(0, help="Seeds the projector init, the captions and the batch order."),
        recolour: bool = typer.Option(True, "--recolour/--no-recolour", help="Add hue-rotated copies of each emoji "
                                      "with their new colour in the caption (--no-recolour: the ablation)."),
        hue_copies: int = typer.Option(2, help="Hue-rotated copies per emoji."),
        canvases: int = typer.Option(1000, help="Multi-emoji canvases captioned with each emoji's place."),
        max_emoji: int = typer.Option(0, help="Align on a seeded sample of this many train emoji (0: all); for "
                                      "quick trials."),
        family_batches: bool = typer.Option(True, "--family-batches/--uniform-batches", help="Fill batches with "
                                            "whole emoji families (tones, genders, hue copies) so siblings are "
                                            "each other's negatives, or draw pairs uniformly."),
        overrides: list[str] = typer.Option([], "--set", help="Backbone option, e.g. --set image_size=160 (the "
                                            "bridge only fits a backbone with the same options)."),
        progress: bool = typer.Option(True, "--progress/--no-progress", help="Progress bars."),
    ) -> None:
        """Align the default backbone's visual projector on captions (LLaVA's stage 1), MiniLM frozen.

        Writes OUT/bridge.safetensors; train on it with `--set model.backbone.bridge=OUT/bridge.safetensors`
        (or `bridge: auto`, which aligns for data.suite and caches the result). Reruns with the same inputs reuse
        the file.
        """
        from tsembed.configtools import apply_overrides
        from tsembed.training.align import AlignConfig, align_bridge

        if not suite.is_dir():
            raise typer.BadParameter(f"{suite} is not a directory", param_hint="--suite")
        options: dict = {}
        apply_overrides(options, overrides)
        config = AlignConfig(steps=steps, batch_size=batch_size, lr=lr, seed=seed, recolour=recolour,
                             hue_copies=hue_copies, canvases=canvases, max_emoji=max_emoji,
                             family_batches=family_batches)
        path = align_bridge(suite, out, config, options, progress=progress)
        typer.echo(f"bridge written to {path}")

"""Command-line options that several sub-command modules share (torch-free, so ``tsembed --help`` stays fast).

It sits at the top of the package so that ``evaluation.cli``, ``inference.cli`` and ``experiments.cli`` can all
import it without making their packages import each other.
"""

from __future__ import annotations

import typer

#: Every command that loads a saved model takes it (``TSEmbedModel.from_pretrained(..., backbone_path=...)``).
BACKBONE_PATH = typer.Option(
    None, "--backbone-path", help="Load the backbone from this local directory or Hub id (from the local Hugging "
    "Face cache, never downloaded) instead of the one the model names, e.g. after the pretrained weights moved.",
)

#: ``ablate`` and ``task-scaling``: a variant with more overrides under its own name (``tsembed.experiments.variants``).
DERIVE = typer.Option(
    [], "--derive", help="Define a variant NAME=BASE:KEY=VALUE: the BASE variant plus this config override "
    "(repeat NAME to add keys), e.g. --derive lora80=lora:model.moe.rank=80 --variant lora80. Unlike --set, which "
    "changes the base config (the lora variant's rank is then num_experts × the base rank), it applies last.",
)

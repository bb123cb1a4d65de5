"""The `tsembed` command. Sub-commands import their heavy dependencies lazily so `--help` is instant."""

from __future__ import annotations

import logging
import sys

import typer

from tsembed.errors import TsembedError

app = typer.Typer(
    name="tsembed",
    help="Train, evaluate and serve universal multimodal embedding models with a Mixture of LoRA Experts.",
    no_args_is_help=True,
    add_completion=False,
    pretty_exceptions_enable=False,
)


@app.callback()
def _root(verbose: bool = typer.Option(False, "--verbose", "-v", help="Debug logging.")) -> None:
    logging.basicConfig(
        level=logging.DEBUG if verbose else logging.INFO,
        format="%(asctime)s %(levelname)s %(name)s: %(message)s",
        datefmt="%H:%M:%S",
    )


def _register_subcommands() -> None:
    """Sub-command groups live next to the code they drive; each module exposes a `register(app)`."""
    import importlib

    for module in ("tsembed.data.cli", "tsembed.training.cli", "tsembed.evaluation.cli", "tsembed.inference.cli",
                   "tsembed.experiments.cli"):
        try:
            mod = importlib.import_module(module)
        except ModuleNotFoundError as exc:
            if exc.name == module:  # that part of the package is not built yet
                continue
            raise
        mod.register(app)


_register_subcommands()


def main(argv: list[str] | None = None) -> int:
    """Entry point; returns the exit status so tests can call `main([...])`."""
    try:
        app(args=argv, standalone_mode=False)
    except TsembedError as exc:
        typer.secho(f"error: {exc}", fg=typer.colors.RED, err=True)
        return 2
    except SystemExit as exc:  # typer/click exit inside standalone_mode=False
        return int(exc.code or 0)
    except typer.Exit as exc:
        return exc.exit_code
    except Exception as exc:  # click usage errors
        import click

        if isinstance(exc, click.ClickException):
            exc.show()
            return exc.exit_code
        raise
    return 0


if __name__ == "__main__":  # pragma: no cover
    sys.exit(main())

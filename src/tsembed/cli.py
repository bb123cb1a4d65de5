"""The `tsembed` command. Sub-commands import their heavy dependencies lazily so `--help` is instant."""

from __future__ import annotations

import itertools
import logging
import sys
import traceback

import typer
from typer._click.exceptions import NoArgsIsHelpError  # typer is pinned; it exports no public name

from tsembed.errors import TsembedError

app = typer.Typer(
    name="tsembed",
    help="Train, evaluate and serve universal multimodal embedding models with a Mixture of LoRA Experts.",
    no_args_is_help=True,
    add_completion=False,
    pretty_exceptions_enable=False,
    rich_markup_mode=None,  # rich markup would eat help texts' [default: ...]
)


def _print_version(value: bool) -> None:
    if value:
        from tsembed import __version__

        typer.echo(f"tsembed {__version__}")
        raise typer.Exit()


@app.callback()
def _root(
    verbose: bool = typer.Option(False, "--verbose", "-v", help="Debug logging."),
    version: bool = typer.Option(False, "--version", help="Print the version and exit.", is_eager=True,
                                 callback=_print_version),
) -> None:
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
    """Entry point; returns the exit status so tests can call `main([...])`.

    Every error is one line on stderr, never a traceback (``-v`` adds it): exit 2 for usage errors
    (unknown command or option, a missing path), 1 for runtime errors (bad config, data or weights).
    """
    args = sys.argv[1:] if argv is None else list(argv)
    root_options = itertools.takewhile(lambda a: a.startswith("-"), args)  # options before the sub-command
    verbose = any(a in ("-v", "--verbose") for a in root_options)
    try:
        app(args=args, standalone_mode=False, prog_name="tsembed")
    except SystemExit as exc:  # typer/click exit inside standalone_mode=False
        return int(exc.code or 0)
    except typer.Exit as exc:
        return exc.exit_code
    except typer.Abort:
        return _fail("aborted", 1, verbose)
    except NoArgsIsHelpError as exc:  # `tsembed data`: the help is the message
        exc.show()
        return exc.exit_code
    except typer.TyperException as exc:  # click's usage errors (typer vendors click: not click.ClickException)
        ctx = getattr(exc, "ctx", None)
        hint = f" (see '{ctx.command_path} --help')" if ctx is not None else ""
        return _fail(exc.format_message() + hint, getattr(exc, "exit_code", 2), verbose)
    except TsembedError as exc:
        return _fail(str(exc), 1, verbose)
    except Exception as exc:  # a library's error, e.g. a truncated weights file: still one line
        return _fail(f"{type(exc).__name__}: {exc} (run 'tsembed -v ...' for the traceback)", 1, verbose)
    return 0


def _fail(message: str, code: int, verbose: bool) -> int:
    if verbose:
        traceback.print_exc()
    typer.secho(f"error: {message}", fg=typer.colors.RED, err=True)
    return code


if __name__ == "__main__":  # pragma: no cover
    sys.exit(main())

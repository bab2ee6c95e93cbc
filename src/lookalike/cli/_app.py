"""The `lookalike` Typer app, on its own so that the command modules and the package can both import it."""

from __future__ import annotations

import typer

from .. import __version__
from ._help import Group

app = typer.Typer(
    name="lookalike",
    help="Train CNN image classifiers fast, and search images by content with CNN features.",
    no_args_is_help=True,
    add_completion=False,
    pretty_exceptions_enable=False,
    rich_markup_mode="rich",
    cls=Group,
)


def _version(value: bool) -> None:
    if value:
        print(f"lookalike {__version__}")
        raise typer.Exit()


@app.callback()
def _root(
    version: bool = typer.Option(False, "--version", callback=_version, is_eager=True, help="Show the version."),
) -> None:
    """Train CNN image classifiers fast, and search images by content with CNN features."""

"""The `lookalike` command. Thin: parse options, call the library, print, map user errors to exit code 2.

Heavy libraries (torch, timm, FastAPI) are imported inside the commands, so `lookalike --help` is instant.
"""

from __future__ import annotations

import sys

import typer

from .. import __version__
from ..errors import LookalikeError
from ..paths import printable

app = typer.Typer(
    name="lookalike",
    help="Train CNN image classifiers fast, and search images by content with CNN features.",
    no_args_is_help=True,
    add_completion=False,
    pretty_exceptions_enable=False,
    rich_markup_mode="rich",
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


# Each module adds its commands to `app`.
from . import eval_cmd, export_cmds, models_cmd, search_cmds, serve_cmd, train_cmds  # noqa: E402,F401


def main() -> None:
    from ..distributed import GROUP_LOST_EXIT, GroupLost, launched, main_prints, reported_elsewhere

    says_interrupted = main_prints() and not launched()  # under `--nproc`, the launcher says it once

    try:
        app()
    except LookalikeError as exc:
        if not reported_elsewhere(exc):  # under torchrun, rank 0 (or the launcher) speaks for the group
            print(f"error: {printable(str(exc))}", file=sys.stderr)  # a file name may not be valid UTF-8
        sys.exit(GROUP_LOST_EXIT if isinstance(exc, GroupLost) else 2)
    except KeyboardInterrupt:
        if says_interrupted:
            print("interrupted", file=sys.stderr)
        sys.exit(130)
    except SystemExit as exc:
        if exc.code == 130 and says_interrupted:  # Typer turns Ctrl-C inside a command into a silent exit 130
            print("interrupted", file=sys.stderr)
        raise

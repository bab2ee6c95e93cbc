"""The `lookalike` command. Thin: parse options, call the library, print, map user errors to exit code 2.

Heavy libraries (torch, timm, FastAPI) are imported inside the commands, so `lookalike --help` is instant.
"""

from __future__ import annotations

import sys

import typer
from typer.core import TyperCommand

from ..errors import LookalikeError
from ..paths import printable
from ._app import app
from ._help import Command

# Each module adds its commands to `app`.
from . import dupes_cmd, eval_cmd, export_cmds, models_cmd, search_cmds, serve_cmd, train_cmds  # noqa: E402,F401

# The commands in the order a user meets them, each with its line in `lookalike --help`.
COMMANDS = {
    "demo": "Try search on a gallery of shipped photos and edited copies; writes report.html.",
    "index": "Index the images under a folder (only new or changed files are read again).",
    "search": "Find the indexed images that look most like each query image.",
    "compare": "Print the pairwise distances of two or more images.",
    "dupes": "Group the byte-identical files and copies of an index, and act on them (move, trash, link).",
    "undo": "Reverse what a `dupes --action` run did, from its journal.",
    "serve": "Serve the search page and REST API over an index.",
    "train": "Train a classifier on CIFAR-10 or on your own class folders.",
    "evaluate": "Test accuracy, per-class accuracy and confusion matrix of a checkpoint.",
    "export": "Export an index's vectors with their paths to parquet or .npy.",
    "import": "Bring vectors computed elsewhere into an index.",
    "models": "List the registered models with their parameter counts.",
    "eval-search": "Measure retrieval quality on a benchmark folder (mAP, precision).",
}


def _command_name(info: typer.models.CommandInfo) -> str:
    return info.name or info.callback.__name__.replace("_", "-")


for _info in app.registered_commands:
    _info.cls = Command if _info.cls in (None, TyperCommand) else _info.cls
    _info.short_help = _info.short_help or COMMANDS.get(_command_name(_info))
app.registered_commands.sort(key=lambda info: list(COMMANDS).index(_command_name(info))
                             if _command_name(info) in COMMANDS else len(COMMANDS))


def _click_exceptions():
    """click's exception classes as this Typer raises them (recent Typer releases carry their own copy of click)."""
    try:
        from typer._click import exceptions
    except ImportError:
        from click import exceptions
    return exceptions


def main() -> None:
    from ..distributed import GROUP_LOST_EXIT, GroupLost, as_group_lost, launched, main_prints, reported_elsewhere

    says_interrupted = main_prints() and not launched()  # under `--nproc`, the launcher says it once
    click_errors = _click_exceptions()

    try:
        # Not standalone: click's own usage errors come back here, to be said in one line like every other.
        code = app(standalone_mode=False)
        if isinstance(code, int) and code:
            sys.exit(code)
    except click_errors.NoArgsIsHelpError as exc:
        print(exc.ctx.get_help() if exc.ctx else "")
        sys.exit(0)
    except click_errors.UsageError as exc:
        command = exc.ctx.command_path if exc.ctx else "lookalike"
        print(f"error: {exc.format_message()} (see `{command} --help`)", file=sys.stderr)
        sys.exit(2)
    except typer.Abort:
        if says_interrupted:
            print("interrupted", file=sys.stderr)
        sys.exit(130)
    except ModuleNotFoundError as exc:  # a module of an extra this install lacks: name the install command
        from ..extras import missing_message

        if missing_message(exc.name) is None:
            raise
        print(f"error: {missing_message(exc.name)}", file=sys.stderr)
        sys.exit(2)
    except Exception as exc:
        exc = as_group_lost(exc)
        if not isinstance(exc, LookalikeError):
            raise
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

"""How the help of `lookalike` and of each command reads, set once for every command.

- Option values are named as a usage line names them (`--index PATH`, `--top INTEGER`; flags by their names
  alone), never by a type tag (`<path>`, `<bool>`); arguments by their names in capitals (`FOLDER`,
  `QUERY...`), in the usage line as well.
- Help texts are plain text: a `[default: ...]` written in an option's help is shown as written, not read as
  markup (which would drop it).
"""

from __future__ import annotations

from typing import Any

from typer.core import TyperCommand, TyperGroup

_TYPE_NAMES = {int: "INTEGER", float: "FLOAT", str: "TEXT", bool: ""}


def _type_name(param: Any) -> str:
    """INTEGER, FLOAT, TEXT or PATH for an option's value; "" for a flag."""
    from pathlib import PurePath
    from typing import get_args

    if getattr(param, "is_flag", False) or getattr(param, "count", False):
        return ""
    annotation = getattr(getattr(param, "type_descriptor", None), "annotation", None)
    if annotation is not None:
        inner = [a for a in get_args(annotation) if a is not type(None)]
        if inner and annotation not in _TYPE_NAMES:  # Optional[X], list[X]
            annotation = inner[0]
        if isinstance(annotation, type) and issubclass(annotation, PurePath):
            return "PATH"
        if annotation in _TYPE_NAMES:
            return _TYPE_NAMES[annotation]
    name = getattr(getattr(param, "type", None), "name", None)
    return str(name).upper() if name else "VALUE"


def _no_type_tag(ctx: Any = None) -> None:
    return None


def _tidy(param: Any) -> None:
    """Set `param`'s metavar and escape its help, once."""
    if getattr(param, "_lookalike_tidy", False):
        return
    if param.param_type_name == "argument":
        if param.metavar is None:
            param.metavar = (param.name or "value").upper()
        param.display_type_rich = _no_type_tag  # the name column already says what it is
    elif param.metavar is None:
        param.metavar = _type_name(param)
    if getattr(param, "help", None):
        param.help = _plain(param.help)
    param._lookalike_tidy = True


def _plain(text: str) -> str:
    from rich.markup import escape

    return escape(text)


def _paragraphs(text: str) -> str:
    """A docstring's paragraphs, each on one line, for the help to wrap to the terminal's width."""
    return "\n\n".join(" ".join(p.split()) for p in text.split("\n\n"))


class _TidyHelp:
    """Tidies every parameter as the command lists them: for its help, its usage line and its errors."""

    def get_params(self, ctx: Any) -> list:
        params = super().get_params(ctx)  # type: ignore[misc]
        for param in params:
            _tidy(param)
        return params


class Command(_TidyHelp, TyperCommand):
    """A `lookalike` command."""

    def __init__(self, *args: Any, **kwargs: Any) -> None:
        super().__init__(*args, **kwargs)
        self.help = _plain(_paragraphs(self.help)) if self.help else self.help
        self.short_help = _plain(self.short_help) if self.short_help else self.short_help

    def collect_usage_pieces(self, ctx: Any) -> list[str]:
        """`[OPTIONS] FOLDER`, `[OPTIONS] QUERY...`: optional arguments in brackets."""
        pieces = [self.options_metavar] if self.options_metavar else []
        for param in self.get_params(ctx):
            if param.param_type_name == "argument":
                name = param.metavar + ("..." if param.nargs != 1 else "")
                pieces.append(name if param.required else f"[{name}]")
        return pieces


class Group(_TidyHelp, TyperGroup):
    """The `lookalike` group."""

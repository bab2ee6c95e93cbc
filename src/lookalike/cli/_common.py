"""Output helpers shared by the CLI commands. Only the CLI prints; the library returns values."""

from __future__ import annotations

import json
import sys
from typing import Any, Optional

from rich.console import Console

from ..paths import printable

console = Console(stderr=True)  # progress and tables for people go to stderr, so stdout stays clean JSON
out = Console()


def _printable_strings(obj: Any) -> Any:
    if isinstance(obj, str):
        return printable(obj)
    if isinstance(obj, dict):
        return {_printable_strings(k): _printable_strings(v) for k, v in obj.items()}
    if isinstance(obj, (list, tuple)):
        return [_printable_strings(v) for v in obj]
    return obj


def print_json(obj: Any) -> None:
    """One JSON document on stdout; file names that are not valid UTF-8 appear escaped (`paths.printable`)."""
    sys.stdout.write(json.dumps(_printable_strings(obj), indent=2, default=lambda o: printable(str(o))) + "\n")
    sys.stdout.flush()


def warn(message: str) -> None:
    from rich.markup import escape

    # Escaped: a file name in the message may hold brackets, which rich would read as markup.
    console.print("[yellow]warning:[/yellow] " + escape(printable(message)), highlight=False, soft_wrap=True)


LAYERS_HELP = ("Feature maps pooled: head (the backbone's last), blocks (the last block's, before the head's 1x1 "
               "convolution) or head,blocks (each pooled and normalised, then joined; EfficientNet-Lite only)")
TRIM_HELP = ("Take uniform white or black borders (padding, letterboxing, scan margins) off each photo before "
             "embedding; checkpoints default to off")


VERIFY_HELP = ("Re-rank the first N results by spatial verification: SIFT matches between the query and each "
               "result that agree on one affine transform move it up (0: off; up to 200).")


def preset_default(option: str) -> str:
    """`[default: 0; 1 with --quality high]`: an option's value in each preset, for its help."""
    from ..search.presets import PRESETS

    values = {name: getattr(p, option) for name, p in PRESETS.items()}
    shown = [f"{values['default']}"] + [f"{v} with --quality {name}" for name, v in values.items()
                                        if name != "default" and v != values["default"]]
    return f"[default: {'; '.join(shown)}]"


def quality_help(*fields: str) -> str:
    """The help of `--quality` for a command that takes `fields` from the preset, spelled out as options."""
    from ..search.presets import PRESETS

    high = {field: getattr(PRESETS["high"], field) for field in fields}
    spelled = " ".join(f"--{key}" if value is True else f"--{key} {value}" for key, value in high.items()
                       if value not in (None, False))
    return (f"Quality preset: {' or '.join(PRESETS)}; high is {spelled} (slower, more accurate). Options given "
            "explicitly override it.")


def ranking(quality: str, qe: Optional[int], dba: Optional[int], alpha: float, verify: Optional[int]):
    """The `query.Expansion` and verifier of a search: `--quality`'s preset, explicit options over it (a bad
    value fails with one line, before any index opens)."""
    from ..search.presets import pick, preset
    from ..search.retrieve.query import Expansion

    chosen = preset(quality)
    expansion = Expansion(qe=pick(qe, chosen.qe), dba=pick(dba, chosen.dba), alpha=alpha)
    return expansion, verifier_for(pick(verify, chosen.verify), chosen.verify_detail)


def verifier_for(shortlist: int, detail: str = "fast"):
    """A `verify.Verifier` of `shortlist` results at `detail`, None for 0 (a bad number fails with one line)."""
    if shortlist == 0:
        return None
    from ..search.retrieve.verify import Verifier

    return Verifier(shortlist, detail=detail)

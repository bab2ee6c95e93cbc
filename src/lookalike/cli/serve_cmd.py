"""`lookalike serve`: the web page and REST API over an index, under uvicorn."""

from __future__ import annotations

import re
from pathlib import Path
from typing import List, Optional

import typer

from ..errors import LookalikeError
from ..web.hosts import is_loopback
from ._app import app
from ._common import VERIFY_HELP, console, preset_default, quality_help, ranking, warn

_is_loopback = is_loopback  # the name the tests and older callers use
TOKEN_CHARS = re.compile(r"[A-Za-z0-9._~-]+")  # goes into a URL and a cookie unescaped


def _check_token(token: str) -> None:
    if not TOKEN_CHARS.fullmatch(token):
        raise LookalikeError("--token may hold only letters, digits and . _ ~ - (it goes into a URL and a cookie)")
    if len(token) < 16:
        warn("the token is shorter than 16 characters: anyone who can reach the server may guess it "
             "(python -c 'import secrets; print(secrets.token_urlsafe())' makes a good one)")


@app.command()
def serve(
    index: Optional[Path] = typer.Option(
        None, "--index", "-i", help="Index folder, or the image folder it was built for. [default: the current folder]"
    ),
    host: str = typer.Option("127.0.0.1", help="Address to bind. Anything but loopback exposes your images."),
    port: int = typer.Option(8000, min=0, max=65535, help="Port to listen on; 0 picks a free one (printed)."),
    device: str = typer.Option("cpu", help="cpu, cuda or auto: where query images are embedded."),
    max_upload_mb: float = typer.Option(20.0, min=0.001, help="Largest accepted upload, in MB."),
    allowed_host: List[str] = typer.Option(
        [], "--allowed-host", metavar="NAME",
        help="Also answer requests for this host name (a domain that points here); repeatable. The machine's "
             "own names and addresses are always allowed, any other name gets 400."),
    token: Optional[str] = typer.Option(
        None, "--token", envvar="LOOKALIKE_TOKEN", show_envvar=True,
        help="Require this secret: 'Authorization: Bearer TOKEN', or open /?token=TOKEN once in the browser "
             "(sets a cookie). Use it whenever others can reach the server."),
    limit_concurrency: int = typer.Option(
        64, min=1, help="Connections or requests at once; more get 503 until some finish."),
    quality: str = typer.Option("default", "--quality", help=quality_help("qe", "dba", "verify")),
    qe: Optional[int] = typer.Option(None, "--qe", help="Searches: alpha-query expansion with this many neighbours (0: off). " + preset_default("qe")),
    dba: Optional[int] = typer.Option(None, "--dba", help="Searches: database-side augmentation with this many neighbours (0: off). " + preset_default("dba")),
    alpha: float = typer.Option(3.0, "--alpha", help="Weight exponent of the --qe and --dba neighbours (0 to 16)."),
    verify: Optional[int] = typer.Option(None, "--verify", help="Searches: " + VERIFY_HELP + " " + preset_default("verify")),
    move_to: Optional[Path] = typer.Option(
        None, "--move-to", metavar="DIR",
        help="The page's Move button moves images here (outside the library), journalled like `dupes --action move`."),
    read_only: bool = typer.Option(False, "--read-only", help="The page only browses and searches: no trash, move or undo."),
) -> None:
    """Serve the search page and REST API (OpenAPI schema at /openapi.json) over an index."""
    from .. import onnx_runtime
    from ..device import one_thread_per_call
    from ..web import server
    from ..web.app import create_app
    from ..web.hosts import as_host, machine_hosts

    # The server's requests run side by side and fill the cores: each forward pass and each matrix product on its
    # request's thread alone.
    onnx_runtime.one_thread_per_run()

    expansion, verifier = ranking(quality, qe, dba, alpha, verify)
    index_path = index.expanduser() if index is not None else Path.cwd()  # the index accepts its image folder too
    if token is not None:
        _check_token(token)
    if not is_loopback(host):
        if token:
            warn(f"listening on {host}: anyone who can reach this machine and has the token can search and view "
                 "the indexed images")
        else:
            console.print(
                f"[bold red]WARNING: listening on {host} without --token: anyone who can reach this machine can "
                "search and view the indexed images. Add --token SECRET (or LOOKALIKE_TOKEN) for a shared "
                "server.[/bold red]", highlight=False, soft_wrap=True)
    # Always check the Host header: a page elsewhere must not reach the server through DNS rebinding.
    allowed = machine_hosts(host) + [as_host(name) for name in allowed_host]
    sockets = server.listen(host, port, limit_concurrency)  # before the model loads: a busy port fails at once
    with console.status("loading the index and the model…"):
        try:
            web_app = create_app(
                index_path,
                device=device,
                max_upload_bytes=int(max_upload_mb * 1_000_000),
                allowed_hosts=allowed,
                token=token or None,
                expansion=expansion,
                verifier=verifier,
                move_to=move_to.expanduser() if move_to is not None else None,
                read_only=read_only,
                # Trash and move change the library: not for anyone who can merely reach the port.
                allow_actions=is_loopback(host) or bool(token),
            )
        except LookalikeError:
            for sock in sockets:
                sock.close()
            if index is None:
                raise LookalikeError(
                    "no index in the current folder: pass --index PATH (an index, or a folder indexed with "
                    "`lookalike index FOLDER`)"
                ) from None
            raise
    one_thread_per_call()
    port = server.bound_port(sockets)  # --port 0: the one the system picked
    facts = web_app.state.service.stats()
    for note in facts.get("notes", []):
        warn(note)
    shown = f"[{host}]" if ":" in host else host
    if host in ("0.0.0.0", "::"):
        shown = "127.0.0.1"
    query = f"?token={token}" if token else ""
    console.print(
        f"{facts['count']:,} images, {facts['model']} · open [bold]http://{shown}:{port}/{query}[/bold]  (Ctrl-C stops)",
        highlight=False,
    )
    server.run(web_app, host, sockets, limit_concurrency=limit_concurrency)

"""`lookalike serve`: the web page and REST API over an index, under uvicorn."""

from __future__ import annotations

import ipaddress
import socket
from pathlib import Path
from typing import Optional

import typer

from ..errors import LookalikeError
from . import app
from ._common import console, warn


LOOPBACK_NAMES = ["127.0.0.1", "localhost", "[::1]"]


def _is_loopback(host: str) -> bool:
    if host == "localhost":
        return True
    try:
        return ipaddress.ip_address(host).is_loopback
    except ValueError:
        return False


def _check_port(host: str, port: int) -> None:
    """Fail with one line before loading the model when the address cannot be bound."""
    try:
        infos = socket.getaddrinfo(host, port, type=socket.SOCK_STREAM)
    except socket.gaierror as exc:
        raise LookalikeError(f"cannot listen on {host}:{port}: {exc.strerror or exc}") from None
    family, kind, proto, _, address = infos[0]
    with socket.socket(family, kind, proto) as sock:
        sock.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEADDR, 1)
        try:
            sock.bind(address)
        except OSError as exc:
            raise LookalikeError(f"cannot listen on {host}:{port}: {exc.strerror or exc}") from None


@app.command()
def serve(
    index: Optional[Path] = typer.Option(
        None, "--index", "-i", help="Index folder, or the image folder it was built for. Default: the current folder."
    ),
    host: str = typer.Option("127.0.0.1", help="Address to bind. Anything but loopback exposes your images."),
    port: int = typer.Option(8000, min=0, max=65535, help="Port to listen on."),
    device: str = typer.Option("cpu", help="cpu, cuda or auto: where query images are embedded."),
    max_upload_mb: float = typer.Option(20.0, min=0.001, help="Largest accepted upload, in MB."),
) -> None:
    """Serve the search page and REST API (OpenAPI schema at /openapi.json) over an index."""
    import uvicorn

    from ..web.app import create_app

    index_path = index.expanduser() if index is not None else Path.cwd()  # the index accepts its image folder too
    if not _is_loopback(host):
        warn(f"listening on {host}: anyone who can reach this machine can search and view the indexed images")
    _check_port(host, port)
    with console.status("loading the index and the model…"):
        try:
            web_app = create_app(
                index_path,
                device=device,
                max_upload_bytes=int(max_upload_mb * 1_000_000),
                # On loopback, answer loopback names only: no web page can reach us through DNS rebinding.
                allowed_hosts=LOOPBACK_NAMES + [f"[{host}]" if ":" in host else host] if _is_loopback(host) else None,
            )
        except LookalikeError:
            if index is None:
                raise LookalikeError(
                    "no index in the current folder: pass --index PATH (an index, or a folder indexed with "
                    "`lookalike index FOLDER`)"
                ) from None
            raise
    facts = web_app.state.service.stats()
    shown = f"[{host}]" if ":" in host else host
    console.print(
        f"{facts['count']:,} images, {facts['model']} · open [bold]http://{shown}:{port}/[/bold]  (Ctrl-C stops)",
        highlight=False,
    )
    uvicorn.run(web_app, host=host, port=port, log_level="warning", access_log=False)

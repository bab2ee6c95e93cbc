"""`lookalike models`: every registered model with its parameter count."""

from __future__ import annotations

import typer

from ._app import app
from ._common import out, print_json


# What each registry kind means to a user: "cifar" entries are the nets `lookalike train` trains from scratch,
# on CIFAR-10 or on photos.
KIND_SHOWN = {"cifar": "to train", "pretrained": "pretrained"}


@app.command("models")
def models_command(
    json_out: bool = typer.Option(False, "--json", help="Print one JSON list on stdout."),
) -> None:
    """List the registered models (CIFAR nets to train, pretrained backbones for search) with parameter counts."""
    from rich.table import Table

    from ..models import count_parameters, create_model, get_model_entry, list_models

    rows = []
    for name in list_models():
        entry = get_model_entry(name)
        # Pretrained backbones are built without weights here: only their shape matters for the count.
        model = create_model(name, pretrained=False) if entry.kind == "pretrained" else create_model(name)
        rows.append({"name": name, "kind": KIND_SHOWN.get(entry.kind, entry.kind), "parameters": count_parameters(model),
                     "description": entry.description})
    if json_out:
        print_json(rows)
        return
    table = Table("model", "kind", "parameters", "description")
    for r in rows:
        table.add_row(r["name"], r["kind"], f"{r['parameters'] / 1e6:.2f} M", r["description"])
    out.print(table)

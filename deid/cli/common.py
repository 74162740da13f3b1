"""What several ``deid`` sub-commands share. Every other ``deid.cli`` module may import this
one; it imports none of them (so no two command modules import each other)."""

from __future__ import annotations

import logging
from pathlib import Path

import typer


def load_manifest_or_exit(manifest: Path):
    """The validated manifest, or its errors on stderr and exit status 2."""
    from deid.config import ManifestError, load_manifest

    try:
        return load_manifest(manifest)
    except ManifestError as exc:
        typer.echo(str(exc), err=True)
        raise typer.Exit(2) from None


def echo_card(title: str, card: dict, json_out: bool = False, width: int = 28) -> None:
    """A model file's card: JSON only (``json_out``), or a title line and one line per key,
    sorted (lists and mappings as JSON)."""
    import json

    if json_out:
        typer.echo(json.dumps(card, indent=2, sort_keys=True))
        return
    typer.echo(title)
    for k in sorted(card):
        v = card[k]
        typer.echo(f"  {k:{width}s} {json.dumps(v) if isinstance(v, (dict, list)) else v}")


def setup_logging() -> None:
    """Warnings and errors of deid's loggers on stderr, one line each."""
    logging.basicConfig(level=logging.WARNING, format="%(levelname)s: %(message)s")

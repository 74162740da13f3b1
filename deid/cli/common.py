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


def setup_logging() -> None:
    """Warnings and errors of deid's loggers on stderr, one line each."""
    logging.basicConfig(level=logging.WARNING, format="%(levelname)s: %(message)s")

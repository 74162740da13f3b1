"""``deid audit-dp MANIFEST``: empirical privacy audit of a dp-image manifest (thin wrapper over
:func:`deid.evaluate.dp_audit.audit_dp`). Exit 0: the lower bound is at or below the claim;
1: VIOLATION (the bound exceeds the claimed epsilon); 2: the audit could not run."""

from __future__ import annotations

from pathlib import Path

import typer

from deid.cli.common import load_manifest_or_exit, setup_logging


def audit_dp_cmd(
    manifest: Path = typer.Argument(..., help="job manifest (YAML) whose anonymize.method is dp-image"),
    trials: int = typer.Option(5000, "--trials", min=4, help="releases of each face of each pair (half choose the test, half measure it)"),
    pairs: int = typer.Option(2, "--pairs", min=0, help="worst-case pairs of public faces (farthest apart in the clipped latent)"),
    alpha: float = typer.Option(0.05, "--alpha", min=1e-9, max=0.5, help="1 - confidence of the lower bound"),
    public: str = typer.Option(None, "--public", help="folder of PUBLIC face photos (default: the latent model's reference set)"),
    max_faces: int = typer.Option(150, "--max-faces", min=2, help="public photos to read (evenly spaced over the folder)"),
    corners: bool = typer.Option(True, "--corners/--no-corners", help="also test the out-of-bounds corner probe pair"),
    view: str = typer.Option("code", "--view", help="code: the noisy code (what the claim is about); image: decoded, re-encoded"),
    claim_epsilon: float = typer.Option(None, "--claim-epsilon", min=1e-9, help="audit this epsilon instead of the manifest's, with the manifest's noise"),
    out: Path = typer.Option(None, "--out", help="write the result as JSON (no latents, noise, images or names)"),
    no_progress: bool = typer.Option(False, "--no-progress", help="no progress bar"),
) -> None:
    """Audit a dp-image manifest's epsilon empirically: a Clopper-Pearson lower bound beside the claim."""
    from deid.evaluate.dp_audit import DpAuditError, audit_dp, write_json
    from deid.privacy.audit_dp import format_table

    setup_logging()
    m = load_manifest_or_exit(manifest)
    try:
        result = audit_dp(m, public=public, trials=trials, pairs=pairs, alpha=alpha, max_faces=max_faces,
                          corners=corners, view=view, claim_epsilon=claim_epsilon, progress=not no_progress)
    except (DpAuditError, ValueError) as exc:
        typer.echo(f"error: {manifest}: {exc}", err=True)
        raise typer.Exit(2) from None
    p = result["public"]
    typer.echo(f"{manifest}: dp-image audit, {p['faces']} public faces from {p['uri']} "
               f"({p['images_read']} photos read)")
    typer.echo(format_table(result))
    if out is not None:
        typer.echo(f"  json  {write_json(result, out)}")
    if result["verdict"] != "consistent":
        raise typer.Exit(1)

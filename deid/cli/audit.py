"""``deid audit export MANIFEST --public OUT``: a releasable copy of a job's audit
(:mod:`deid.audit.public`)."""

from __future__ import annotations

from pathlib import Path

import typer

from deid.cli.common import load_manifest_or_exit

audit_app = typer.Typer(add_completion=False, no_args_is_help=True,
                        help="Work with a job's audit: export a public copy.")


@audit_app.command("export")
def export_cmd(
    manifest: Path = typer.Argument(..., help="the job's manifest (YAML): where its audit is, its naming secret"),
    public: str = typer.Option(..., "--public", help="where to write the public audit (one Parquet file: "
                               "a local path or an fsspec URI); it may sit in the release"),
    run_id: str = typer.Option(None, "--run", help="one run only (default: every run of the audit)"),
) -> None:
    """Write a releasable audit: statuses, methods, params, epsilons and checks per record, with
    record ids keyed by the naming secret and no input names, URIs or hashes."""
    from deid.audit.public import export_public
    from deid.io.locations import overlap
    from deid.io.write import naming_key

    m = load_manifest_or_exit(manifest)
    for field, where in (("input.uri", m.input.uri), ("audit.uri", m.audit_uri),
                         ("output.quarantine_uri", m.quarantine_uri)):
        if overlap(public, where):
            typer.echo(f"error: --public {public} overlaps {field} ({where}): the public audit goes where you "
                       f"publish (the release, or a folder of its own), never under the input, the private "
                       f"audit or the quarantine", err=True)
            raise typer.Exit(2)
    try:
        secret = naming_key(m.output.naming_key_env, m.output.naming_key_file)
        res = export_public(m.audit_uri, public, secret, release_root=m.output.uri, run_id=run_id,
                            storage_options=m.audit.storage_options, out_storage_options=m.output.storage_options)
    except (OSError, ValueError) as exc:
        typer.echo(f"error: {exc}", err=True)
        raise typer.Exit(2) from None
    counts = ", ".join(f"{k} {v}" for k, v in sorted(res["statuses"].items()))
    typer.echo(f"public audit: {res['rows']} rows of {res['runs']} run(s) ({counts}) -> {res['out']}\n"
               f"  dropped: {', '.join(res['dropped'])}, faces.subject_spent_after; record ids keyed "
               f"with the naming secret (public_id)")

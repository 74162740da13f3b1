"""``deid`` command line: ``deid run MANIFEST``, ``deid validate MANIFEST`` and the sub-commands
(``audit``, ``audit-dp``, ``budget``, ``latent``, ``uap``, ``evaluate``, ``sweep``, ``plugins``) of the other ``deid.cli`` modules.

Each command module imports only :mod:`deid.cli.common` of the CLI; only this module imports
the command modules, to register them."""

from __future__ import annotations

import json
import sys
from pathlib import Path

import typer

from deid import __version__
from deid.cli.audit import audit_app
from deid.cli.audit_dp import audit_dp_cmd
from deid.cli.budget import app as budget_app
from deid.cli.common import load_manifest_or_exit
from deid.cli.evaluate import evaluate_cmd, sweep_cmd
from deid.cli.latent import latent_app
from deid.cli.plugins import plugins_cmd
from deid.cli.uap import uap_app

app = typer.Typer(add_completion=False, no_args_is_help=True, help="De-identify face image datasets, with an audit row for every record.")
app.add_typer(audit_app, name="audit")
app.add_typer(budget_app, name="budget")
app.add_typer(latent_app, name="latent")
app.add_typer(uap_app, name="uap")
app.command("evaluate")(evaluate_cmd)
app.command("sweep")(sweep_cmd)
app.command("plugins")(plugins_cmd)
app.command("audit-dp")(audit_dp_cmd)


@app.command()
def validate(manifest: Path = typer.Argument(..., help="job manifest (YAML)")) -> None:
    """Check a manifest: print every error with its field path; exit 2 if any."""
    m = load_manifest_or_exit(manifest)
    typer.echo(f"{manifest}: ok (method={m.anonymize.method}, detector={m.detect.backend}, "
               f"output={m.output.uri}, audit={m.audit_uri}, quarantine={m.quarantine_uri})")


@app.command()
def run(
    manifest: Path = typer.Argument(..., help="job manifest (YAML)"),
    no_progress: bool = typer.Option(False, "--no-progress", help="no progress bar"),
    inline: bool = typer.Option(False, "--inline", help="run in this process without Ray (= --engine local)"),
    engine: str = typer.Option(None, "--engine", help="auto | ray | local (default: the manifest's run.engine)"),
    json_summary: bool = typer.Option(False, "--json", help="print the summary as JSON"),
    dry: bool = typer.Option(False, "--dry-run", help="print the plan (records, budgets); process and charge nothing"),
    resume: bool = typer.Option(True, "--resume/--no-resume",
                                help="skip records an earlier run of the same job committed (default); "
                                     "--no-resume processes every input again"),
) -> None:
    """Run a job: anonymize every input, write outputs and the audit manifest."""
    from deid.io.listing import ListingError
    from deid.pipeline import RunError, dry_run, run_job

    m = load_manifest_or_exit(manifest)
    if dry:
        try:
            plan = dry_run(m, resume=resume)
        except (ListingError, RunError) as exc:
            typer.echo(f"error: {exc}", err=True)
            raise typer.Exit(2) from None
        width = max(len(k) for k in plan)
        typer.echo("dry run: nothing processed, nothing charged")
        for k, v in plan.items():
            typer.echo(f"  {k.replace('_', ' '):<{width}}  {v}")
        if "unlabeled_records" in plan:
            typer.echo("  (faces are counted at detection: each detected face is one charge)")
        return
    try:
        result = run_job(m, engine="local" if inline else engine, progress=False if no_progress else None,
                         resume=resume)
    except (ListingError, RunError) as exc:
        typer.echo(f"error: {exc}", err=True)
        raise typer.Exit(getattr(exc, "exit_code", 2)) from None  # 1: the run started and stopped early
    s = result.summary
    if s["inputs"] == 0:
        typer.echo(f"warning: no inputs under {m.input.uri} matched input.glob {m.input.glob} "
                   f"and input.extensions", err=True)
    if json_summary:
        typer.echo(json.dumps(s, indent=2, sort_keys=True))
        raise typer.Exit(1 if s.get("aborted") else 0)
    counts = ", ".join(f"{k} {v}" for k, v in s["counts"].items() if v) or "no inputs"
    d = s["id_distance"]
    dist = f"min {d['min']:.3f}, median {d['median']:.3f}" if d["n"] else "n/a"
    res = s.get("residual_faces") or {}
    missed = ", ".join(f"{k} {v}" for k, v in res.items() if v) or "none"
    treated = ", ".join(f"{k} {v}" for k, v in (s.get("face_treatments") or {}).items())
    typer.echo(
        f"\nrun {s['run_id']}: {s['inputs']} records in {s['wall_seconds']:.1f} s ({s['records_per_second']} rec/s)\n"
        f"  status       {counts}\n"
        f"  faces        {s['faces']}" + (f" ({treated})" if treated else "") + f"   identity distance {dist}\n"
        f"  missed faces {missed}  (found on outputs by the residual-face gate)\n"
        f"  released     {s['output_uri']}\n"
        f"  quarantine   {s['quarantine_uri']}\n"
        f"  audit        {s['audit_records_uri']}  (pandas.read_parquet)\n"
        f"  summary      {s['audit_uri'].rstrip('/')}/summary.json"
    )
    if s["counts"].get("skipped"):
        typer.echo(f"  resumed      {s['counts']['skipped']} records committed by earlier runs of this job were "
                   f"skipped (deid run --no-resume redoes them)")
    if s.get("aborted"):
        typer.echo(f"error: the run stopped early ({s['aborted']}); unprocessed records have failed rows "
                   f"with error_code=lost", err=True)
        raise typer.Exit(1)


@app.command()
def version() -> None:
    """Print the deid version."""
    typer.echo(__version__)


def main() -> None:  # console script entry point
    sys.exit(app())


if __name__ == "__main__":
    main()

"""``deid budget``: look at a privacy-budget ledger, make a subject-key secret.

Prints subject keys (keyed hashes) only; a ledger holds no names to print.
"""

from __future__ import annotations

import json
import math
from pathlib import Path

import typer

app = typer.Typer(add_completion=False, no_args_is_help=True, help="Privacy-budget ledger: spent and remaining per subject key.")


def _num(x: float):
    return x if math.isfinite(x) else ("inf" if x > 0 else "-inf")


@app.command()
def show(
    ledger: str = typer.Option(..., "--ledger", help="ledger file path (SQLite) or SQL URL"),
    max_epsilon: float | None = typer.Option(None, "--max-epsilon", help="cap per subject (default: the ledger's recorded policy)"),
    max_delta: float | None = typer.Option(None, "--max-delta", help="delta cap; Gaussian histories are reported at it (default: recorded policy)"),
    as_json: bool = typer.Option(False, "--json", help="print JSON"),
) -> None:
    """Per subject key: epsilon and delta spent, epsilon remaining, charges, uncommitted reservations."""
    from deid.privacy.ledger import Ledger, LedgerError

    try:
        led = Ledger.open(ledger, max_epsilon, max_delta, create=False)
    except (LedgerError, ValueError) as exc:
        typer.echo(f"error: {exc}", err=True)
        raise typer.Exit(2) from None
    try:
        rows = led.summary()
        caps = (led.max_epsilon, led.max_delta)
        url = led.url
    finally:
        led.close()

    if as_json:
        out = {
            "ledger": url,
            "max_epsilon": caps[0],
            "max_delta": caps[1],
            "subjects": [
                {"subject_key": r.subject_key, "eps_spent": _num(r.eps_spent), "delta_spent": r.delta_spent,
                 "eps_remaining": _num(r.eps_remaining), "n_charges": r.n_charges,
                 "n_reserved_uncommitted": r.n_reserved_uncommitted}
                for r in rows
            ],
        }
        typer.echo(json.dumps(out, indent=2))
        return
    typer.echo(f"ledger {url}\ncaps   epsilon {caps[0]:g} per subject, delta {caps[1]:g} "
               f"(Gaussian histories are reported at this delta)\n")
    if not rows:
        typer.echo("no subjects charged")
        return
    typer.echo(f"{'subject key':<64}  {'eps spent':>10}  {'delta':>9}  {'eps left':>10}  {'charges':>7}  {'uncommitted':>11}")
    for r in rows:
        typer.echo(f"{r.subject_key:<64}  {r.eps_spent:>10.6g}  {r.delta_spent:>9.3g}  {r.eps_remaining:>10.6g}  "
                   f"{r.n_charges:>7d}  {r.n_reserved_uncommitted:>11d}")
    exhausted = sum(1 for r in rows if r.eps_remaining <= 0)
    pending = sum(r.n_reserved_uncommitted for r in rows)
    typer.echo(f"\n{len(rows)} subjects, {exhausted} with no budget left, {pending} uncommitted reservations "
               f"(counted as spent)")


@app.command("init-key")
def init_key(path: Path = typer.Argument(..., help="where to write the new secret (must not exist)")) -> None:
    """Write a new random subject-key secret (mode 0600). Keep it with the ledger: a lost key orphans every budget."""
    from deid.privacy.keys import SubjectKeyError, write_new_secret

    try:
        kid = write_new_secret(path)
    except SubjectKeyError as exc:
        typer.echo(f"error: {exc}", err=True)
        raise typer.Exit(2) from None
    typer.echo(f"wrote a new subject-key secret to {path} (key id {kid}, mode 0600).\n"
               f"Back it up with the ledger; use it with: export DEID_SUBJECT_KEY=\"$(cat {path})\"")

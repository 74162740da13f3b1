"""``deid uap fit`` (a universal adversarial perturbation on PUBLIC faces) and ``deid uap info``."""

from __future__ import annotations

import shlex
import sys

import typer

from deid.cli.common import echo_card

uap_app = typer.Typer(add_completion=False, no_args_is_help=True,
                      help="Universal adversarial perturbations (AnonymousNet stage IV): fit one on PUBLIC faces "
                           "against MobileFaceNet, show its card.")


@uap_app.command()
def fit(
    images: str = typer.Option(..., "--images", help="local folder of PUBLIC photos (e.g. lfw-public-ref); never "
                               "the records you anonymize"),
    out: str = typer.Option(..., "--out", help="perturbation file to write (.npz, any fsspec URI)"),
    xi: float = typer.Option(8.0, "--xi", min=0.5, max=64.0, help="L-infinity bound, pixel units (0-255)"),
    faces: int = typer.Option(300, "--faces", min=16, help="photos used, evenly spaced over the sorted names"),
    holdout: float = typer.Option(0.25, "--holdout", min=0.0, max=0.9, help="fraction held out to measure fooling"),
    epochs: int = typer.Option(4, "--epochs", min=1, max=100, help="passes over the faces"),
    inner_steps: int = typer.Option(3, "--inner-steps", min=1, max=50, help="DeepFool steps per face and pass"),
    jitter: float = typer.Option(2.0, "--jitter", min=0.0, max=10.0, help="random misalignment during the fit (px)"),
    seed: int = typer.Option(0, "--seed", help="orders the passes and the jitter (a fit on public data)"),
    threads: int = typer.Option(0, "--threads", min=0, help="torch threads (0: torch's default)"),
    quiet: bool = typer.Option(False, "--quiet", help="no progress"),
) -> None:
    """Fit a universal perturbation against MobileFaceNet on public faces; write one file with its card."""
    from tqdm import tqdm

    from deid.evaluate.uap_fit import fit_public

    bars: dict = {}

    def progress(kind, *a) -> None:
        if quiet:
            return
        if kind == "faces":
            if "faces" not in bars:
                bars["faces"] = tqdm(total=faces, desc="public faces", unit="photo", file=sys.stderr)
            bars["faces"].update(a[0])
        else:
            _, n, rate = a
            if "faces" in bars:
                bars.pop("faces").close()
            if "epoch" not in bars:
                bars["epoch"] = tqdm(total=n, desc="universal perturbation", unit="pass", file=sys.stderr)
            bar = bars["epoch"]
            bar.update(1)
            bar.set_postfix(fooled=f"{rate:.1%}")

    command = "deid uap " + " ".join(shlex.quote(a) for a in sys.argv[2:]) if len(sys.argv) > 2 else "deid uap fit"
    try:
        u = fit_public(images, n=faces, holdout=holdout, xi=xi, epochs=epochs, inner_steps=inner_steps,
                       jitter=jitter, seed=seed, threads=threads or None, command=command, progress=progress)
        u.save(out)
    except (FileNotFoundError, ValueError, OSError) as exc:
        typer.echo(f"error: {exc}", err=True)
        raise typer.Exit(2) from None
    finally:
        for b in bars.values():
            b.close()
    c = u.card
    ho = (f"; held out ({c['n_heldout']} faces): fooled {c['heldout_fooling_rate']:.1%}, median distance "
          f"{c['heldout_median_distance']:.3f} (random signs of the same bound: {c['heldout_random_sign_fooling_rate']:.1%}, "
          f"{c['heldout_random_sign_median_distance']:.3f})") if "heldout_fooling_rate" in c else ""
    typer.echo(f"{out}: xi {c['xi']:g} against {c['recognizer']} from {c['n_fit']} public faces, fooled "
               f"{c['fit_fooling_rate']:.1%} (distance >= {c['target']:g}){ho}")


@uap_app.command()
def info(file: str = typer.Argument(..., help="perturbation file (any fsspec URI) or builtin:uap-mobilefacenet"),
         json_out: bool = typer.Option(False, "--json", help="print the card as JSON only")) -> None:
    """Print a perturbation's card and fingerprint."""
    from deid.anonymize.uap import UAP

    try:
        u = UAP.load(file)
    except ValueError as exc:
        typer.echo(f"error: {exc}", err=True)
        raise typer.Exit(2) from None
    echo_card(f"{file}: fingerprint {u.fingerprint}", dict(u.card, fingerprint=u.fingerprint), json_out, width=36)

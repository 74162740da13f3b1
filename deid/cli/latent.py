"""``deid latent fit`` (eigenfaces on a public reference folder) and ``deid latent info``."""

from __future__ import annotations

import json
import sys

import typer

from deid.latent.pca import DEFAULTS

latent_app = typer.Typer(add_completion=False, no_args_is_help=True,
                         help="Latent models for deepblur / dp-image: fit eigenfaces on a PUBLIC reference set, show a model card.")


@latent_app.command()
def fit(
    images: str = typer.Option(..., "--images", help="folder (any fsspec URI) of PUBLIC reference photos; never the records you anonymize"),
    out: str = typer.Option(..., "--out", help="model file to write (.npz, any fsspec URI)"),
    crop: int = typer.Option(DEFAULTS["crop_size"], "--crop", min=16, max=512, help="aligned crop size (px)"),
    components: int = typer.Option(DEFAULTS["n_components"], "--components", min=1, help="number of PCA components (latent dim)"),
    align_scale: float = typer.Option(DEFAULTS["align_scale"], "--align-scale", min=0.3, max=1.5, help="face scale inside the crop (<1: more margin)"),
    quantile: float = typer.Option(DEFAULTS["quantile"], "--quantile", min=0.0, max=0.49, help="bounds: per-component quantile q and 1-q of the reference codes"),
    faces: str = typer.Option(DEFAULTS["faces"], "--faces", help="all | largest: which faces of a photo to use"),
    min_face: float = typer.Option(DEFAULTS["min_face"], "--min-face", min=0.0, help="skip faces smaller than this (px, box size)"),
    upsample: int = typer.Option(DEFAULTS["upsample"], "--upsample", min=0, max=4, help="dlib HOG upsampling"),
    holdout: float = typer.Option(DEFAULTS["holdout"], "--holdout", min=0.0, max=0.9, help="fraction of files held out (deterministic) to report held-out RMSE"),
    name: str = typer.Option(None, "--name", help="model name in the card (default eigenfaces-CROP-K)"),
    quiet: bool = typer.Option(False, "--quiet", help="no progress"),
) -> None:
    """Fit an eigenfaces model: detect + align every face, PCA, public bounds; write one .npz."""
    from deid.latent.pca import fit_pca

    if faces not in ("all", "largest"):
        typer.echo("error: --faces must be 'all' or 'largest'", err=True)
        raise typer.Exit(2)

    def progress(i: int, n: int) -> None:
        if not quiet and (i % 50 == 0 or i == n):
            print(f"\rdetecting faces {i}/{n}", end="" if i < n else "\n", file=sys.stderr, flush=True)

    try:
        model = fit_pca(images, crop, components, out=out, align_scale=align_scale, quantile=quantile, faces=faces,
                        min_face=min_face, upsample=upsample, holdout=holdout, name=name, progress=progress)
    except (FileNotFoundError, ValueError) as exc:
        typer.echo(f"error: {exc}", err=True)
        raise typer.Exit(2) from None
    c = model.card
    ho = f", held-out RMSE {c['holdout_rmse']:.2f} on {c['holdout_n_faces']} faces" if "holdout_rmse" in c else ""
    typer.echo(f"{out}: {c['name']} dim {c['dim']} crop {c['crop_size']} from {c['n_faces']} faces of {c['n_images']} images, "
               f"explained variance {c['explained_variance']:.3f}, fit RMSE {c['fit_rmse']:.2f}{ho}\n"
               f"  set {c['set_fingerprint']}\n  model {model.fingerprint} ({len(model.to_bytes()) / 1e6:.2f} MB)")


@latent_app.command()
def info(model: str = typer.Argument(..., help="model file (any fsspec URI) or builtin:NAME, e.g. builtin:eigenfaces"),
         json_out: bool = typer.Option(False, "--json", help="print the card as JSON only")) -> None:
    """Print a latent model's card, fingerprint and bounds summary."""
    from deid.latent.pca import PCALatentModel

    try:
        m = PCALatentModel.load(model)
    except (FileNotFoundError, ValueError) as exc:
        typer.echo(f"error: {exc}", err=True)
        raise typer.Exit(2) from None
    card = dict(m.card, fingerprint=m.fingerprint, file_bytes=len(m.to_bytes()))
    if json_out:
        typer.echo(json.dumps(card, indent=2, sort_keys=True))
        return
    typer.echo(f"{model}: {m.name} ({m.backend}), fingerprint {m.fingerprint}")
    for k in sorted(card):
        typer.echo(f"  {k:28s} {json.dumps(card[k]) if isinstance(card[k], (dict, list)) else card[k]}")

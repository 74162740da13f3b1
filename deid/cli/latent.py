"""``deid latent fit`` (eigenfaces on a public reference set), ``deid latent fit-encoder`` (an encoder into a generator's w) and ``deid latent info``."""

from __future__ import annotations

import json
import sys

import typer

from deid.cli.common import echo_card
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
    """Print a latent model's (or an encoder file's) card, fingerprint and bounds summary."""
    from deid.latent.pca import PCALatentModel

    try:
        m = PCALatentModel.load(model)
    except (FileNotFoundError, ValueError) as exc:
        if model.endswith(".pt"):  # an encoder of `deid latent fit-encoder`
            from deid.latent.encoder import load_encoder

            try:
                enc = load_encoder(model)
            except (FileNotFoundError, ValueError) as exc2:
                typer.echo(f"error: {exc2}", err=True)
                raise typer.Exit(2) from None
            card = dict(enc.card, fingerprint=enc.fingerprint)
            echo_card(f"{model}: {card['name']} (encoder), fingerprint {enc.fingerprint}", card, json_out)
            return
        typer.echo(f"error: {exc}", err=True)
        raise typer.Exit(2) from None
    card = dict(m.card, fingerprint=m.fingerprint, file_bytes=len(m.to_bytes()))
    echo_card(f"{model}: {m.name} ({m.backend}), fingerprint {m.fingerprint}", card, json_out)


@latent_app.command("fit-encoder")
def fit_encoder_cmd(
    out: str = typer.Option(..., "--out", help="encoder file to write (.pt, any fsspec URI), written whole"),
    latent: str = typer.Option("mobilestylegan", "--latent", help="the generator latent backend the encoder maps into"),
    latent_param: list[str] = typer.Option([], "--latent-param", help="KEY=VALUE of the latent backend (repeatable; values are JSON or text)"),
    detector: str = typer.Option("centerface", "--detector", help="detector that finds and aligns the faces (use the one your runs use)"),
    pairs: int = typer.Option(400, "--pairs", min=8, help="synthetic pairs z -> w -> face (cached; ~0.4-1.5 s each on CPU)"),
    steps: int = typer.Option(1500, "--steps", min=1, help="w-regression steps (no generator backprop)"),
    batch: int = typer.Option(32, "--batch", min=1, help="w-regression batch"),
    lr: float = typer.Option(1e-3, "--lr", help="w-regression learning rate (cosine decay)"),
    psi_min: float = typer.Option(0.5, "--psi-min", min=0.0, max=1.0, help="truncation of the synthetic w, uniform in [psi-min, 1]"),
    input_size: int = typer.Option(64, "--input-size", min=32, max=512, help="encoder input (px, a multiple of 32)"),
    width: int = typer.Option(16, "--width", min=4, max=256, help="channels of the first ResNet stage (x2 per stage)"),
    components: int = typer.Option(64, "--components", min=1, help="principal axes of w the encoder predicts (the rest: the public mean)"),
    public: str = typer.Option(None, "--public", help="folder of PUBLIC reference photos (e.g. lfw-public-ref): held-out numbers, and fine-tuning"),
    public_limit: int = typer.Option(200, "--public-limit", min=1, help="public photos used for fine-tuning"),
    holdout: int = typer.Option(16, "--holdout", min=0, help="public photos held out (the last by name) for the card's reconstruction numbers"),
    beta: float = typer.Option(None, "--beta", min=0.0, max=1.0, help="identity regulariser: target cosine similarity between recognizer embeddings of a face and its reconstruction (private-encoder.txt eq. 3)"),
    finetune_steps: int = typer.Option(0, "--finetune-steps", min=0, help="fine-tuning steps on the public photos through the PyTorch generator (~4-10 s per face and step on CPU)"),
    finetune_batch: int = typer.Option(2, "--finetune-batch", min=1),
    finetune_lr: float = typer.Option(1e-4, "--finetune-lr"),
    id_weight: float = typer.Option(1.0, "--id-weight", min=0.0, help="weight of the identity term |beta - cos|"),
    pixel_weight: float = typer.Option(1.0, "--pixel-weight", min=0.0, help="weight of the masked pixel MSE"),
    seed: int = typer.Option(0, "--seed", help="seed of the synthetic z and the batches (a fit, not a privacy mechanism)"),
    device: str = typer.Option("cpu", "--device", help="cpu | cuda | cuda:N"),
    threads: int = typer.Option(0, "--threads", min=0, help="torch CPU threads (0: torch's default); 1 is much faster on a machine whose cores are shared"),
    max_minutes: float = typer.Option(None, "--max-minutes", min=0.0, help="stop after this long with a checkpoint (rerun with --resume)"),
    checkpoint_every: int = typer.Option(200, "--checkpoint-every", min=1, help="w steps between checkpoints (fine-tuning: every step)"),
    checkpoint: str = typer.Option(None, "--checkpoint", help="checkpoint file (default OUT.ckpt; removed when the fit ends)"),
    resume: bool = typer.Option(False, "--resume", help="continue from the checkpoint (same options)"),
    quiet: bool = typer.Option(False, "--quiet", help="no progress bars"),
) -> None:
    """Fit an encoder from aligned face crops into a generator's w, on synthetic pairs and PUBLIC photos only."""
    import shlex

    from deid.cli.fit_encoder import FitOptions, TimeUp, fit_encoder

    spec: dict = {"backend": latent}
    for kv in latent_param:
        k, sep, v = kv.partition("=")
        if not sep:
            typer.echo(f"error: --latent-param {kv!r}: want KEY=VALUE", err=True)
            raise typer.Exit(2)
        try:
            spec[k] = json.loads(v)
        except ValueError:
            spec[k] = v
    opts = FitOptions(out=out, latent=spec, detector=detector, pairs=pairs, steps=steps, batch=batch, lr=lr,
                      psi_min=psi_min, input_size=input_size, width=width, components=components, public=public,
                      public_limit=public_limit, holdout=holdout, beta=beta, finetune_steps=finetune_steps,
                      finetune_batch=finetune_batch, finetune_lr=finetune_lr, id_weight=id_weight,
                      pixel_weight=pixel_weight, seed=seed, device=device, threads=threads, max_minutes=max_minutes,
                      checkpoint_every=checkpoint_every, checkpoint=checkpoint, resume=resume,
                      command=shlex.join(["deid", "latent", "fit-encoder", *sys.argv[sys.argv.index("fit-encoder") + 1:]]
                                         if "fit-encoder" in sys.argv else sys.argv),
                      progress=not quiet)
    try:
        card = fit_encoder(opts, log=lambda m: typer.echo(m, err=True))
    except TimeUp as exc:
        typer.echo(f"stopped at --max-minutes after {exc}; checkpoint {checkpoint or out + '.ckpt'}: rerun the same "
                   "command with --resume to continue", err=True)
        raise typer.Exit(3) from None
    except (FileNotFoundError, ValueError) as exc:
        typer.echo(f"error: {exc}", err=True)
        raise typer.Exit(2) from None
    syn = card["data"]["synthetic"]
    ho = card.get("heldout")
    msg = (f"{out}: {card['name']} from {syn['pairs']} synthetic pairs (held-out synthetic: "
           f"{syn['validation_unexplained_w_variance']:.3f} of w's variance unexplained), beta {card['beta']}, "
           f"{card['fit_seconds']:.0f} s")
    if ho:
        msg += (f"\n  held-out public faces ({ho['n']}): RMSE in the face {ho['rmse_encoder']:.1f} "
                f"(average latent {ho['rmse_mean_w']:.1f})")
        if "id_cos_encoder" in ho:
            msg += f", identity cosine {ho['id_cos_encoder']:.3f} (average latent {ho['id_cos_mean_w']:.3f})"
    typer.echo(msg + f"\n  fingerprint {card['fingerprint']}")

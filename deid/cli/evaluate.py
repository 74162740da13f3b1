"""``deid evaluate`` and ``deid sweep``: thin wrappers over :mod:`deid.evaluate`."""

from __future__ import annotations

from pathlib import Path

import typer

from deid.cli.common import load_manifest_or_exit, setup_logging

MFN_HELP = "MobileFaceNet .tflite (default: $DEID_MOBILEFACENET, else the cache `make install` fills)"
RECOGNIZER_HELP = ("recognizer(s) to attack with (repeatable): mobilefacenet (the default: independent of deid's "
                   "checks) and/or dlib-resnet128 (the network deid's checks use: its rates flatter methods tuned on "
                   "it; it roughly doubles the evaluation's time)")
DEFAULT_RECOGNIZERS = ["mobilefacenet"]
PUBLIC_HELP = ("public labelled images the anonymization-aware attacker anonymizes with each method to fit its maps "
               "(never the user's data; default: $DEID_PUBLIC_REF; e.g. ../shared/data/lfw-public-ref)")
PUBLIC_N_HELP = "how many images of --public-ref the aware attacker uses (evenly spaced over the sorted names)"
SECOND_HELP = ("second detector for the detection rate: auto (another family: face-mesh for CenterFace and most runs, "
               "centerface for mediapipe runs, dlib-cnn for dlib-hog, dlib-hog for dlib-cnn), "
               "none, or any detector `deid plugins --kind detector` lists (with its default params)")


def evaluate_cmd(
    audit: str = typer.Option(..., "--audit", help="audit URI of a finished run (the run's audit.uri)"),
    subjects: str = typer.Option(..., "--subjects", help="CSV or Parquet with columns path, subject (paths relative to the run's input.uri)"),
    out: str = typer.Option(..., "--out", help="folder for metrics.json and report.html"),
    run_id: list[str] = typer.Option(None, "--run-id", help="run(s) to evaluate (repeatable); default: the latest run"),
    all_runs: bool = typer.Option(False, "--all-runs", help="evaluate every run in the audit"),
    include_quarantined: bool = typer.Option(False, "--include-quarantined", help="also evaluate quarantined outputs"),
    no_originals: bool = typer.Option(False, "--no-originals", help="leave original faces out of report.html (for sharing it)"),
    mobilefacenet: str = typer.Option(None, "--mobilefacenet", help=MFN_HELP),
    second_detector: str = typer.Option("auto", "--second-detector", help=SECOND_HELP),
    second_detector_max: int = typer.Option(200, "--second-detector-max", help="run the second detector on about this many records per run, a fixed sample by record id (it is slow); 0: every record"),
    public_ref: str = typer.Option(None, "--public-ref", help=PUBLIC_HELP),
    public_n: int = typer.Option(300, "--public-n", min=10, help=PUBLIC_N_HELP),
    recognizer: list[str] = typer.Option(None, "--recognizer", help=RECOGNIZER_HELP),
    no_dp_audit: bool = typer.Option(False, "--no-dp-audit", help="skip the empirical epsilon audit of dp-image groups (~40 s each; needs --manifest)"),
    adaptive_on: str = typer.Option("independent", "--adaptive-on", help="recognizers the aware and reversal attacks run with: independent (not the one deid's checks use) or all"),
    manifest: Path = typer.Option(None, "--manifest", help="the run's manifest: its detector and latent model for the aware attacker (needed for latent methods)"),
) -> None:
    """Measure re-identification risk and utility of a finished run; write metrics.json and report.html."""
    from deid.evaluate import EvaluateError, evaluate_run
    from deid.evaluate.models import ModelMissing

    setup_logging()
    m = load_manifest_or_exit(manifest) if manifest is not None else None
    try:
        metrics, uris = evaluate_run(audit, subjects, out, run_ids=run_id or None, all_runs=all_runs,
                                     include_quarantined=include_quarantined, originals=not no_originals,
                                     mobilefacenet=mobilefacenet, second_detector=second_detector,
                                     second_detector_max=second_detector_max or None, public_ref=public_ref,
                                     public_n=public_n, manifest=m, adaptive_on=adaptive_on,
                                     dp_audit=not no_dp_audit, recognizers=recognizer or DEFAULT_RECOGNIZERS)
    except (EvaluateError, ModelMissing, ValueError) as exc:
        typer.echo(f"error: {exc}", err=True)
        raise typer.Exit(2) from None
    _print(metrics, uris)


def sweep_cmd(
    manifest: Path = typer.Argument(..., help="job manifest (YAML): inputs, detector, latent model, ledger"),
    param: list[str] = typer.Option(..., "--param", help="[METHOD:]KEY=V1,V2,... e.g. anonymize.params.sigma=1,2,4,8 or pixelate:anonymize.params.blocks=16,8,4 (repeatable)"),
    out: str = typer.Option(..., "--out", help="local folder: runs/, audit/, metrics.json, report.html, sweep.png"),
    subjects: str = typer.Option(None, "--subjects", help="path -> subject labels (default: the manifest's input.subjects)"),
    inline: bool = typer.Option(False, "--inline", help="run in this process without Ray"),
    no_originals: bool = typer.Option(False, "--no-originals", help="leave original faces out of report.html"),
    mobilefacenet: str = typer.Option(None, "--mobilefacenet", help=MFN_HELP),
    second_detector: str = typer.Option("auto", "--second-detector", help=SECOND_HELP),
    second_detector_max: int = typer.Option(200, "--second-detector-max", help="run the second detector on about this many records per run (a fixed sample by record id); 0: every record"),
    public_ref: str = typer.Option(None, "--public-ref", help=PUBLIC_HELP),
    public_n: int = typer.Option(300, "--public-n", min=10, help=PUBLIC_N_HELP),
    recognizer: list[str] = typer.Option(None, "--recognizer", help=RECOGNIZER_HELP),
) -> None:
    """Run a grid of method strengths on the same inputs and plot privacy-utility curves."""
    from deid.evaluate import EvaluateError
    from deid.evaluate.models import ModelMissing
    from deid.evaluate.sweep import SweepError, sweep
    from deid.io.listing import ListingError
    from deid.pipeline import RunError

    setup_logging()
    m = load_manifest_or_exit(manifest)
    try:
        metrics, uris = sweep(m, param, out, subjects=subjects, engine="local" if inline else None,
                              originals=not no_originals, mobilefacenet=mobilefacenet, second_detector=second_detector,
                              second_detector_max=second_detector_max or None, echo=typer.echo, public_ref=public_ref,
                              public_n=public_n, recognizers=recognizer or DEFAULT_RECOGNIZERS)
    except (SweepError, EvaluateError, ModelMissing, ListingError, RunError) as exc:
        typer.echo(f"error: {exc}", err=True)
        raise typer.Exit(2) from None
    _print(metrics, uris)


def _print(metrics: dict, uris: dict) -> None:
    from deid.evaluate.sweep import summary_lines

    sel = metrics["selection"]
    typer.echo(f"evaluated {sel['evaluated']} outputs of run(s) {', '.join(metrics['run_ids'])}"
               + (f"; skipped {sel['skipped']}" if sel["skipped"] else "")
               + (f"; errors {sel['errors']}" if sel["errors"] else ""))
    for line in summary_lines(metrics):
        typer.echo("  " + line)
    ref = metrics["reference"]["recognizers"]
    typer.echo("  no anonymization, T1 top-1: " + ", ".join(f"{k} {100 * v['top1']:.1f}%" for k, v in ref.items() if v["top1"] is not None))
    for g in metrics["groups"]:
        a = g.get("dp_audit")
        if a and "epsilon_lb" in a:
            typer.echo(f"  {g['label']}: DP audit {a['verdict']}, epsilon lower bound {a['epsilon_lb']:.2f} "
                       f"<= claim {a['claim']['epsilon']:g}" if a["verdict"] == "consistent" else
                       f"  {g['label']}: DP audit VIOLATION, epsilon lower bound {a['epsilon_lb']:.2f} "
                       f"> claim {a['claim']['epsilon']:g}")
    for k, v in uris.items():
        typer.echo(f"  {k:<8} {v}")

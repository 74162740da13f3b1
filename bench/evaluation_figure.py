"""The figure and table of docs/evaluation.md: five methods at three strengths each on the
60 identities of lfw-dev, evaluated with both recognizers (``deid sweep`` underneath).

    DEID_SUBJECT_KEY=... python bench/evaluation_figure.py [--data /work/shared/data/lfw-dev] [--out /tmp/deid-evalfig]

Runs are inline (one process; the machine is shared); checks are off (every output is
evaluated, quarantine or not). dp-image draws real (non-test) noise and charges a scratch
ledger under OUT. The second detector (dlib CNN, ~0.4 s per image) runs on a fixed sample
of ~60 records per run. Writes OUT/metrics.json, OUT/report.html, OUT/sweep.png and the
docs figure docs/img/evaluation-lfw-dev.png; prints the table.
"""

from __future__ import annotations

import argparse
import json
import os
import shutil
import time
from pathlib import Path

from deid.config import manifest_from_dict
from deid.evaluate.sweep import summary_lines, sweep

GRID = [
    "blur:anonymize.params.strength=0.05,0.1,0.2",
    "pixelate:anonymize.params.blocks=16,8,4",
    "mask:anonymize.params.margin=0.0,0.25,0.5",
    "deepblur:anonymize.params.sigma=1,4,16",
    "dp-image:anonymize.params.epsilon=10000,1000,1",
]


def table_lines(metrics: dict) -> list[str]:
    """The markdown table of docs/evaluation.md (rates in %)."""
    def p(x):
        return "–" if x is None else f"{100 * x:.1f}"

    ref = metrics["reference"]["recognizers"]
    lines = ["| group | T1 top-1 dlib | T1 top-1 MFN | T1 top-5 MFN | T1 LR MFN | T2 top-1 MFN | T3 top-1 MFN "
             "| T3 top-1 dlib | de-id rate dlib / MFN | detected (run's) | detected (second) | method's faces detected (run's / second) | SSIM face | PSNR face | Fréchet | SSIM image | pose err. median | pose <= 5% |",
             "|---|---:|---:|---:|---:|---:|---:|---:|---:|---:|---:|---:|---:|---:|---:|---:|---:|---:|",
             f"| *no anonymization* | {p(ref['dlib-resnet128']['top1'])} | {p(ref['mobilefacenet']['top1'])} "
             f"| {p(ref['mobilefacenet']['top5'])} | | | | | | 100 | | | 1 | | 0 | 1 | 0 | 100 |"]
    for g in metrics["groups"]:
        d, f, u = g["privacy"]["dlib-resnet128"], g["privacy"]["mobilefacenet"], g["utility"]
        dr = u["detection_rate"]
        mf = dr["method_faces"]
        lines.append(
            f"| {g['label']} | {p(d['attacks']['T1']['top1'])} | {p(f['attacks']['T1']['top1'])} "
            f"| {p(f['attacks']['T1']['top5'])} | {p(f['attacks']['T1_classifier']['top1'])} "
            f"| {p(f['attacks']['T2']['top1'])} | {p(f['attacks']['T3']['top1'])} | {p(d['attacks']['T3']['top1'])} "
            f"| {p(d['deid_rate'])} / {p(f['deid_rate'])} | {p(dr['configured']['rate'])} | {p(dr['second']['rate'])} "
            f"| {p(mf['configured']['rate'])} / {p(mf['second']['rate'])} (n={mf['configured']['n']}) "
            f"| {u['face']['ssim']:.3f} | {u['face']['psnr']:.1f} | {u['frechet']['value']:.1f} "
            f"| {u['image']['ssim']:.3f} | {p(u['pose']['median'])} | {p(u['pose']['within_5pct'])} |")
    return lines


def cost_lines(out: Path, metrics: dict) -> list[str]:
    """Evaluation cost against the cost of the runs it evaluates (same machine, same time)."""
    runs = [json.loads((out / "audit" / "summaries" / f"{r}.json").read_text()) for r in metrics["run_ids"]]
    run_s = sum(r["wall_seconds"] for r in runs)
    n_run = sum(r["inputs"] for r in runs)
    n_eval = metrics["selection"]["evaluated"]
    ev = metrics["wall_seconds"] / max(1, n_eval)
    rr = run_s / max(1, n_run)
    return [f"{'stage':<34} {'records':>8} {'seconds':>9} {'s/record':>9}",
            f"{'deid run (inline, all points)':<34} {n_run:>8} {run_s:>9.0f} {rr:>9.3f}",
            f"{'deid evaluate (all points)':<34} {n_eval:>8} {metrics['wall_seconds']:>9.0f} {ev:>9.3f}",
            f"ratio evaluate/run per record: {ev / rr:.2f}"]


def main() -> None:
    ap = argparse.ArgumentParser()
    ap.add_argument("--data", default="/work/shared/data/lfw-dev")
    ap.add_argument("--out", default="/tmp/deid-evalfig")
    ap.add_argument("--second-max", type=int, default=60)
    ap.add_argument("--per-subject", type=int, default=4, help="photos per identity (first N by name); 0: all")
    ap.add_argument("--evaluate-only", action="store_true", help="re-evaluate the runs already under OUT (no new runs)")
    ap.add_argument("--grid", action="append", help="METHOD:PARAM=V1,V2 (repeatable; default: the docs' five methods)")
    ap.add_argument("--latent", default=None, help="latent.backend of the runs (e.g. mobilestylegan for synthetic-swap; "
                    "its non-commercial licence is then accepted for this benchmark)")
    ap.add_argument("--no-figure", action="store_true", help="do not overwrite docs/img/evaluation-lfw-dev.png")
    args = ap.parse_args()
    os.environ.setdefault("DEID_SUBJECT_KEY", "evaluation-figure-scratch-key-0123456789")
    out = Path(args.out)
    if args.evaluate_only:
        return reevaluate(out, args.second_max)
    shutil.rmtree(out, ignore_errors=True)
    out.mkdir(parents=True)
    data = Path(args.data)
    if args.per_subject:  # every identity, its first N photos: the cost scales with photos x grid points
        sub = out / "data"
        rows = ["path,subject"]
        for d in sorted(p for p in data.iterdir() if p.is_dir()):
            for f in sorted(d.glob("*.jpg"))[: args.per_subject]:
                (sub / d.name).mkdir(parents=True, exist_ok=True)
                shutil.copy(f, sub / d.name / f.name)
                rows.append(f"{d.name}/{f.name},{d.name}")
        (sub / "subjects.csv").write_text("\n".join(rows) + "\n")
        data = sub
    base = manifest_from_dict({
        "input": {"uri": str(data), "subjects": str(data / "subjects.csv")},
        "output": {"uri": str(out / "unused")},
        "privacy": {"ledger": str(out / "ledger.sqlite"), "max_epsilon": 1e6},
        "checks": {"enabled": False, "no_face": "keep"},
        "run": {"batch_size": 8, "progress": False},
        **({"latent": {"backend": args.latent}, "licences": {"accept_non_commercial": [args.latent]}}
           if args.latent else {}),
    })
    grid = args.grid or GRID
    t0 = time.perf_counter()
    metrics, uris = sweep(base, grid, str(out), engine="local", second_detector_max=args.second_max,
                          echo=lambda s: print(s, flush=True))
    print(f"\n{len(metrics['groups'])} groups, {metrics['selection']['evaluated']} outputs evaluated; "
          f"evaluation {metrics['wall_seconds']:.0f} s, total {time.perf_counter() - t0:.0f} s")
    for line in summary_lines(metrics):
        print(line)
    ref = metrics["reference"]
    print("no anonymization (T1 on originals):",
          {k: v["top1"] for k, v in ref["recognizers"].items()}, f"n={ref['n_records']}, subjects={ref['n_subjects']}")
    report(out, metrics, uris, figure=not args.no_figure)


def report(out: Path, metrics: dict, uris: dict, figure: bool = True) -> None:
    for line in table_lines(metrics):
        print(line)
    for line in cost_lines(out, metrics):
        print(line)
    if figure:
        img = Path(__file__).resolve().parents[1] / "docs" / "img" / "evaluation-lfw-dev.png"
        shutil.copy(uris["curves"], img)
    print(json.dumps(uris))


def reevaluate(out: Path, second_max: int) -> None:
    """Evaluate every run of an earlier sweep under ``out`` again (after a change to evaluate)."""
    from deid.evaluate.core import Evaluator
    from deid.evaluate.report import curves_figure
    from deid.evaluate.run import write_outputs

    ev = Evaluator(second_detector_max=second_max)
    metrics, groups, _ = ev.evaluate(str(out / "audit"), str(out / "data" / "subjects.csv"), all_runs=True,
                                     include_quarantined=True)
    metrics["sweep"] = {"params": GRID, "points": [g["label"] for g in metrics["groups"]]}
    uris = write_outputs(str(out), metrics, groups)
    curves_figure(metrics).savefig(out / "sweep.png", dpi=120, bbox_inches="tight")
    uris["curves"] = str(out / "sweep.png")
    print(f"{len(metrics['groups'])} groups, {metrics['selection']['evaluated']} outputs evaluated; "
          f"evaluation {metrics['wall_seconds']:.0f} s")
    for line in summary_lines(metrics):
        print(line)
    report(out, metrics, uris)


if __name__ == "__main__":
    main()

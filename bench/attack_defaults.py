"""Re-choose every method's default strength by the attacks of ``deid evaluate`` (issue: the
attacks a careful auditor would run).

    .venv/bin/python bench/attack_defaults.py                       # lfw-dev, public-ref, full grid
    .venv/bin/python bench/attack_defaults.py --only blur,pixelate  # some methods
    .venv/bin/python bench/attack_defaults.py --limit 120           # a quick look (first N photos)

Data: ``../shared/data/lfw-dev`` (60 people, 457 photos, labels in subjects.csv) as the
user's data; the aware attacker fits on ``../shared/data/lfw-public-ref`` (disjoint people,
``--public-n`` of them). Attacker: MobileFaceNet (the independent recognizer; deid's own
checks use dlib's ResNet). Every grid point is a real ``deid sweep`` run (in-process, the
manifest defaults: CenterFace, region and blending defaults; identity checks and the residual
gate off, since they change which records are released, not what the method does; DP points
charged to a scratch ledger with no cap).

Rule (printed with the table): the privacy constraint is that every *identification* attack,
naive T1, T1-classifier, aware and reversal, stays at or below 2x chance at top-1 (chance =
1/60 here); among the settings that meet it, the default is the one with the most utility
(highest face SSIM). T3 (anonymized against anonymized) and same-source are reported beside
it: a region method cannot bring them to chance by strength, because what links photos of a
person or a photo to its source is outside the region (hair, clothes, background).
"""

from __future__ import annotations

import argparse
import json
import os
import sys
import tempfile
import time
from pathlib import Path

for _v in ("OMP_NUM_THREADS", "OPENBLAS_NUM_THREADS", "MKL_NUM_THREADS"):
    os.environ.setdefault(_v, "1")

REPO = Path(__file__).resolve().parents[1]
if str(REPO) not in sys.path:
    sys.path.insert(0, str(REPO))

DATA = REPO.parent / "shared" / "data"
GRID = {
    "blur": "blur:anonymize.params.strength=0.1,0.15,0.2,0.3",
    "pixelate": "pixelate:anonymize.params.blocks=12,8,6,4",
    "dp-image": "dp-image:anonymize.params.post=posterior-mean,posterior-sample",
    "deepblur": "deepblur:anonymize.params.sigma=2,4,8,16",
    "mask": "mask:anonymize.params.margin=0.25",
    "synthetic-swap": "synthetic-swap:anonymize.params.stable=fresh",
    "attribute": "attribute:anonymize.params.stable=fresh",
}
#: methods that run on another latent model than the eigenfaces (one sweep per latent model)
LATENT = {"synthetic-swap": {"backend": "mobilestylegan"}, "attribute": {"backend": "mobilestylegan"}}
IDENTIFY = ("T1", "T1_classifier", "aware", "reversal")


def base_manifest(data: Path, tmp: Path, limit: int | None, latent: dict | None = None) -> dict:
    src = data
    if limit:
        import csv
        import shutil

        rows = list(csv.DictReader(open(data / "subjects.csv")))[:limit]
        src = tmp / "input"
        for r in rows:
            (src / r["path"]).parent.mkdir(parents=True, exist_ok=True)
            shutil.copy(data / r["path"], src / r["path"])
        with open(src / "subjects.csv", "w") as f:
            f.write("path,subject\n" + "".join(f"{r['path']},{r['subject']}\n" for r in rows))
    return {
        "input": {"uri": str(src), "subjects": str(src / "subjects.csv")},
        "output": {"uri": str(tmp / "unused")},
        "checks": {"enabled": False, "no_face": "keep", "residual": "off"},
        "run": {"progress": False},
        "latent": latent or {"backend": "pca", "uri": "builtin:eigenfaces"},
        # synthetic-swap's MobileStyleGAN weights are NVIDIA Source Code License-NC: a research benchmark
        **({"licences": {"accept_non_commercial": ["mobilestylegan"]}} if latent else {}),
        "privacy": {"ledger": str(tmp / "ledger.sqlite"), "max_epsilon": 1e9,
                    "subject_key_file": str(tmp / "subject.key"), "create_subject_key": True},
    }


def row(g: dict, rec: str) -> dict:
    a = g["privacy"][rec]["attacks"]
    u = g["utility"]
    out = {k: a[k]["top1"] for k in ("T1", "same_source", "T3", "T1_classifier", "aware", "reversal")}
    out.update(chance=a["T1"]["chance_top1"], aware_best=a["aware"].get("best"), reversal_best=a["reversal"].get("best"),
               detected=u["detection_rate"]["configured"]["rate"], detected_second=u["detection_rate"]["second"]["rate"],
               ssim_face=u["face"]["ssim"], ssim_image=u["image"]["ssim"], ssim_outside=u["outside_faces"]["ssim"])
    out["worst_identify"] = max(v for k, v in out.items() if k in IDENTIFY and v is not None)
    return out


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--data", type=Path, default=DATA / "lfw-dev")
    ap.add_argument("--public", default=str(DATA / "lfw-public-ref"))
    ap.add_argument("--public-n", type=int, default=300)
    ap.add_argument("--only", default=",".join(GRID))
    ap.add_argument("--limit", type=int, default=None, help="first N photos of subjects.csv only")
    ap.add_argument("--out", type=Path, default=None, help="keep the sweep here (default: a temporary folder)")
    ap.add_argument("--json", type=Path, default=None, help="write the table as JSON")
    args = ap.parse_args()

    from deid.config import manifest_from_dict
    from deid.evaluate.sweep import sweep

    tmp = Path(args.out or tempfile.mkdtemp(prefix="deid-attack-defaults-"))
    tmp.mkdir(parents=True, exist_ok=True)
    methods = args.only.split(",")
    by_latent: dict[str, list[str]] = {}
    for m in methods:
        by_latent.setdefault(json.dumps(LATENT.get(m)), []).append(m)
    t0 = time.perf_counter()
    rec = "mobilefacenet"
    table = []
    for i, (latent, ms) in enumerate(by_latent.items()):
        base = manifest_from_dict(base_manifest(args.data, tmp, args.limit, json.loads(latent)),
                                  source="bench/attack_defaults.py")
        metrics, _ = sweep(base, [GRID[m] for m in ms], str(tmp / f"sweep{i}"), engine="local", originals=False,
                           second_detector="auto", second_detector_max=100, public_ref=args.public,
                           public_n=args.public_n, recognizers=[rec], echo=lambda s: print(s, flush=True))
        table += [(g["method"], g["label"], row(g, rec)) for g in metrics["groups"]]
    wall = time.perf_counter() - t0

    def p(x):
        return "     -" if x is None else f"{100 * x:5.1f}%"

    print(f"\nlfw-dev: {metrics['reference']['n_records']} photos of {metrics['reference']['n_subjects']} people; "
          f"attacker {rec}; no anonymization T1 {p(metrics['reference']['recognizers'][rec]['top1'])}; "
          f"public set {metrics['adaptive']['public_images']} images; wall {wall:.0f} s\n")
    cols = ("T1", "same_source", "T3", "T1_classifier", "aware", "reversal", "chance", "detected", "detected_second")
    print(f"{'group':<34} " + " ".join(f"{c[:9]:>9}" for c in cols) + f" {'SSIM face':>9} {'SSIM out':>9}")
    for _, label, r in table:
        print(f"{label[:34]:<34} " + " ".join(f"{p(r[c]):>9}" for c in cols)
              + f" {r['ssim_face']:9.3f} {r['ssim_outside'] if r['ssim_outside'] is not None else float('nan'):9.3f}")
    print("\nrule: every identification attack (T1, T1-classifier, aware, reversal) <= 2x chance; then the most "
          "face SSIM")
    for method in dict.fromkeys(m for m, _, _ in table):
        rows = [(label, r) for m, label, r in table if m == method]
        ok = [(label, r) for label, r in rows if r["worst_identify"] <= 2 * r["chance"]]
        if ok:
            label, r = max(ok, key=lambda x: x[1]["ssim_face"])
            print(f"  {method}: {label} (worst identification {p(r['worst_identify'])}, SSIM face {r['ssim_face']:.3f})")
        else:
            label, r = min(rows, key=lambda x: x[1]["worst_identify"])
            print(f"  {method}: none meets it; the most private is {label} "
                  f"(worst identification {p(r['worst_identify'])})")
    if args.json:
        args.json.write_text(json.dumps({"wall_seconds": wall, "rows": [{"label": l, **r} for _, l, r in table]},
                                        indent=1))


if __name__ == "__main__":
    main()

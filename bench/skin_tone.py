"""Skin tone kept by synthetic-swap: the CIEDE2000 difference between the original's and the
output's mean skin colour per face, split by the original's skin lightness.

    PYTHONPATH=. .venv/bin/python bench/skin_tone.py [--blend feather|poisson] [--limit N] [--seed S]

Faces: the largest CenterFace face of each photo of lfw-dev (457). The method is the
``synthetic-swap`` class in-process with the manifest's defaults (bank of 128, the cached bank);
``--blend poisson`` measures the Poisson seam. Skin: :mod:`deid.evaluate.skin` (jaw line to
brows less eyes, brows, lips and nostrils, in both the original's mesh and the mesh found again
on the output). ``--seed`` seeds the benchmark's stranger draws only, so that two checkouts
draw the same strangers (a release draws from OS entropy). Prints a Markdown table: per
group, the faces, the median and 90th percentile Delta-E, the median signed Delta-L (output -
original: > 0 is lighter), and the Delta-E over the upper cheeks alone.
"""

from __future__ import annotations

import argparse
import os
import sys
from pathlib import Path

os.environ.setdefault("OMP_NUM_THREADS", "1")

import cv2  # noqa: E402
import numpy as np  # noqa: E402
from PIL import Image  # noqa: E402

ROOT = Path(__file__).resolve().parents[1]


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--data", default=str(ROOT.parent / "shared" / "data" / "lfw-dev"))
    ap.add_argument("--blend", choices=("feather", "poisson"), default="feather")
    ap.add_argument("--keep-forehead", action="store_true")
    ap.add_argument("--limit", type=int, default=0, help="first N photos only (0: all)")
    ap.add_argument("--seed", type=int, default=0, help="the benchmark's stranger draws")
    ap.add_argument("--split", type=float, default=50.0, help="skin L* that splits dark from light")
    ap.add_argument("--per-face", help="write one CSV row per face here")
    args = ap.parse_args()
    cv2.setNumThreads(1)
    sys.path.insert(0, str(ROOT))
    from deid.anonymize.swap import SyntheticSwap, mesh_points
    from deid.evaluate.skin import skin_change
    from deid.faces.registry import make_detector
    from deid.latent.registry import load_latent_model

    gen = load_latent_model({"backend": "mobilestylegan"})
    swap = SyntheticSwap({"blend": args.blend, "keep_forehead": args.keep_forehead}, latent=gen)
    det = make_detector({"backend": "centerface"})
    paths = sorted(Path(args.data).glob("*/*.jpg"))
    if args.limit:
        paths = paths[:args.limit]
    rng = np.random.default_rng(args.seed)
    rows = []
    for path in paths:
        rgb = np.asarray(Image.open(path).convert("RGB"))
        faces = det.detect(rgb)
        if not faces:
            continue
        face = max(faces, key=lambda f: f.width * f.height)
        pts = swap.mesh_of(rgb, face)
        if pts is None:
            continue
        out, facts = swap(rgb, [face], rng)
        if not facts[0].get("swapped"):
            continue
        opts = mesh_points(swap.mesher, out, face)
        a, b, de = skin_change(rgb, out, pts, opts)
        _, _, de_c = skin_change(rgb, out, pts, opts, part="cheeks")
        rows.append((path.relative_to(args.data).as_posix(), a[0], b[0], de, de_c))
    if args.per_face:
        with open(args.per_face, "w") as f:
            f.write("path,skin_L_original,skin_L_output,delta_e,delta_e_cheeks\n")
            f.writelines(f"{p},{la:.2f},{lb:.2f},{de:.2f},{dc:.2f}\n" for p, la, lb, de, dc in rows)
    L = np.array([r[1] for r in rows])
    dL = np.array([r[2] - r[1] for r in rows])
    dE = np.array([r[3] for r in rows])
    dC = np.array([r[4] for r in rows])
    print(f"synthetic-swap, blend {args.blend}, keep_forehead {args.keep_forehead}: {len(rows)} faces of "
          f"{len(paths)} photos")
    print("| original skin | faces | median Delta-E | p90 Delta-E | median Delta-L | cheeks: median Delta-E | "
          "cheeks: p90 Delta-E |\n|---|---:|---:|---:|---:|---:|---:|")
    for name, sel in ((f"L < {args.split:g}", L < args.split), (f"L >= {args.split:g}", L >= args.split),
                      ("all", np.ones_like(L, dtype=bool))):
        if sel.any():
            print(f"| {name} | {sel.sum()} | {np.median(dE[sel]):.2f} | {np.percentile(dE[sel], 90):.2f} | "
                  f"{np.median(dL[sel]):+.2f} | {np.median(dC[sel]):.2f} | {np.percentile(dC[sel], 90):.2f} |")


if __name__ == "__main__":
    main()

"""Simulated cascade: the default's per-face coverage (from --keep-outputs of the real stage)
united with the faces that kept extra detections match (IoU >= 0.3), for a grid of thresholds.

    PYTHONPATH=. .venv/bin/python bench/small_sim.py 2024:/tmp/sf/keep2024 7:/tmp/sf/keep7 --margin 0.0
"""

from __future__ import annotations

import argparse
import sys
from pathlib import Path

import numpy as np
from PIL import Image

sys.path.insert(0, str(Path(__file__).resolve().parent))
import recall  # noqa: E402


def baseline(seed: int, keep: Path):
    labels = recall.load_labels()
    strangers, face_box = recall.load_strangers(160, seed, recall.DEFAULT_CACHE)
    rng = np.random.default_rng(seed)
    pool = recall.backgrounds(labels)
    scenes = [recall.make_scene(rng, strangers, face_box, pool, 1280, 960, n_faces=12) for _ in range(24)]
    cov = {}
    for i, sc in enumerate(scenes):
        out = next(keep.glob(f"*/scene-{i:03d}.png"))
        changed = np.any(np.asarray(Image.open(out).convert("RGB")) != sc.rgb, axis=2)
        for j, f in enumerate(sc.faces):
            c = recall.covered_fraction(changed, recall.face_ellipse(changed.shape, quad=f.quad)) >= recall.COVER_FRACTION
            cov[(f"scene{i}", j)] = (bool(c), f.width, f.edge)
    return cov


def main():
    ap = argparse.ArgumentParser()
    ap.add_argument("runs", nargs="+")
    ap.add_argument("--margin", default="0.0")
    args = ap.parse_args()
    for run in args.runs:
        seed, keep = run.split(":")
        cov = baseline(int(seed), Path(keep))
        rows = np.load(f"/tmp/sf/diag{seed}-m{args.margin}.npy", allow_pickle=True)
        small = [k for k, (c, w, e) in cov.items() if not e and 14 <= w <= 24]
        base = sum(cov[k][0] for k in small)
        print(f"\nseed {seed}: 14-24 px covered by the default: {base}/{len(small)} ({base / len(small):.0%})")
        nlab = len({r[0] for r in rows if r[0].startswith("lab:")}) or 0
        for s, lows, hi in (("1", (0.02, 0.05, 0.1), 0.2), ("2", (0.05, 0.1, 0.2, 0.3), 9.0)):
            for low in lows:
                cells = []
                for p in (0.5, 0.7, 0.8, 0.9, 0.95, 0.98):
                    kept = [r for r in rows if r[1] == s and low <= r[2] < hi and r[3] >= p]
                    hit = {(r[0], int(r[4])) for r in kept if r[4] >= 0}
                    got = sum(cov[k][0] or k in hit for k in small)
                    fp_lab = sum(1 for r in kept if r[4] == -1 and r[0].startswith("lab:"))
                    fp_sc = sum(1 for r in kept if r[4] == -1 and not r[0].startswith("lab:"))
                    cells.append(f"p{p}: {got / len(small):.0%} fp {fp_lab}/{fp_sc}")
                print(f"   {s}x score [{low}, {hi}): " + " | ".join(cells))
        print(f"   (fp a/b: kept detections touching no truth box on the {nlab} labelled photos / the 24 scenes)")


if __name__ == "__main__":
    main()

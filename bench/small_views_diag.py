"""Small faces (14-24 px) in the default's views: per face, the best CenterFace heatmap score
over detections (NMS'd at 0.01) overlapping it (IoU >= 0.3, mapped back to the photo) in each of
the upright, rot90, rot270, tilt+-50 (frame) views, native and 2x upscaled; and whether the
default covered it (--keep DIR: the default's released scenes, bench/recall.py --keep-outputs).

    PYTHONPATH=. .venv/bin/python bench/small_views_diag.py --seed 2024 --keep /tmp/sf/keep2024
"""

from __future__ import annotations

import argparse
import sys
from pathlib import Path

import numpy as np

sys.path.insert(0, str(Path(__file__).resolve().parent))
import recall  # noqa: E402
import small_sim  # noqa: E402


def main():
    import cv2

    from deid.faces.centerface_backend import CenterFaceDetector
    from deid.faces.types import Face
    from deid.faces.views import map_face, rotated_views, upright

    ap = argparse.ArgumentParser()
    ap.add_argument("--seed", type=int, default=2024)
    ap.add_argument("--keep", type=Path, required=True)
    ap.add_argument("--out", type=Path, default=None)
    args = ap.parse_args()
    recall.one_thread()
    det = CenterFaceDetector(min_score=0.01)
    cov = small_sim.baseline(args.seed, args.keep)
    labels = recall.load_labels()
    strangers, face_box = recall.load_strangers(160, args.seed, recall.DEFAULT_CACHE)
    rng = np.random.default_rng(args.seed)
    pool = recall.backgrounds(labels)
    scenes = [recall.make_scene(rng, strangers, face_box, pool, 1280, 960, n_faces=12) for _ in range(24)]
    names = ["", "rot90", "rot270", "tilt+", "tilt-"]
    rows = []  # covered, width, angle, then 5 native, 5 2x scores
    for i, sc in enumerate(scenes):
        small = [(j, f) for j, f in enumerate(sc.faces) if not f.edge and 14 <= f.width <= 24]
        if not small:
            continue
        h, w = sc.rgb.shape[:2]
        best = np.zeros((len(small), 2, len(names)))
        views = [upright(sc.rgb), *rotated_views(sc.rgb, names[1:], CenterFaceDetector.TILT, "frame")]
        for v, (view, img, inv) in enumerate(views):
            for k, s in enumerate((1.0, 2.0)):
                im = img if s == 1.0 else cv2.resize(img, (img.shape[1] * 2, img.shape[0] * 2), interpolation=cv2.INTER_CUBIC)
                boxes, scores, pts = det.raw(im)
                to_input = np.vstack([inv, [0, 0, 1.0]]) @ np.diag([1 / s, 1 / s, 1.0])
                for b, sc_, p in zip(boxes, scores, pts):
                    f, _, _ = map_face(Face(box=tuple(b), score=float(sc_), landmarks5=p), to_input[:2], w, h, view, 0)
                    for q, (j, face) in enumerate(small):
                        if sc_ > best[q, k, v] and recall.iou(face.box, f.box) >= 0.3:
                            best[q, k, v] = sc_
        for q, (j, face) in enumerate(small):
            rows.append([cov[(f"scene{i}", j)][0], face.width, face.angle, *best[q, 0], *best[q, 1]])
    rows = np.array(rows)
    if args.out:
        np.save(args.out, rows)
    n = len(rows)
    base = rows[:, 0] > 0
    print(f"seed {args.seed}: {n} faces 14-24 px inside the frame; the default covers {int(base.sum())} ({base.mean():.0%})")
    for k, s in ((0, "native"), (1, "2x")):
        sc = rows[:, 3 + 5 * k: 8 + 5 * k]
        for t in (0.02, 0.05, 0.1, 0.2, 0.3):
            up = sc[:, 0] >= t
            anyv = sc.max(axis=1) >= t
            print(f"   {s} >= {t}: upright {int(up.sum())}, any view {int(anyv.sum())}; with the default's: "
                  f"upright {int((up | base).sum())} ({(up | base).mean():.0%}), any view {int((anyv | base).sum())} "
                  f"({(anyv | base).mean():.0%})")


if __name__ == "__main__":
    main()

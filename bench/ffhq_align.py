"""FFHQ alignment from 5-point landmarks: the templates of deid.faces.align and their error.

    PYTHONPATH=. .venv/bin/python bench/ffhq_align.py                 # lfw-public-ref, ~8 min on 2 cores
    PYTHONPATH=. .venv/bin/python bench/ffhq_align.py --limit 600

The FFHQ recipe (deid.faces.align.ffhq_recipe) reads eye centres and mouth corners, which
dlib's 68 points give. Faces from other detectors have 5 points: ``dlib5`` (dlib HOG + dlib's
5-point model) or ``arcface5`` (CenterFace's keypoints; the detection overlapping dlib's box).
For each layout, the template is the mean position of its points in the 68-point recipe's crop
(unit square), fitted on the even-numbered faces (sorted by file name); alignment then fits a
least-squares similarity to it (deid.faces.align.FFHQ_TEMPLATES).

Error, on the odd-numbered faces: the 68-point recipe's crop is the truth; the mean distance (in
px of a 1024 px crop) by which its four corners and centre move when the 5-point fit is used
instead (median and 90th percentile over the faces). ``eyes-mouth recipe`` is the alternative
the templates replaced: the recipe run on the 5 points' own eye centres and mouth (arcface5:
its mouth corners; dlib5: mouth placed at eye + k (nose base - eye), k the median measured on
the fitting faces).
"""

from __future__ import annotations

import argparse
import sys
from pathlib import Path

import numpy as np

REPO = Path(__file__).resolve().parents[1]
DEFAULT = REPO.parent / "shared" / "data" / "lfw-public-ref"


def crop_error(m_true: np.ndarray, m: np.ndarray, size: int = 1024) -> float:
    import cv2

    pts = np.array([[0, 0], [size, 0], [0, size], [size, size], [size / 2, size / 2]], dtype=np.float64)
    inv = cv2.invertAffineTransform(m_true)
    img = pts @ inv[:, :2].T + inv[:, 2]
    moved = img @ m[:, :2].T + m[:, 2]
    return float(np.linalg.norm(moved - pts, axis=1).mean())


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--images", type=Path, default=DEFAULT)
    ap.add_argument("--limit", type=int, default=None)
    args = ap.parse_args()

    import dlib

    from deid.faces import align
    from deid.faces.centerface_backend import CenterFaceDetector
    from deid.faces.models import dlib_model_path
    from deid.faces.types import iou
    from deid.io.decode import decode_image

    files = sorted(p for p in args.images.rglob("*.jpg"))[: args.limit]
    if not files:
        sys.exit(f"no .jpg under {args.images}")
    hog = dlib.get_frontal_face_detector()
    sp68 = dlib.shape_predictor(dlib_model_path("dlib-shape68"))
    sp5 = dlib.shape_predictor(dlib_model_path("dlib-shape5"))
    cf = CenterFaceDetector()
    rows = []
    for path in files:
        rgb = decode_image(path.read_bytes(), max_pixels=10**8, name=str(path)).rgb
        rects = hog(rgb, 1)
        if len(rects) != 1:
            continue
        r = rects[0]
        p68 = np.array([(q.x, q.y) for q in sp68(rgb, r).parts()], dtype=np.float64)
        p5 = np.array([(q.x, q.y) for q in sp5(rgb, r).parts()], dtype=np.float64)
        box = (r.left(), r.top(), r.right() + 1, r.bottom() + 1)
        cfs = [f for f in cf.detect(rgb) if iou(f.box, box) >= 0.3]
        rows.append((p68, {"dlib5": p5, "arcface5": cfs[0].landmarks5 if cfs else None}))
    fit, test = rows[0::2], rows[1::2]
    print(f"faces: {len(rows)} of {len(files)} photos (one dlib HOG face each); fit on {len(fit)}, test on {len(test)}")

    def unit(m, pts):
        return (np.asarray(pts, dtype=np.float64) @ m[:, :2].T + m[:, 2]) / 1024.0

    tmpl, ks = {}, []
    for name in ("dlib5", "arcface5"):
        pos = [unit(align.ffhq_recipe(p68, 1024), five[name]) for p68, five in fit if five[name] is not None]
        tmpl[name] = np.mean(pos, axis=0)
        same = np.allclose(np.round(tmpl[name], 4), align.FFHQ_TEMPLATES[name], atol=2e-4)
        print(f'  "{name}": {np.round(tmpl[name], 4).tolist()},  # {len(pos)} faces; '
              f'{"as in deid.faces.align" if same else "differs from deid.faces.align"}')
    for p68, five in fit:
        eye = (p68[36:42].mean(axis=0) + p68[42:48].mean(axis=0)) / 2
        v = p68[33] - eye
        ks.append(float(((p68[48] + p68[54]) / 2 - eye) @ v / (v @ v)))
    k = float(np.median(ks))

    def recipe5(pts, name):  # the eyes-mouth recipe on 5 points, through a synthetic 68-point set
        p = np.asarray(pts, dtype=np.float64)
        if name == "arcface5":
            el, er, ml, mr = p[0], p[1], p[3], p[4]
        else:
            el, er = (p[2] + p[3]) / 2, (p[0] + p[1]) / 2
            mouth = (el + er) / 2 + k * (p[4] - (el + er) / 2)
            ml = mr = mouth
        q = np.zeros((68, 2))
        q[36:42], q[42:48], q[48], q[54] = el, er, ml, mr
        return align.ffhq_recipe(q, 1024)

    from skimage.transform import SimilarityTransform

    def by_template(pts, name):
        t = SimilarityTransform.from_estimate(np.asarray(pts, dtype=np.float64), tmpl[name] * 1024)
        return t.params[:2]

    err: dict[str, list] = {}
    for p68, five in test:
        m_true = align.ffhq_recipe(p68, 1024)
        for name, pts in five.items():
            if pts is None:
                continue
            err.setdefault(f"{name} template (deid)", []).append(crop_error(m_true, by_template(pts, name)))
            err.setdefault(f"{name} eyes-mouth recipe", []).append(crop_error(m_true, recipe5(pts, name)))
    print(f"\n| 5-point fit | faces | median px | p90 px |  (1024 px crop; dlib5 mouth k = {k:.3f})")
    print("|---|---|---|---|")
    for name, e in sorted(err.items()):
        print(f"| {name} | {len(e)} | {np.median(e):.1f} | {np.percentile(e, 90):.1f} |")


if __name__ == "__main__":
    main()

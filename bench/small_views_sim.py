"""The small-face cascade's proposals per source (upright, turned views, 2x upright), with
O-Net's probability, on the labelled photos and the scenes; then, per source and threshold,
the 14-24 px faces added to the default's coverage (--keep: its released scenes) and the kept
proposals that touch no truth box.

    PYTHONPATH=. .venv/bin/python bench/small_views_sim.py collect --seed 2024 --out /tmp/sf/cand2024.pkl
    PYTHONPATH=. .venv/bin/python bench/small_views_sim.py report /tmp/sf/cand2024.pkl:/tmp/sf/keep2024 ...
"""

from __future__ import annotations

import argparse
import pickle
import sys
from pathlib import Path

import numpy as np

sys.path.insert(0, str(Path(__file__).resolve().parent))
import recall  # noqa: E402
import small_sim  # noqa: E402


def touches(b, truths):
    return any(b[0] < t[2] and t[0] < b[2] and b[1] < t[3] and t[1] < b[3] for t in truths)


def collect(seed: int, labelled: bool, out: Path, low: float = 0.02, max_px: float = 28, all_2x: bool = False):
    import cv2
    from PIL import Image

    from deid.faces.centerface_backend import CenterFaceDetector, load_onet, onet_probs
    from deid.faces.types import Face
    from deid.faces.views import map_face, rotated_views, upright

    recall.one_thread()
    det = CenterFaceDetector(min_score=low)
    onet = load_onet()
    labels = recall.load_labels()
    strangers, face_box = recall.load_strangers(160, seed, recall.DEFAULT_CACHE)
    rng = np.random.default_rng(seed)
    pool = recall.backgrounds(labels)
    scenes = [recall.make_scene(rng, strangers, face_box, pool, 1280, 960, n_faces=12) for _ in range(24)]
    images = [(f"scene{i}", sc.rgb, [f.box for f in sc.faces]) for i, sc in enumerate(scenes)]
    if labelled:
        images += [(f"lab:{rel}", np.asarray(Image.open(recall.GROUP / rel).convert("RGB")), [f["box"] for f in fs])
                   for rel, fs in labels.items()]
    rows = []
    for key, rgb, truth in images:
        h, w = rgb.shape[:2]
        views = [upright(rgb), *rotated_views(rgb, CenterFaceDetector.ROTATIONS, CenterFaceDetector.TILT, "frame")]
        big = cv2.resize(rgb, (w * 2, h * 2), interpolation=cv2.INTER_CUBIC)
        views.append(("up", big, np.array([[0.5, 0, 0], [0, 0.5, 0]])))
        if all_2x:  # the turned views upscaled 2x too ("up-rot90", ...)
            for view, img, inv in list(views[1:5]):
                big = cv2.resize(img, (img.shape[1] * 2, img.shape[0] * 2), interpolation=cv2.INTER_CUBIC)
                views.append((f"up-{view}", big, inv @ np.array([[0.5, 0, 0], [0, 0.5, 0], [0, 0, 1.0]])))
        for view, img, inv in views:
            boxes, scores, pts = det.raw(img)
            lim = max_px * (2 if view.startswith("up") else 1)
            sel = (boxes[:, 2] - boxes[:, 0] < lim) & (boxes[:, 3] - boxes[:, 1] < lim)
            boxes, scores, pts = boxes[sel], scores[sel], pts[sel]
            probs = onet_probs(onet, img, boxes, 0.0)
            for b, s, p, pr in zip(boxes, scores, pts, probs):
                f, _, _ = map_face(Face(box=tuple(b), score=float(s), landmarks5=p), inv, w, h, view, 0)
                ious = [recall.iou(t, f.box) for t in truth]
                k = int(np.argmax(ious)) if ious else -1
                tag = k if k >= 0 and ious[k] >= 0.3 else (-2 if touches(f.box, truth) else -1)
                rows.append((key, view, float(s), float(pr), tag, tuple(f.box)))
        print(key, len(rows), file=sys.stderr, flush=True)
    out.write_bytes(pickle.dumps(rows))


def report(pairs, p_grid=(0.9, 0.95, 0.98, 0.99, 0.995)):
    for pair in pairs:
        pkl, keep = pair.split(":")
        seed = int(Path(pkl).stem.replace("cand", ""))
        rows = pickle.loads(Path(pkl).read_bytes())
        cov = small_sim.baseline(seed, Path(keep))
        small = [k for k, (c, w, e) in cov.items() if not e and 14 <= w <= 24]
        base = {k for k in small if cov[k][0]}
        nlab = len({r[0] for r in rows if r[0].startswith("lab:")})
        print(f"\n{pkl}: 14-24 px {len(base)}/{len(small)} covered by the default; {nlab} labelled photos")
        sources = {"upright [0.02,0.2)": lambda r: r[1] == "" and r[2] < 0.2,
                   "turned [0.02,0.3)": lambda r: r[1] not in ("", "up") and r[2] < 0.3,
                   "2x [0.05,1]": lambda r: r[1] == "up" and r[2] >= 0.05,
                   "2x [0.1,1]": lambda r: r[1] == "up" and r[2] >= 0.1,
                   "2x [0.2,1]": lambda r: r[1] == "up" and r[2] >= 0.2}
        for name, pick in sources.items():
            cells = []
            for p in p_grid:
                kept = [r for r in rows if pick(r) and r[3] >= p]
                hit = {(r[0], r[4]) for r in kept if r[4] >= 0} & set(small)
                fpl = [r for r in kept if r[4] == -1 and r[0].startswith("lab:")]
                fps = [r for r in kept if r[4] == -1 and not r[0].startswith("lab:")]
                cells.append(f"p{p}: +{len(hit - base)} fp {len(fpl)}/{len(fps)}")
            print(f"   {name}: " + " | ".join(cells))
        # combinations: (p upright, p turned, 2x min score, p 2x); None = that source off
        for pu, pt, lo2, p2 in [(0.9, None, None, None), (0.9, 0.98, None, None), (0.9, 0.99, None, None),
                                (0.9, 0.995, None, None), (0.9, 0.99, 0.05, 0.98), (0.9, 0.99, 0.05, 0.99),
                                (0.9, 0.99, 0.1, 0.98), (0.9, None, 0.05, 0.98), (0.9, 0.995, 0.05, 0.99),
                                (0.9, 0.99, 0.05, 0.95), (0.9, 0.98, 0.05, 0.95), (0.9, 0.98, 0.05, 0.9)]:
            kept = [r for r in rows if (r[1] == "" and r[2] < 0.2 and r[3] >= pu)
                    or (pt is not None and r[1] not in ("", "up") and r[2] < 0.3 and r[3] >= pt)
                    or (lo2 is not None and r[1] == "up" and r[2] >= lo2 and r[3] >= p2)]
            hit = {(r[0], r[4]) for r in kept if r[4] >= 0} & set(small)
            fpl = [r for r in kept if r[4] == -1 and r[0].startswith("lab:")]
            fps = [r for r in kept if r[4] == -1 and not r[0].startswith("lab:")]
            tot = len(base | hit)
            print(f"   combo up {pu} turned {pt} 2x {lo2}/{p2}: 14-24 px {tot}/{len(small)} ({tot / len(small):.0%}); "
                  f"fp {len(fpl)} labelled ({', '.join(sorted({r[0][4:].split('/')[-1] for r in fpl}))}) / {len(fps)} scenes")
    print("   (+n: faces 14-24 px not covered by the default that a kept proposal matches; fp a/b: kept proposals "
          "touching no truth box, labelled photos / scenes)")


def main():
    ap = argparse.ArgumentParser()
    sub = ap.add_subparsers(dest="cmd", required=True)
    c = sub.add_parser("collect")
    c.add_argument("--seed", type=int, default=2024)
    c.add_argument("--skip-labelled", action="store_true")
    c.add_argument("--out", type=Path, required=True)
    c.add_argument("--all-2x", action="store_true", help="also the turned views upscaled 2x")
    r = sub.add_parser("report")
    r.add_argument("pairs", nargs="+")
    args = ap.parse_args()
    if args.cmd == "collect":
        collect(args.seed, not args.skip_labelled, args.out, all_2x=args.all_2x)
    else:
        report(args.pairs)


if __name__ == "__main__":
    main()

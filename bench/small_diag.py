"""Small faces (14-24 px): CenterFace's heatmap scores on them, native and 2x, and O-Net's
probability on CenterFace's low-score small detections (the cascade's raw material).

    PYTHONPATH=. .venv/bin/python bench/small_diag.py --seed 2024 --out /tmp/sf/diag2024.npz
    PYTHONPATH=. .venv/bin/python bench/small_diag.py --seed 7 --skip-labelled --out /tmp/sf/diag7.npz

Per image it stores CenterFace's detections at heatmap 0.02 (after NMS) on the native upright
pass and on a 2x (cubic) upscaled upright pass, in original pixels; for the synthetic faces
of 14-24 px inside the frame it prints the best score over the detections (before NMS)
overlapping each face (IoU >= 0.3).
"""

from __future__ import annotations

import argparse
import sys
import time
from pathlib import Path

import numpy as np

sys.path.insert(0, str(Path(__file__).resolve().parent))
import recall  # noqa: E402


def passes(det, rgb, scales=(1.0, 2.0), threshold=0.02):
    """{scale: (boxes_nms, scores_nms, boxes_all, scores_all)} in rgb's pixels."""
    import cv2

    from deid.faces.centerface_backend import INPUT, OUTPUTS, PAD_TO, decode, nms

    out = {}
    for s in scales:
        img = rgb if s == 1.0 else cv2.resize(rgb, (round(rgb.shape[1] * s), round(rgb.shape[0] * s)),
                                                interpolation=cv2.INTER_CUBIC)
        h, w = img.shape[:2]
        ph, pw = -(-h // PAD_TO) * PAD_TO, -(-w // PAD_TO) * PAD_TO
        blob = np.zeros((1, 3, ph, pw), dtype=np.float32)
        blob[0, :, :h, :w] = img.transpose(2, 0, 1)
        heat, scale, offset, kps = det._sess.run(list(OUTPUTS), {INPUT: blob})
        boxes, scores, _ = decode(heat, scale, offset, kps, threshold)
        keep = nms(boxes, scores)
        out[s] = (boxes[keep] / s, scores[keep], boxes / s, scores)
    return out


def best_over(truth, boxes, scores, thr=0.3) -> float:
    best = 0.0
    for b, sc in zip(boxes, scores):
        if sc > best and recall.iou(truth, b) >= thr:
            best = float(sc)
    return best


def main():
    ap = argparse.ArgumentParser()
    ap.add_argument("--seed", type=int, default=2024)
    ap.add_argument("--skip-labelled", action="store_true")
    ap.add_argument("--out", type=Path, required=True)
    args = ap.parse_args()
    from deid.faces.centerface_backend import CenterFaceDetector

    recall.one_thread()
    det = CenterFaceDetector(min_score=0.02)
    labels = recall.load_labels()
    strangers, face_box = recall.load_strangers(160, args.seed, recall.DEFAULT_CACHE)
    rng = np.random.default_rng(args.seed)
    pool = recall.backgrounds(labels)
    scenes = [recall.make_scene(rng, strangers, face_box, pool, 1280, 960, n_faces=12) for _ in range(24)]
    store = {}
    t = time.perf_counter()
    best = []  # (width, native, 2x) per small face
    for i, sc in enumerate(scenes):
        p = passes(det, sc.rgb)
        for s, (b, v, _, _) in p.items():
            store[f"scene{i}/{s:g}/boxes"], store[f"scene{i}/{s:g}/scores"] = b, v
        store[f"scene{i}/truth"] = np.array([f.box for f in sc.faces])
        store[f"scene{i}/width"] = np.array([f.width for f in sc.faces])
        store[f"scene{i}/edge"] = np.array([f.edge for f in sc.faces])
        for f in sc.faces:
            if f.edge or not (14 <= f.width <= 24):
                continue
            best.append((f.width, best_over(f.box, p[1.0][2], p[1.0][3]), best_over(f.box, p[2.0][2], p[2.0][3])))
    print(f"scenes: {time.perf_counter() - t:.0f} s", file=sys.stderr)
    if not args.skip_labelled:
        from PIL import Image

        for rel in labels:
            rgb = np.asarray(Image.open(recall.GROUP / rel).convert("RGB"))
            p = passes(det, rgb)
            key = rel.replace("/", "__")
            for s, (b, v, _, _) in p.items():
                store[f"lab:{key}/{s:g}/boxes"], store[f"lab:{key}/{s:g}/scores"] = b, v
            store[f"lab:{key}/truth"] = np.array([f["box"] for f in labels[rel]])
    best = np.array(best)
    store["small_best"] = best
    np.savez_compressed(args.out, **store)
    n = len(best)
    print(f"seed {args.seed}: {n} faces of 14-24 px inside the frame; best CenterFace heatmap score over "
          "detections (before NMS) with IoU >= 0.3")
    for col, name in ((1, "native"), (2, "2x cubic")):
        cells = ", ".join(f">= {t:g}: {int((best[:, col] >= t).sum())} ({(best[:, col] >= t).mean():.0%})"
                          for t in (0.02, 0.05, 0.1, 0.2, 0.3, 0.5))
        print(f"   {name}: {cells}")
    either = np.maximum(best[:, 1], best[:, 2])
    print("   either: " + ", ".join(f">= {t:g}: {int((either >= t).sum())} ({(either >= t).mean():.0%})"
                                    for t in (0.05, 0.1, 0.2)))


if __name__ == "__main__":
    main()

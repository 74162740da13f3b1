"""The cascade's thresholds from stored CenterFace detections (bench/small_diag.py's npz):
O-Net's probability on each low-score small detection, then, per (low threshold, O-Net
threshold), the 14-24 px synthetic faces newly matched (IoU >= 0.3) and the kept detections
that touch no truth box (labelled photos, scenes).

    PYTHONPATH=. .venv/bin/python bench/small_cascade.py /tmp/sf/diag2024.npz --seed 2024
"""

from __future__ import annotations

import argparse
import sys
from pathlib import Path

import numpy as np

sys.path.insert(0, str(Path(__file__).resolve().parent))
import recall  # noqa: E402


def load_onet():
    import torch

    from deid.faces.mtcnn_nets import _net, weight_files

    net = _net("onet")
    net.load_state_dict(torch.load(weight_files()["onet"], map_location="cpu", weights_only=True))
    return net.eval().to(memory_format=torch.channels_last)


def onet_probs(net, rgb, boxes, margin=0.1, interp="linear"):
    import cv2
    import torch

    if not len(boxes):
        return np.zeros(0)
    crops = []
    h, w = rgb.shape[:2]
    for x0, y0, x1, y1 in boxes:
        side = max(x1 - x0, y1 - y0) * (1 + 2 * margin)
        cx, cy = (x0 + x1) / 2, (y0 + y1) / 2
        # the square window mapped onto 48x48 by an affine warp (sub-pixel, replicated border)
        s = 48.0 / side
        m = np.array([[s, 0, 24 - s * cx], [0, s, 24 - s * cy]])
        flag = cv2.INTER_LINEAR if interp == "linear" else cv2.INTER_AREA
        crops.append(cv2.warpAffine(rgb, m, (48, 48), flags=flag, borderMode=cv2.BORDER_REPLICATE))
    x = torch.from_numpy(np.stack(crops).astype(np.float32)).permute(0, 3, 1, 2)
    with torch.inference_mode():
        prob = net((x - 127.5) * 0.0078125)[-1][:, 1].numpy()
    return prob


def touches(b, truths):
    return any(b[0] < t[2] and t[0] < b[2] and b[1] < t[3] and t[1] < b[3] for t in truths)


def main():
    ap = argparse.ArgumentParser()
    ap.add_argument("npz", nargs="+", type=Path)
    ap.add_argument("--margin", type=float, nargs="+", default=[0.0, 0.1, 0.2])
    ap.add_argument("--max-box", type=float, default=28)
    args = ap.parse_args()
    from PIL import Image

    recall.one_thread()
    net = load_onet()
    labels = recall.load_labels()
    for path in args.npz:
        d = dict(np.load(path))
        seed = int(path.stem.replace("diag", ""))
        strangers, face_box = recall.load_strangers(160, seed, recall.DEFAULT_CACHE)
        rng = np.random.default_rng(seed)
        pool = recall.backgrounds(labels)
        scenes = [recall.make_scene(rng, strangers, face_box, pool, 1280, 960, n_faces=12) for _ in range(24)]
        images = {f"scene{i}": sc.rgb for i, sc in enumerate(scenes)}
        if any(k.startswith("lab:") for k in d):
            for rel in labels:
                images[f"lab:{rel.replace('/', '__')}"] = np.asarray(Image.open(recall.GROUP / rel).convert("RGB"))
        for margin in args.margin:
            rows = []  # (image, kind(scale), score, prob, box, truth-index-or-(-1 fp / -2 other face))
            for key, rgb in images.items():
                truth = d[f"{key}/truth"]
                small = [i for i in range(len(truth))] if key.startswith("lab:") else \
                    [i for i in range(len(truth)) if not d[f"{key}/edge"][i] and 14 <= d[f"{key}/width"][i] <= 24]
                for s in ("1", "2"):
                    b, v = d[f"{key}/{s}/boxes"], d[f"{key}/{s}/scores"]
                    sel = [j for j in range(len(b)) if b[j][2] - b[j][0] < args.max_box]
                    probs = onet_probs(net, rgb, b[sel], margin)
                    for j, p in zip(sel, probs):
                        ious = [recall.iou(truth[i], b[j]) for i in range(len(truth))]
                        k = int(np.argmax(ious)) if len(ious) else -1
                        hit = k if k >= 0 and ious[k] >= 0.3 else -1
                        tag = hit if hit >= 0 else (-2 if touches(b[j], truth) else -1)
                        rows.append((key, s, float(v[j]), float(p), tag))
            print(f"\n{path.name}, margin {margin}: candidate detections (box < {args.max_box:g} px)")
            # separation summary: probs on true small faces vs FPs (score < 0.2)
            for s in ("1", "2"):
                tp = [p for key, ss, v, p, tag in rows if ss == s and tag >= 0 and v < 0.2]
                fp = [p for key, ss, v, p, tag in rows if ss == s and tag == -1]
                fpl = [p for key, ss, v, p, tag in rows if ss == s and tag == -1 and key.startswith("lab:")]
                q = lambda a, t: f"{int((np.array(a) >= t).sum())}" if a else "0"
                print(f"   pass {s}x: on faces (score<0.2) n={len(tp)}, FP n={len(fp)} (labelled {len(fpl)}); "
                      + "; ".join(f"p>={t}: {q(tp, t)} / {q(fp, t)} / lab {q(fpl, t)}" for t in (0.5, 0.8, 0.9, 0.95, 0.99)))
            np.save(path.with_name(f"{path.stem}-m{margin}.npy"), np.array(rows, dtype=object), allow_pickle=True)


if __name__ == "__main__":
    main()

"""Detectors side by side: recall on hand-labelled boxes, faces found on public photos,
cost per photo on one core, and the dlib box convention for CenterFace faces.

    PYTHONPATH=. .venv/bin/python bench/detectors.py            # ~2 min on 2 cores

1. Recall on the hand-labelled boxes of ../shared/data/group/dlib_examples_faces
   (training.xml + testing.xml: 9 photos, 43 frontal faces). A box is found when a detection
   overlaps it with IoU >= 0.3 (and >= 0.5), one detection per box; "other" = detections
   matching no labelled box (faces the labels leave out, or false positives: the labels
   mark only frontal faces, so look at them: --sheet writes a contact sheet of them).
2. On ``--n`` photos of the public reference set (../shared/data/lfw-public-ref, 250x250,
   one labelled person each, often with other people behind): photos whose central face is
   found, detections in all, and milliseconds per photo with ONE thread (onnxruntime with one
   intra-op thread; dlib is single-threaded), median over the photos.
3. CenterFace boxes are framed differently from dlib's (taller: forehead to chin). dlib's
   landmark models, run on a CenterFace face (identity check, dlib5 latent models), start
   from ``Face.dlib_box``, the box mapped into dlib's convention. The mapping (the HOG box's
   edges in units of the CenterFace box, median over faces both find) is fitted on photos
   [0, n) and evaluated on the disjoint photos [n, 2n): mean dlib 5-point landmark error
   against the HOG-based landmarks (fraction of the eye distance) and the dlib ResNet-128
   distance between the two alignments' embeddings (0.6 = same-person threshold), from the
   raw CenterFace box and from the mapped box.
"""

from __future__ import annotations

import argparse
import time
import xml.etree.ElementTree as ET
from pathlib import Path

import numpy as np
from PIL import Image

DATA = Path(__file__).resolve().parents[2] / "shared" / "data"
VOC = DATA / "group" / "dlib_examples_faces"


def rgb(path) -> np.ndarray:
    return np.asarray(Image.open(path).convert("RGB"))


def voc_truth() -> dict[str, list[tuple[int, int, int, int]]]:
    truth = {}
    for xml in ("training.xml", "testing.xml"):
        for im in ET.parse(VOC / xml).getroot().iter("image"):
            truth[im.get("file")] = [
                (int(b.get("left")), int(b.get("top")), int(b.get("left")) + int(b.get("width")),
                 int(b.get("top")) + int(b.get("height"))) for b in im.findall("box")]
    return truth


def match(truth_boxes, found, thr) -> tuple[int, int]:
    """Greedy one-to-one matching by IoU: (labelled boxes found, detections matching none)."""
    from deid.faces.types import iou

    pairs = sorted(((iou(t, f.box), i, j) for i, t in enumerate(truth_boxes) for j, f in enumerate(found)), reverse=True)
    used_t, used_f = set(), set()
    for v, i, j in pairs:
        if v >= thr and i not in used_t and j not in used_f:
            used_t.add(i)
            used_f.add(j)
    return len(used_t), len(found) - len(used_f)


def central(faces, lo=90, hi=160):
    return [f for f in faces if lo < (f.box[0] + f.box[2]) / 2 < hi and lo < (f.box[1] + f.box[3]) / 2 < hi]


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--n", type=int, default=300, help="public photos for part 2 and the fit of part 3")
    ap.add_argument("--thresholds", default="0.1,0.2,0.3,0.4,0.5")
    ap.add_argument("--sheet", default=None, help="write a contact sheet of CenterFace's unlabelled detections here")
    args = ap.parse_args()

    import dlib

    from deid.faces.centerface_backend import CenterFaceDetector
    from deid.faces.dlib_backend import DlibDetector, DlibEmbedder, _shape5, _shape_points
    from deid.faces.types import Face

    thresholds = [float(t) for t in args.thresholds.split(",")]
    hog = DlibDetector()
    cf = CenterFaceDetector(threads=1)
    detectors = [("dlib-hog (upsample 1)", hog, None)] + [(f"centerface {t:g}", cf, t) for t in thresholds]

    truth = voc_truth()
    images = {n: rgb(VOC / n) for n in truth}
    n_boxes = sum(len(b) for b in truth.values())
    print(f"1. hand-labelled boxes: {VOC.name} training.xml + testing.xml, {len(truth)} photos, {n_boxes} faces")
    print(f"{'detector':24} {'found@0.3':>9} {'found@0.5':>9} {'other@0.3':>9}")
    for name, det, thr in detectors:
        if thr is not None:
            det.threshold = thr
        f3 = f5 = other = 0
        for n, boxes in truth.items():
            found = det.detect(images[n])
            a, o = match(boxes, found, 0.3)
            f3, other = f3 + a, other + o
            f5 += match(boxes, found, 0.5)[0]
        print(f"{name:24} {f3:>5}/{n_boxes:<3} {f5:>5}/{n_boxes:<3} {other:>9}")

    public = sorted((DATA / "lfw-public-ref").glob("*.jpg"))
    fit, val = [rgb(p) for p in public[:args.n]], [rgb(p) for p in public[args.n:2 * args.n]]
    print(f"\n2. public reference photos 0..{args.n - 1} (250x250): central face found, detections, ms/photo on one thread")
    print(f"{'detector':24} {'central':>9} {'detections':>10} {'ms/photo':>9}")
    for name, det, thr in detectors:
        if thr is not None:
            det.threshold = thr
        hits = dets = 0
        ms = []
        for im in fit:
            t = time.perf_counter()
            faces = det.detect(im)
            ms.append((time.perf_counter() - t) * 1000)
            hits += bool(central(faces))
            dets += len(faces)
        print(f"{name:24} {hits:>5}/{len(fit):<3} {dets:>10} {np.median(ms):>9.2f}")

    cf.threshold = CenterFaceDetector.DEFAULT_THRESHOLD
    edges = []
    for im in fit:
        h, c = central(hog.detect(im)), central(cf.detect(im))
        if h and c:
            hb, cb = np.array(h[0].box, float), np.array(c[0].box, float)
            wh = cb[2:] - cb[:2]
            edges.append(np.concatenate([(hb[:2] - cb[:2]) / wh, (hb[2:] - cb[:2]) / wh]))
    mapping = np.median(edges, axis=0)
    print(f"\n3. dlib box from a CenterFace box, fitted on {len(edges)} faces (photos 0..{args.n - 1}): "
          f"x0 {mapping[0]:+.3f} w, y0 {mapping[1]:+.3f} h, x1 {mapping[2]:+.3f} w, y1 {mapping[3]:+.3f} h "
          f"(deid uses {tuple(round(float(v), 3) for v in CenterFaceDetector.DLIB_BOX)})")
    sp5, emb = _shape5(), DlibEmbedder()
    err = {"raw box": [], "mapped box": []}
    dist = {"raw box": [], "mapped box": []}
    for im in val:
        h, c = central(hog.detect(im)), central(cf.detect(im))
        if not (h and c):
            continue
        ref = h[0].landmarks5
        iod = np.linalg.norm(ref[0] - ref[2])
        e_ref = emb.embed_faces(im, [h[0]])[0]
        x0, y0, x1, y1 = c[0].box
        w, hh = x1 - x0, y1 - y0
        boxes = {"raw box": (x0, y0, x1, y1),
                 "mapped box": (x0 + mapping[0] * w, y0 + mapping[1] * hh, x0 + mapping[2] * w, y0 + mapping[3] * hh)}
        for k, b in boxes.items():
            b = [int(round(v)) for v in b]
            pts = _shape_points(sp5(im, dlib.rectangle(b[0], b[1], b[2] - 1, b[3] - 1)))
            err[k].append(np.linalg.norm(pts - ref, axis=1).mean() / iod)
            e = emb.embed_faces(im, [Face(box=c[0].box, score=1.0, landmarks5=pts, landmark_layout="dlib5")])[0]
            dist[k].append(float(np.linalg.norm(e - e_ref)))
    print(f"   evaluated on {len(err['raw box'])} faces (photos {args.n}..{2 * args.n - 1}):")
    for k in err:
        print(f"   {k:11} landmark error / eye distance: median {np.median(err[k]):.3f}, p95 {np.percentile(err[k], 95):.3f}; "
              f"embedding distance to the HOG alignment: median {np.median(dist[k]):.3f}, p95 {np.percentile(dist[k], 95):.3f}")

    if args.sheet:
        crops = []
        cf.threshold = min(thresholds)
        for n, boxes in truth.items():
            from deid.faces.types import iou

            im = Image.fromarray(images[n])
            for g in cf.detect(images[n]):
                if max([iou(b, g.box) for b in boxes] or [0]) < 0.3:
                    x0, y0, x1, y1 = g.box
                    m = x1 - x0
                    crops.append((g.score, im.crop((x0 - m, y0 - m, x1 + m, y1 + m)).resize((120, 120))))
        from PIL import ImageDraw

        sheet = Image.new("RGB", (120 * 8, 120 * max(1, (len(crops) + 7) // 8)))
        for i, (score, c) in enumerate(sorted(crops, key=lambda x: -x[0])):
            ImageDraw.Draw(c).text((3, 3), f"{score:.2f}", fill=(255, 0, 0))
            sheet.paste(c, ((i % 8) * 120, (i // 8) * 120))
        sheet.save(args.sheet)
        print(f"\ncontact sheet of {len(crops)} unlabelled CenterFace detections (threshold {cf.threshold:g}): {args.sheet}")
    print(time.strftime("\n%Y-%m-%d %H:%M UTC", time.gmtime()))


if __name__ == "__main__":
    main()

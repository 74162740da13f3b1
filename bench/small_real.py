"""Small real faces: LFW faces of 16-22 px pasted into real group photos, found by detector configs.

The synthetic crowd of bench/recall.py is made of generated faces, which are cleaner than real
small faces in real photos. This check uses real faces: lfw-dev's first photo of each person,
shrunk to 16-22 px wide and pasted into the large group photos of ../shared/data/group, away
from their labelled faces (the fixture of tests/test_centerface_backend.py), each photo saved
losslessly and as JPEG quality 70 (what most photo collections are). A face counts as found when
a detection overlaps its box with IoU >= 0.3; "extra" = detections overlapping no pasted face and
no labelled face.

    PYTHONPATH=. .venv/bin/python bench/small_real.py --seeds 0,1 \\
        --config 'default={}' --config 'views-mesh={"small_in_views": true, "small_mesh": 0.5}'

Each config is a JSON object of ``detect`` params over ``{"backend": "centerface"}``.
"""

from __future__ import annotations

import argparse
import io
import json
import sys
import time
from pathlib import Path

import numpy as np
from PIL import Image

REPO = Path(__file__).resolve().parent.parent
sys.path.insert(0, str(REPO / "tests"))


def jpeg(rgb: np.ndarray, quality: int) -> np.ndarray:
    buf = io.BytesIO()
    Image.fromarray(rgb).save(buf, "JPEG", quality=quality)
    return np.asarray(Image.open(buf).convert("RGB"))


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--seeds", default="0,1", help="placements of the pasted faces (10 per photo, 4 photos each)")
    ap.add_argument("--config", action="append", default=[], metavar="NAME=JSON", help="detect params (repeatable)")
    ap.add_argument("--quality", type=int, default=70, help="JPEG quality of the second copy")
    args = ap.parse_args()
    from test_centerface_backend import _pasted_small_faces, pasted_backgrounds  # the tests' fixture, real faces

    from deid.faces.registry import make_detector
    from deid.faces.types import iou

    labels = json.loads((REPO / "tests" / "fixtures" / "group_faces.json").read_text())
    configs = [("default", {})] + [(n, json.loads(v)) for n, _, v in (c.partition("=") for c in args.config)]
    dets = [(name, make_detector({"backend": "centerface", **cfg})) for name, cfg in configs]
    photos = []
    for seed in (int(s) for s in args.seeds.split(",")):
        for rel, (img, truth) in zip(pasted_backgrounds(labels), _pasted_small_faces(seed=seed)):
            known = [tuple(f["box"]) for f in labels[rel]]
            photos += [("png", img, truth, known), (f"jpeg{args.quality}", jpeg(img, args.quality), truth, known)]
    print(f"{len(photos) // 2} photos x 2 encodings, {sum(len(t) for _, _, t, _ in photos) // 2} pasted faces each")
    print("| config | found, lossless | found, JPEG | extra per photo | s per photo |")
    print("|---|---:|---:|---:|---:|")
    for name, det in dets:
        found = {"png": 0, f"jpeg{args.quality}": 0}
        n = dict.fromkeys(found, 0)
        extra, secs = 0, 0.0
        for enc, img, truth, known in photos:
            t0 = time.process_time()
            got = det.detect(img)
            secs += time.process_time() - t0
            n[enc] += len(truth)
            found[enc] += sum(any(iou(f.box, t) >= 0.3 for f in got) for t in truth)
            extra += sum(not any(iou(f.box, t) >= 0.3 for t in list(truth) + known) for f in got)
        cells = [f"{found[e]}/{n[e]} ({100 * found[e] / n[e]:.0f}%)" for e in found]
        print(f"| {name} | {cells[0]} | {cells[1]} | {extra / len(photos):.2f} | {secs / len(photos):.2f} |")


if __name__ == "__main__":
    main()

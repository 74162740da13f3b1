"""Verification accuracy and same-person threshold of the evaluation recognizers.

On a labelled folder (default /work/shared/data/lfw-dev): detect the largest face with
dlib HOG, embed it with every registered recognizer (``deid plugins --kind recognizer``:
dlib ResNet-128 and MobileFaceNet), located once with one shared landmarker as
``deid evaluate`` does, form every same-subject pair and
as many different-subject pairs (fixed seed), and run the LFW 10-fold protocol: on each
fold the threshold is chosen on the other nine and accuracy measured on the held-out one.
Prints accuracy (mean +- std over folds) and the mean threshold per recognizer.

    python bench/recognizer_accuracy.py [FOLDER]
"""

from __future__ import annotations

import sys
import time
from pathlib import Path

import numpy as np
from PIL import Image

from deid.evaluate.recognizers import Landmarker
from deid.evaluate.registry import RECOGNIZERS, make_recognizer
from deid.faces import make_detector

sys.path.insert(0, str(Path(__file__).resolve().parent))
from min_face import make_pairs, tenfold  # noqa: E402 - the same pair protocol, one copy


def main(root: Path) -> None:
    paths = sorted(root.glob("*/*.jpg"))
    det, lm = make_detector({"backend": "dlib-hog"}), Landmarker()
    recs = [make_recognizer(name, landmarker=lm) for name in RECOGNIZERS.names()]
    labels, embs = [], {r.name: [] for r in recs}
    t0 = time.perf_counter()
    for p in paths:
        rgb = np.asarray(Image.open(p).convert("RGB"))
        faces = det.detect(rgb)
        if not faces:
            continue
        f = max(faces, key=lambda f: f.width * f.height)
        g = lm.geometry(rgb, f.box)
        labels.append(p.parent.name)
        for r in recs:
            embs[r.name].append(r.embed(rgb, r.locate(rgb, [g]))[0])
    print(f"{len(labels)} faces of {len(set(labels))} subjects ({len(paths)} files) in {time.perf_counter() - t0:.0f} s")
    labels = np.array(labels)
    i, j, y, folds = make_pairs(labels)  # the protocol bench/min_face.py measures against face width
    print(f"{int(y.sum())} same-subject pairs, {int((~y).sum())} different-subject pairs, 10 folds")
    print(f"{'recognizer':<16} {'accuracy':>16} {'threshold':>16}")
    for r in recs:
        e = np.array(embs[r.name])
        accs, ths = tenfold(r.distance(e[i], e[j]), y, folds)
        print(f"{r.name:<16} {np.mean(accs):>9.4f} +- {np.std(accs):.4f} {np.mean(ths):>9.3f} +- {np.std(ths):.3f}")


if __name__ == "__main__":
    main(Path(sys.argv[1] if len(sys.argv) > 1 else "/work/shared/data/lfw-dev"))

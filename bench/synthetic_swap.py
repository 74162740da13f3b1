"""synthetic-swap cost: the stranger bank's build time, and the per-face time after the bank
exists, on one CPU thread, against blur measured in the same run (ratio).

    PYTHONPATH=. .venv/bin/python bench/synthetic_swap.py [--bank 128] [--faces 60]

Faces: the largest CenterFace face of the first ``--faces`` photos of lfw-dev (250x250, faces
~105 px) and every face of the group photos of manifests/samples (larger faces).
"""

from __future__ import annotations

import argparse
import os
import tempfile
import time
from pathlib import Path

os.environ.setdefault("OMP_NUM_THREADS", "1")

import cv2  # noqa: E402
import numpy as np  # noqa: E402
from PIL import Image  # noqa: E402

ROOT = Path(__file__).resolve().parents[1]


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--bank", type=int, default=128)
    ap.add_argument("--faces", type=int, default=60)
    ap.add_argument("--data", default=str(ROOT.parent / "shared" / "data" / "lfw-dev"))
    args = ap.parse_args()
    cv2.setNumThreads(1)
    from deid.anonymize.registry import make_anonymizer
    from deid.anonymize.swap import SyntheticSwap
    from deid.faces.registry import make_detector
    from deid.latent.registry import load_latent_model

    t = time.perf_counter()
    gen = load_latent_model({"backend": "mobilestylegan"})
    load_s = time.perf_counter() - t
    with tempfile.TemporaryDirectory() as tmp:
        t = time.perf_counter()
        swap = SyntheticSwap({"bank_size": args.bank, "bank_dir": tmp}, latent=gen)
        bank_s = time.perf_counter() - t
    blur = make_anonymizer("blur")
    det = make_detector({"backend": "centerface"})
    photos = [np.asarray(Image.open(p).convert("RGB")) for p in sorted(Path(args.data).glob("*/*.jpg"))[:args.faces]]
    sets = {"lfw-dev (largest face)": [(p, [max(det.detect(p), key=lambda f: f.width)]) for p in photos if det.detect(p)]}
    group = [np.asarray(Image.open(p).convert("RGB")) for p in sorted((ROOT / "manifests/samples/group").glob("*.jpg"))]
    sets["group photos (faces >= 32 px)"] = [(g, [f for f in det.detect(g) if f.width >= 32]) for g in group]
    rng = np.random.default_rng()
    print(f"generator load {load_s:.1f} s; bank of {args.bank} strangers built in {bank_s:.1f} s "
          f"({bank_s / args.bank:.2f} s per stranger)")
    print("| faces | n | synthetic-swap ms/face | blur ms/face | ratio |\n|---|---:|---:|---:|---:|")
    for name, items in sets.items():
        n = sum(len(f) for _, f in items)
        res = {}
        for label, method in (("swap", swap), ("blur", blur)):
            method(*items[0], rng)  # warm
            t = time.perf_counter()
            for rgb, faces in items:
                method(rgb, faces, rng)
            res[label] = 1000 * (time.perf_counter() - t) / max(1, n)
        print(f"| {name} | {n} | {res['swap']:.1f} | {res['blur']:.1f} | {res['swap'] / res['blur']:.1f}x |")


if __name__ == "__main__":
    main()

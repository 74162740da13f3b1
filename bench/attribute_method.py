"""The ``attribute`` method: attribute agreement, edit cost and a look at the outputs (docs/attributes.md).

Agreement (the issue's measure): per face, the attribute plug-in run on the RELEASED photo at the
face's box gives the value PPAS released; also what the edit loop's check read (``edit_check``:
the face swapped into the photo, or the decoded stranger alone). Faces: the largest CenterFace face of every ``--every``-th lfw-dev photo. One
release per face with the method's defaults (OpenDP randomized response: the released values
are random, so the released distribution is the reference-and-noise mix, not the photos').

    OMP_NUM_THREADS=1 PYTHONPATH=. python bench/attribute_method.py [--faces 40] [--png docs/img/attribute-samples.png]
"""

from __future__ import annotations

import argparse
import json
import time
from collections import Counter
from pathlib import Path

import numpy as np

REPO = Path(__file__).resolve().parents[1]


def main() -> None:
    ap = argparse.ArgumentParser()
    ap.add_argument("--data", default=str(REPO.parent / "shared" / "data" / "lfw-dev"))
    ap.add_argument("--faces", type=int, default=40)
    ap.add_argument("--bank", type=int, default=256)
    ap.add_argument("--png", default=None, help="write originals and outputs side by side here")
    ap.add_argument("--params", default="{}", help="the method's params (JSON) over the defaults, e.g. "
                    "'{\"edit_check\": \"stranger\"}'")
    a = ap.parse_args()

    from PIL import Image

    from deid.anonymize import make_anonymizer
    from deid.faces.registry import make_detector

    t = time.perf_counter()
    m = make_anonymizer("attribute", {"bank_size": a.bank, **json.loads(a.params)}, {"backend": "mobilestylegan"})
    print(f"method ready in {time.perf_counter() - t:.1f} s; card: "
          f"{ {n: v['heldout_accuracy'] for n, v in m.set.card()['attributes'].items()} }")
    det = make_detector({"backend": "centerface"})
    est = m.used["age-gender"]
    photos = sorted(Path(a.data).rglob("*.jpg"))
    photos = photos[:: max(1, len(photos) // a.faces)][: a.faces]
    m.trace = []
    agree, stranger, ms, decodes = Counter(), Counter(), [], []
    n = 0
    released_counts = {k: Counter() for k in m.specs}
    for p in photos:
        rgb = np.asarray(Image.open(p).convert("RGB"))
        faces = det.detect(rgb)
        if not faces:
            continue
        face = max(faces, key=lambda f: f.width * f.height)
        k = len(m.trace)
        t = time.perf_counter()
        out, facts = m(rgb, [face], np.random.default_rng())
        ms.append((time.perf_counter() - t) * 1000)
        if not facts[0].get("swapped"):
            continue
        tr = m.trace[k]
        decodes.append(tr["decodes"])
        seen = est.estimate(out, [face])[0]
        n += 1
        for attr, v in tr["released"].items():
            released_counts[attr][v] += 1
            agree[attr] += int(attr in seen and seen[attr].label == v)
            stranger[attr] += int(tr["checked"].get(attr) == v)
    print(f"faces: {n}; ms/face median {np.median(ms):.0f}, mean {np.mean(ms):.0f}; decodes/face mean "
          f"{np.mean(decodes):.2f}, 0 decodes (a stranger of the set already matched): {decodes.count(0)}")
    for attr in m.specs:
        print(f"{attr}: released photo {agree[attr]}/{n} = {agree[attr] / n:.1%}; the edit check's reading ({m.params.edit_check}) "
              f"{stranger[attr]}/{n} = {stranger[attr] / n:.1%}; released values {dict(released_counts[attr])}")
    if a.png:
        render(m, det, Path(a.png))


def render(m, det, path: Path) -> None:
    """Originals (top) and outputs (below) of the bundled lfw samples and a group photo."""
    from PIL import Image

    lfw = sorted((REPO / "manifests" / "samples" / "lfw").rglob("*.jpg"))[::3][:5]
    group = REPO / "manifests" / "samples" / "group" / "two_people.jpg"
    tiles = []
    for p in [*lfw, group]:
        rgb = np.asarray(Image.open(p).convert("RGB"))
        faces = [f for f in det.detect(rgb) if f.width >= 40]
        out, _ = m(rgb, faces, np.random.default_rng()) if faces else (rgb, [])
        tiles.append((rgb, out))
    h = 250
    cols = []
    for rgb, out in tiles:
        s = h / rgb.shape[0]
        size = (round(rgb.shape[1] * s), h)
        cols.append(np.concatenate([np.asarray(Image.fromarray(rgb).resize(size)),
                                    np.asarray(Image.fromarray(out).resize(size))], 0))
    gap = np.full((2 * h, 6, 3), 255, np.uint8)
    row = np.concatenate([x for c in cols for x in (c, gap)][:-1], 1)
    path.parent.mkdir(parents=True, exist_ok=True)
    Image.fromarray(row).save(path)
    print(f"wrote {path}")


if __name__ == "__main__":
    main()

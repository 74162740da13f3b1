"""Identity check vs face width: where the recognizers stop telling people apart
(``checks.min_face_px``, issue 11 item 4).

On a labelled folder (default /work/shared/data/lfw-dev, 250x250 photos): detect the
largest face of every photo with dlib HOG and find its landmarks (one shared
:class:`~deid.evaluate.recognizers.Landmarker`, 5 and 68 points), once, on the full-size
original, as bench/recognizer_accuracy.py does. Then, for each face width W, shrink the
photo by ``s = W / box width`` (area averaging, PIL ``BOX``: what a sensor integrating a
face that small records), scale it back to its original size (bicubic: what a recognizer
effectively sees of a small face once its aligner upsamples it to the 150x150 / 112x112
chip), and embed it with both recognizers (``dlib-resnet128``: deid's identity check;
``mobilefacenet``: the independent attacker) on the *original* geometry: the landmarks do
not move, only the pixels degrade. Both photos of every pair are degraded to the same W.

Pairs and folds: every same-subject pair and as many different-subject pairs, fixed seed,
LFW 10-fold protocol (threshold chosen on nine folds, accuracy on the tenth) -- the
protocol of bench/recognizer_accuracy.py, whose ``full`` numbers this script reproduces.
The pairs are the same at every W. W is the dlib HOG box width (``Face.width`` of deid's
default detector; median 109 px on lfw-dev); other detectors frame faces differently.

Prints, per W: accuracy (mean +- std over the 10 folds) and mean threshold of each
recognizer, and accuracy as a fraction of its full-size accuracy; then the smallest W where
both are within 2 points of full size, and the smallest where both reach 90%.
``--sheet PNG`` also writes a contact sheet of one face at every W (scaled back).

    python bench/min_face.py [FOLDER] [--workers 2] [--sheet /tmp/minface_sheet.png]

~5 min on 2 idle cores (~560 s of CPU: 455 faces x 9 widths x 2 recognizers; 12 min at load 4.5).
"""

from __future__ import annotations

import argparse
import os
import platform
import time
from datetime import UTC, datetime
from multiprocessing import get_context
from pathlib import Path

import numpy as np
from PIL import Image, ImageDraw

from deid.evaluate.recognizers import Landmarker
from deid.evaluate.registry import make_recognizer
from deid.faces import make_detector

WIDTHS: tuple[int | None, ...] = (12, 16, 20, 24, 32, 40, 48, 64, None)  # None: full size, untouched
RECOGNIZER_NAMES = ("dlib-resnet128", "mobilefacenet")
SEED = 0


def degrade(rgb: np.ndarray, box_width: float, w: int | None) -> np.ndarray:
    """``rgb`` as it looks when its face is ``w`` px wide: shrunk by ``w / box_width``
    (area averaging), then scaled back to its own size (bicubic). ``None``: unchanged."""
    if w is None:
        return rgb
    h0, w0 = rgb.shape[:2]
    s = w / box_width
    if s >= 1.0:
        return rgb
    im = Image.fromarray(rgb)
    small = im.resize((max(1, round(w0 * s)), max(1, round(h0 * s))), Image.Resampling.BOX)
    return np.asarray(small.resize((w0, h0), Image.Resampling.BICUBIC))


def locate(paths: list[Path]) -> list[tuple[Path, str, object]]:
    """(path, subject, geometry) of the largest dlib HOG face of each photo; photos without
    a face are left out (as in bench/recognizer_accuracy.py)."""
    det, lm = make_detector({"backend": "dlib-hog"}), Landmarker()
    out = []
    for p in paths:
        rgb = np.asarray(Image.open(p).convert("RGB"))
        faces = det.detect(rgb)
        if faces:
            f = max(faces, key=lambda f: f.width * f.height)
            out.append((p, p.parent.name, lm.geometry(rgb, f.box)))
    return out


_RECS: list = []


def _init_worker() -> None:
    os.environ.setdefault("OMP_NUM_THREADS", "1")
    _RECS[:] = [make_recognizer(n) for n in RECOGNIZER_NAMES]


def _embed_photo(item: tuple[str, object]) -> dict[str, np.ndarray]:
    """Embeddings of one photo's face at every W: ``{name: len(WIDTHS) x dim}``."""
    path, geom = item
    rgb = np.asarray(Image.open(path).convert("RGB"))
    bw = geom.box[2] - geom.box[0]
    out = {r.name: [] for r in _RECS}
    for w in WIDTHS:
        img = degrade(rgb, bw, w)
        for r in _RECS:
            out[r.name].append(r.embed(img, [geom])[0])  # the original's geometry, passed through
    return {k: np.array(v) for k, v in out.items()}


def make_pairs(labels: np.ndarray, seed: int = SEED) -> tuple[np.ndarray, np.ndarray, np.ndarray, np.ndarray]:
    """bench/recognizer_accuracy.py's pairs: every same-subject pair, as many different-subject
    pairs drawn without replacement, and a 10-fold assignment; same seed, same draws.
    Returns (i, j, same, fold)."""
    n = len(labels)
    iu = np.triu_indices(n, 1)
    same = labels[iu[0]] == labels[iu[1]]
    pos = np.flatnonzero(same)
    rng = np.random.default_rng(seed)
    neg = rng.choice(np.flatnonzero(~same), size=len(pos), replace=False)
    pairs = np.concatenate([pos, neg])
    y = np.concatenate([np.ones(len(pos), bool), np.zeros(len(neg), bool)])
    folds = rng.permutation(len(pairs)) % 10
    return iu[0][pairs], iu[1][pairs], y, folds


def tenfold(d: np.ndarray, y: np.ndarray, folds: np.ndarray) -> tuple[np.ndarray, np.ndarray]:
    """LFW 10-fold verification: on each fold, the threshold (a distance among all pairs'; "same"
    below it) that maximises accuracy on the other nine (first maximum), accuracy on the held-out
    fold. Same rule as bench/recognizer_accuracy.py, counted with sorted arrays instead of a loop
    over candidates. Returns (accuracies, thresholds), one per fold."""
    cand = np.unique(d)
    accs, ths = [], []
    for k in range(10):
        tr, te = folds != k, folds == k
        dp, dn = np.sort(d[tr & y]), np.sort(d[tr & ~y])
        correct = np.searchsorted(dp, cand, "left") + (len(dn) - np.searchsorted(dn, cand, "left"))
        t = cand[int(np.argmax(correct))]
        ths.append(t)
        accs.append(((d[te] < t) == y[te]).mean())
    return np.array(accs), np.array(ths)


def contact_sheet(path: Path, geom, out: Path) -> None:
    """The photo at every W (scaled back), side by side, each labelled."""
    rgb = np.asarray(Image.open(path).convert("RGB"))
    bw = geom.box[2] - geom.box[0]
    h, w = rgb.shape[:2]
    sheet = Image.new("RGB", (w * len(WIDTHS), h + 18), "white")
    draw = ImageDraw.Draw(sheet)
    for k, wd in enumerate(WIDTHS):
        sheet.paste(Image.fromarray(degrade(rgb, bw, wd)), (k * w, 18))
        draw.text((k * w + 4, 3), f"W = {wd} px" if wd else f"full ({bw} px)", fill="black")
    sheet.save(out)


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    ap.add_argument("folder", nargs="?", default="/work/shared/data/lfw-dev", type=Path)
    ap.add_argument("--workers", type=int, default=2, help="processes embedding photos (default 2)")
    ap.add_argument("--sheet", type=Path, default=None, help="write a contact sheet of one face at every W here")
    ap.add_argument("--sheet-photo", default="Tom_Cruise", help="subject (folder) of the contact sheet's face")
    a = ap.parse_args()

    t0 = time.perf_counter()
    located = locate(sorted(a.folder.glob("*/*.jpg")))
    labels = np.array([s for _, s, _ in located])
    widths = np.array([g.box[2] - g.box[0] for _, _, g in located])
    t_loc = time.perf_counter() - t0
    print(f"{len(labels)} faces of {len(set(labels))} subjects in {a.folder}; dlib HOG box width "
          f"median {np.median(widths):.0f} px (range {widths.min()}-{widths.max()}); located in {t_loc:.0f} s")
    if a.sheet:
        p, _, g = next(x for x in located if x[1] == a.sheet_photo)
        contact_sheet(p, g, a.sheet)
        print(f"contact sheet: {a.sheet} ({p.parent.name}/{p.name})")

    t1 = time.perf_counter()
    items = [(str(p), g) for p, _, g in located]
    with get_context("spawn").Pool(a.workers, initializer=_init_worker) as pool:
        per_photo = pool.map(_embed_photo, items, chunksize=4)
    emb = {n: np.stack([e[n] for e in per_photo], axis=1) for n in RECOGNIZER_NAMES}  # W x faces x dim
    t_emb = time.perf_counter() - t1
    print(f"embedded {len(items)} faces x {len(WIDTHS)} widths x {len(RECOGNIZER_NAMES)} recognizers "
          f"in {t_emb:.0f} s ({a.workers} workers)")

    i, j, y, folds = make_pairs(labels)
    print(f"{int(y.sum())} same-subject pairs, {int((~y).sum())} different-subject pairs (all same-subject "
          f"pairs, seed {SEED}), 10 folds; both photos of a pair at the same W")
    res = {}
    for n in RECOGNIZER_NAMES:
        for k, wd in enumerate(WIDTHS):
            e = emb[n][k]
            d = np.linalg.norm(e[i] - e[j], axis=1)
            res[n, wd] = tenfold(d, y, folds)

    full = {n: res[n, None][0].mean() for n in RECOGNIZER_NAMES}
    hdr = f"{'W px':>6} {'s':>6}"
    for n in RECOGNIZER_NAMES:
        hdr += f" | {n + ' acc':>20} {'/full':>6} {'thr':>6}"
    print("\n" + hdr)
    for wd in WIDTHS:
        s = np.median(wd / widths) if wd else 1.0
        row = f"{wd if wd else 'full':>6} {s:>6.3f}"
        for n in RECOGNIZER_NAMES:
            acc, th = res[n, wd]
            row += f" | {acc.mean() * 100:>11.1f} +- {acc.std() * 100:>4.1f} {acc.mean() / full[n]:>6.3f} {th.mean():>6.3f}"
        print(row)
    print("  W = dlib HOG box width after shrinking; s = median shrink factor; acc in %, mean +- std over 10 folds;")
    print("  /full = acc / full-size acc; thr = mean same-person threshold chosen on the training folds")

    def smallest(ok) -> str:
        """The smallest W from which on (it and every larger W) both recognizers pass ``ok``."""
        best = None
        for wd in sorted((wd for wd in WIDTHS if wd), reverse=True):
            if not all(ok(n, wd) for n in RECOGNIZER_NAMES):
                break
            best = wd
        return f"{best} px" if best else "none of the widths measured"

    print(f"\nsmallest W with both recognizers within 2 points of full size: "
          f"{smallest(lambda n, wd: res[n, wd][0].mean() >= full[n] - 0.02)}")
    print(f"smallest W with both recognizers at >= 90%: {smallest(lambda n, wd: res[n, wd][0].mean() >= 0.90)}")
    print(f"\nmachine: {platform.machine()}, {os.cpu_count()} CPU cores, python {platform.python_version()}; "
          f"load average {os.getloadavg()[0]:.1f}; total {time.perf_counter() - t0:.0f} s; "
          f"{datetime.now(UTC):%Y-%m-%d %H:%M} UTC")


if __name__ == "__main__":
    main()

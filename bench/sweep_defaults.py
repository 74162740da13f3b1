"""Choose the classical methods' default strengths by measurement.

    .venv/bin/python bench/sweep_defaults.py                 # n=300 of ../shared/data/lfw-public-ref
    .venv/bin/python bench/sweep_defaults.py --n 100 --workers 1
    .venv/bin/python bench/sweep_defaults.py --offset 300 --n 600 --blur 0.15,0.2,0.3 --pixelate 6,8,10
                                                             # a disjoint confirmation subset

Data: the PUBLIC reference set (3000 LFW photos, one per identity, disjoint from
lfw-dev and from the test fixtures); images ``[offset, offset + n)`` of a fixed random
permutation (seed 0), so subsets with different offsets never overlap.

For every face deid's detector finds (dlib HOG, manifest defaults) and every setting of
blur ``strength``, pixelate ``blocks`` and mask (all other params at their defaults), it
runs deid's own anonymizer and identity check (``IdentityChecker`` with
``DlibEmbedder``: dlib ResNet-128 distance between the original and the anonymized face
on the original's alignment; re-detection by the same HOG detector, IoU >= 0.3) and
reports:

  pass      fraction of faces with id_distance >= 0.6 (the check's default threshold)
  p5, p50   5th percentile and median id_distance
  still_det fraction of faces the detector still finds on the output
  pass|mask pass rate among the faces that pass under mask (the ceiling: a face whose
            original embedding is < 0.6 from the embedding of a blanked-out face
            cannot pass with any method, so it says nothing about the setting)

and recommends, per method, the weakest setting in the grid such that it and every
stronger setting pass >= 99% of faces (blur: the smallest strength; pixelate: the
LARGEST block count, since fewer blocks = stronger).
"""

from __future__ import annotations

import argparse
import multiprocessing as mp
import os
import sys
import time
from pathlib import Path

for _v in ("OMP_NUM_THREADS", "OPENBLAS_NUM_THREADS", "MKL_NUM_THREADS"):
    os.environ.setdefault(_v, "1")

REPO = Path(__file__).resolve().parents[1]
if str(REPO) not in sys.path:
    sys.path.insert(0, str(REPO))

import numpy as np  # noqa: E402

BLUR = (0.04, 0.06, 0.08, 0.10, 0.12, 0.15, 0.20, 0.30)
PIXELATE = (4, 6, 8, 10, 12, 16, 24)
THRESHOLD = 0.6
TARGET = 0.99


def settings(blur=BLUR, pixelate=PIXELATE) -> list[tuple[str, dict]]:
    """Mask is always last: it is the reference (ceiling) for the other rows."""
    return ([("blur", {"strength": s}) for s in blur] + [("pixelate", {"blocks": b}) for b in pixelate]
            + [("mask", {})])


def label(method: str, params: dict) -> str:
    if method == "blur":
        return f"blur strength={params['strength']:.2f}"
    if method == "pixelate":
        return f"pixelate blocks={params['blocks']}"
    return "mask (defaults)"


class _OriginalCache:
    """DlibEmbedder whose embedding of the *original* image is computed once per image.

    IdentityChecker.check embeds the original and the anonymized face each time; the
    original is the same for every setting, so it is cached (same numbers, less time)."""

    def __init__(self, inner):
        self.inner = inner
        self._key = None
        self._val = None

    def locate(self, rgb, faces):
        return self.inner.locate(rgb, faces)

    def embed(self, rgb, shapes):
        if rgb is self._key:
            return self._val
        return self.inner.embed(rgb, shapes)

    def remember(self, rgb, faces):
        self._key = None
        self._val = self.inner.embed(rgb, self.inner.locate(rgb, faces))
        self._key = rgb

    distance = staticmethod(lambda a, b: np.linalg.norm(np.asarray(a) - np.asarray(b), axis=-1))


_W: dict = {}


def _init_worker(grid: list[tuple[str, dict]]) -> None:
    from deid.anonymize import make_anonymizer
    from deid.audit.check import IdentityChecker
    from deid.config import ChecksConfig, detect_section
    from deid.faces import make_detector
    from deid.faces.dlib_backend import DlibEmbedder

    det = make_detector(detect_section())
    emb = _OriginalCache(DlibEmbedder())
    chk = ChecksConfig()
    _W["det"] = det
    _W["emb"] = emb
    _W["checker"] = IdentityChecker(emb, det, threshold=chk.min_identity_distance, redetect=True)
    _W["anon"] = [(m, p, make_anonymizer(m, p)) for m, p in grid]


def _one(path: str):
    """-> (path, n_faces, {setting index: [(id_distance, still_detected), ...]}) or (path, error, None)."""
    from deid.io.decode import DecodeError, decode_image

    try:
        rgb = decode_image(Path(path).read_bytes(), max_pixels=64_000_000, name=path).rgb
    except (OSError, DecodeError) as exc:
        return path, f"decode: {exc}", None
    faces = _W["det"].detect(rgb)
    if not faces:
        return path, 0, {}
    _W["emb"].remember(rgb, faces)
    out = {}
    rng = np.random.default_rng(0)
    for i, (_, _, anon) in enumerate(_W["anon"]):
        edited, _ = anon(rgb, faces, rng)
        checks = _W["checker"].check(rgb, edited, faces)
        out[i] = [(c.id_distance, bool(c.still_detected)) for c in checks]
    return path, len(faces), out


def main(argv: list[str] | None = None) -> int:
    ap = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    ap.add_argument("--data", default=str(REPO.parent / "shared" / "data" / "lfw-public-ref"),
                    help="public reference folder (default: ../shared/data/lfw-public-ref)")
    ap.add_argument("--n", type=int, default=300, help="images in the fixed random subset (default 300)")
    ap.add_argument("--offset", type=int, default=0, help="skip this many images of the permutation (disjoint subsets)")
    ap.add_argument("--seed", type=int, default=0)
    ap.add_argument("--blur", default=",".join(map(str, BLUR)), help="comma-separated blur strengths")
    ap.add_argument("--pixelate", default=",".join(map(str, PIXELATE)), help="comma-separated pixelate block counts")
    ap.add_argument("--dump", default=None, help="also write per-face distances to this CSV")
    ap.add_argument("--workers", type=int, default=min(2, os.cpu_count() or 1))
    args = ap.parse_args(argv)

    data = Path(args.data).resolve()
    if "lfw-dev" in data.parts or "tests" in data.parts:
        ap.error("use the public reference set, never lfw-dev or the test fixtures")
    files = sorted(str(p) for p in data.iterdir() if p.suffix.lower() in (".jpg", ".jpeg", ".png"))
    if not files:
        ap.error(f"{data}: no images")
    perm = np.random.default_rng(args.seed).permutation(len(files))
    idx = perm[args.offset : args.offset + args.n]
    subset = [files[i] for i in sorted(idx)]
    n = len(subset)
    if not n:
        ap.error("empty subset (offset past the end?)")
    grid = settings(tuple(float(x) for x in args.blur.split(",") if x),
                    tuple(int(x) for x in args.pixelate.split(",") if x))

    print(f"data: {data} ({len(files)} images); subset: n={n} (permutation seed {args.seed}, "
          f"images {args.offset}..{args.offset + n - 1}); workers={args.workers}")
    print(f"detector: dlib-hog (deid defaults); check: dlib ResNet-128, pass = id_distance >= {THRESHOLD}; "
          f"re-detection: same detector, IoU >= 0.3")
    t0 = time.perf_counter()
    results = []
    if args.workers > 1:
        with mp.get_context("fork").Pool(args.workers, initializer=_init_worker, initargs=(grid,)) as pool:
            for r in pool.imap_unordered(_one, subset, chunksize=2):
                results.append(r)
    else:
        _init_worker(grid)
        results = [_one(p) for p in subset]
    wall = time.perf_counter() - t0

    errors = [(p, e) for p, e, o in results if o is None]
    no_face = [p for p, k, o in results if o == {} and k == 0]
    used = [r for r in results if r[2]]
    n_faces = sum(k for _, k, _ in used)
    multi = sum(1 for _, k, _ in used if k > 1)
    print(f"images: {n} ({len(used)} with a face, {len(no_face)} with none found -> not scored, "
          f"{len(errors)} unreadable); faces scored: {n_faces} ({multi} images with >1 face); {wall:.0f} s")
    print()

    if not n_faces:
        print("no faces found: nothing to report")
        return 1
    # per face (in a fixed order): one distance and one still_detected per setting
    order = sorted(used, key=lambda r: r[0])
    dist = np.array([[o[i][j][0] for i in range(len(grid))] for _, k, o in order for j in range(k)])
    still = np.array([[o[i][j][1] for i in range(len(grid))] for _, k, o in order for j in range(k)], dtype=bool)
    mask_ok = dist[:, -1] >= THRESHOLD
    if args.dump:
        import csv

        with open(args.dump, "w", newline="") as f:
            w = csv.writer(f)
            w.writerow(["image", "face"] + [label(m, p) for m, p in grid])
            row_i = 0
            for path, k, _ in order:
                for j in range(k):
                    w.writerow([Path(path).name, j] + [f"{x:.4f}" for x in dist[row_i]])
                    row_i += 1
        print(f"per-face distances: {args.dump}")

    rows = []
    print(f"{'setting':<24} {'faces':>5} {'pass>=0.6':>9} {'fails':>5} {'p5 dist':>7} {'median':>6} {'still_det':>9} "
          f"{'pass|mask':>9}")
    for i, (m, p) in enumerate(grid):
        d = dist[:, i]
        r = dict(method=m, params=p, n=len(d), pass_rate=float(np.mean(d >= THRESHOLD)), fails=int(np.sum(d < THRESHOLD)),
                 p5=float(np.percentile(d, 5)), p50=float(np.median(d)), still=float(still[:, i].mean()),
                 cond=float(np.mean(d[mask_ok] >= THRESHOLD)) if mask_ok.any() else float("nan"))
        rows.append(r)
        print(f"{label(m, p):<24} {r['n']:5d} {r['pass_rate']:9.1%} {r['fails']:5d} {r['p5']:7.3f} {r['p50']:6.3f} "
              f"{r['still']:9.1%} {r['cond']:9.1%}")

    # Weakest setting such that it and every stronger one in the grid reach the target.
    print()
    print(f"recommendation (weakest setting whose pass rate, and every stronger setting's, is >= {TARGET:.0%}):")
    blur = sorted((r for r in rows if r["method"] == "blur"), key=lambda r: -r["params"]["strength"])  # strong -> weak
    pix = sorted((r for r in rows if r["method"] == "pixelate"), key=lambda r: r["params"]["blocks"])  # strong -> weak
    for name, key, ordered in (("blur", "strength", blur), ("pixelate", "blocks", pix)):
        if not ordered:
            continue
        best = None
        for r in ordered:
            if r["pass_rate"] >= TARGET:
                best = r
            else:
                break
        if best is None:
            top = max(ordered, key=lambda r: r["pass_rate"])
            print(f"  {name}: no setting in the grid reaches {TARGET:.0%} (best: {key} = {top['params'][key]}, "
                  f"{top['pass_rate']:.1%}, {top['fails']} of {top['n']} fail)")
        else:
            print(f"  {name}: {key} = {best['params'][key]}  ({best['pass_rate']:.1%} pass, {best['fails']} of "
                  f"{best['n']} faces fail, p5 {best['p5']:.3f}, still detected {best['still']:.1%})")
    mask = rows[-1]
    print(f"  mask (ceiling): {mask['pass_rate']:.1%} pass ({mask['fails']} of {mask['n']} faces fail even when "
          f"the face region is blanked out)")
    print(f"  n = {n_faces} faces: {TARGET:.0%} allows at most {int(n_faces * (1 - TARGET) + 1e-9)} failures; "
          f"one face = {1 / n_faces:.2%}.")
    print(f"\n{time.strftime('%Y-%m-%d %H:%M %Z')}")
    return 0


if __name__ == "__main__":
    raise SystemExit(main())

"""Choose the eigenfaces model (crop size x components) by measurement on held-out public faces.

    .venv/bin/python bench/latent_grid.py                       # the grid in docs/latent.md
    .venv/bin/python bench/latent_grid.py --crops 64 --ks 64 --scales 0.7,0.8,0.9,1.0

Data: the public reference set (default ../shared/data/lfw-public-ref, 3000 LFW photos of
identities disjoint from lfw-dev). Files are split by the same deterministic rule as
``deid latent fit --holdout`` (sha256 of the relative path): models are fitted on the rest,
every number below is measured on the held-out photos only (never lfw-dev, never test
fixtures). The faces are detected once (dlib HOG, upsample 1, 5-point landmarks) and the
scan is cached (``--cache``); one PCA per (crop, scale) is fitted with the largest k and
truncated for the smaller ones (PCA components are nested).

Per held-out photo, the subject's face (the most central detection) is aligned, encoded,
decoded with no noise ("plain reconstruction"), warped back into the photo through the
model's feathered face oval (deid.latent.base.paste_back), and measured:

  rmse_crop   per-pixel RMSE (0..255) between the aligned crop and its reconstruction
  rmse_face   the same inside the face oval (mask-weighted): the pixels that get replaced
  redetect    fraction of pasted photos where dlib HOG still finds the face (IoU >= 0.3 with
              the original box, windowed, exactly as deid's audit check does)
  id_med      median dlib ResNet-128 distance between the original photo and the pasted
              one (same landmarks / chip, as deid's audit check); < 0.6 = "same person"
  same        fraction with id distance < 0.6 (the reconstruction keeps the identity)
  L1          L1 sensitivity of the clipped codes: sum(upper - lower) of the public bounds
  eps1        the epsilon at which Laplace noise (b = L1 / eps, per dimension) has the
              same std as the public codes on average: sqrt(2) * L1 / mean(std). Noise
              budget grows with every dimension: fewer dims -> smaller L1 -> less noise.
  MB          size of the shipped .npz (float16 components)

k = 0 is the public mean face (what any DP method decodes to as epsilon -> 0).
Keep runs lean: OMP/BLAS threads default to 2.
"""

from __future__ import annotations

import argparse
import os
import sys
import time
from pathlib import Path

os.environ.setdefault("OMP_NUM_THREADS", "2")
os.environ.setdefault("OPENBLAS_NUM_THREADS", "2")
os.environ.setdefault("MKL_NUM_THREADS", "2")

import numpy as np  # noqa: E402

REPO = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(REPO))

from deid.audit.check import IdentityChecker  # noqa: E402
from deid.faces.align import align  # noqa: E402
from deid.faces.dlib_backend import DlibDetector, DlibEmbedder  # noqa: E402
from deid.faces.types import Face  # noqa: E402
from deid.latent.base import paste_back  # noqa: E402
from deid.latent.pca import (ReferenceScan, _read_rgb, align_scan, fit_arrays, in_holdout,  # noqa: E402
                             scan_reference)


def subset(scan: ReferenceScan, rows: np.ndarray) -> ReferenceScan:
    return ReferenceScan(root=scan.root, files=scan.files, sha256=scan.sha256, failed=scan.failed,
                         face_file=scan.face_file[rows], face_box=scan.face_box[rows], face_lm5=scan.face_lm5[rows],
                         detector=scan.detector)


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--images", default=str(REPO.parent / "shared" / "data" / "lfw-public-ref"))
    ap.add_argument("--cache", default="/tmp/deid-latent-bench/scan.npz", help="detection cache (delete to rescan)")
    ap.add_argument("--holdout", type=float, default=0.1)
    ap.add_argument("--crops", default="64,80,96")
    ap.add_argument("--ks", default="0,16,32,64,128,256")
    ap.add_argument("--scales", default="0.9")
    ap.add_argument("--min-face", type=float, default=48.0, help="faces used for fitting: box size >= this")
    ap.add_argument("--limit", type=int, default=0, help="evaluate at most this many held-out photos (0: all)")
    ap.add_argument("--markdown", action="store_true", help="print the table as Markdown")
    args = ap.parse_args()

    crops_list = [int(c) for c in args.crops.split(",")]
    ks = [int(k) for k in args.ks.split(",")]
    scales = [float(s) for s in args.scales.split(",")]

    cache = Path(args.cache)
    if cache.exists():
        scan = ReferenceScan.load(str(cache))
    else:
        cache.parent.mkdir(parents=True, exist_ok=True)
        t = time.perf_counter()
        scan = scan_reference(args.images, faces="all", min_face=0.0, upsample=1,
                              progress=lambda i, n: print(f"\rscan {i}/{n}", end="", file=sys.stderr) if i % 100 == 0 else None)
        print(f"\nscanned {len(scan.files)} files in {time.perf_counter() - t:.0f} s", file=sys.stderr)
        scan.save(str(cache))

    held = np.array([in_holdout(r, args.holdout) for r in scan.files])
    sizes = np.sqrt(np.maximum(scan.face_box[:, 2] - scan.face_box[:, 0], 1) * np.maximum(scan.face_box[:, 3] - scan.face_box[:, 1], 1))
    fit_rows = np.flatnonzero(~held[scan.face_file] & (sizes >= args.min_face))
    n_files_face = len(set(scan.face_file.tolist()))
    print(f"# {len(scan.files)} files, {n_files_face} with a face, {len(scan.face_file)} faces "
          f"({int(np.sum(sizes >= args.min_face))} >= {args.min_face:g} px); fit on {len(fit_rows)} faces of "
          f"{int((~held).sum())} files, evaluate on {int(held.sum())} held-out files", file=sys.stderr)

    # evaluation faces: the most central face of each held-out photo
    eval_items = []
    import fsspec

    fs, root = fsspec.core.url_to_fs(scan.root)
    for fi in np.flatnonzero(held):
        rows = np.flatnonzero(scan.face_file == fi)
        if not len(rows):
            continue
        rgb, _ = _read_rgb(fs, root.rstrip("/"), scan.files[fi])
        h, w = rgb.shape[:2]
        c = (scan.face_box[rows, :2] + scan.face_box[rows, 2:]) / 2
        r = rows[np.argmin(np.hypot(c[:, 0] - w / 2, c[:, 1] - h / 2))]
        face = Face(box=tuple(int(v) for v in scan.face_box[r]), score=0.0, landmarks5=scan.face_lm5[r])
        eval_items.append((rgb, face))
        if args.limit and len(eval_items) >= args.limit:
            break
    n_held_files = int(held.sum())
    print(f"# evaluating on {len(eval_items)} held-out faces ({n_held_files - len(eval_items)} held-out files without a face)",
          file=sys.stderr)

    det = DlibDetector(upsample=1)
    emb = DlibEmbedder()
    checker = IdentityChecker(emb, det, threshold=0.6, redetect=True)  # deid's audit check: same re-detection rule
    shapes = [emb.locate(rgb, [f]) for rgb, f in eval_items]
    before = [emb.embed(rgb, s)[0] for (rgb, _), s in zip(eval_items, shapes)]

    header = ["crop", "scale", "k", "expl.var", "rmse_crop", "rmse_face", "redetect", "id_med", "same", "L1", "eps1",
              "MB", "dec_ms"]
    rows_out = []
    for scale in scales:
        for crop in crops_list:
            t = time.perf_counter()
            crops = align_scan(subset(scan, fit_rows), crop, align_scale=scale)
            kmax = max(max(ks), 1)
            full = fit_arrays(crops, kmax, card={"layout": "dlib5", "align_scale": scale})
            del crops
            print(f"# fit crop {crop} scale {scale}: {time.perf_counter() - t:.0f} s", file=sys.stderr)
            aligned = [align(rgb, f.landmarks5, crop, layout="dlib5", scale=scale) for rgb, f in eval_items]
            originals = np.stack([a[0] for a in aligned])
            mask = full.mask()
            for k in ks:
                model = full.truncated(k) if k > 0 else full.truncated(1)
                t0 = time.perf_counter()
                if k > 0:
                    rec = model.decode(model.encode(originals))
                else:
                    rec = np.repeat(model.decode(np.zeros((1, 1)))[None, 0], len(originals), axis=0)
                dec_ms = (time.perf_counter() - t0) / len(originals) * 1000
                diff2 = (rec.astype(np.float64) - originals) ** 2
                rmse_crop = float(np.sqrt(diff2.mean()))
                rmse_face = float(np.sqrt((diff2.mean(axis=3) * mask).sum() / (mask.sum() * len(originals))))
                still, dist = [], []
                for (rgb, face), (crop_o, m), r, sh, b in zip(eval_items, aligned, rec, shapes, before):
                    out = paste_back(rgb, r, m, mask)
                    still.append(checker._still_detected(out, face))
                    dist.append(float(np.linalg.norm(emb.embed(out, sh)[0] - b)))
                dist = np.array(dist)
                l1 = float(np.sum(model.upper - model.lower)) if k > 0 else 0.0
                eps1 = float(np.sqrt(2) * l1 / np.mean(model.std)) if k > 0 else 0.0
                mb = len(model.to_bytes()) / 1e6 if k > 0 else 0.0
                ev = model.card.get("explained_variance", 0.0) if k > 0 else 0.0
                row = [crop, scale, k, ev, rmse_crop, rmse_face, float(np.mean(still)), float(np.median(dist)),
                       float(np.mean(dist < 0.6)), l1, eps1, mb, dec_ms]
                rows_out.append(row)
                print("  ".join(_fmt(v) for v in row), file=sys.stderr, flush=True)
    print(_table(header, rows_out, args.markdown))


def _fmt(v) -> str:
    if isinstance(v, float):
        return f"{v:.3f}" if abs(v) < 100 else f"{v:.0f}"
    return str(v)


def _table(header, rows, markdown: bool) -> str:
    cells = [header] + [[_fmt(v) for v in r] for r in rows]
    if markdown:
        lines = ["| " + " | ".join(header) + " |", "|" + "---|" * len(header)]
        lines += ["| " + " | ".join(c) + " |" for c in cells[1:]]
        return "\n".join(lines)
    widths = [max(len(c[i]) for c in cells) for i in range(len(header))]
    return "\n".join("  ".join(c[i].rjust(widths[i]) for i in range(len(header))) for c in cells)


if __name__ == "__main__":
    main()

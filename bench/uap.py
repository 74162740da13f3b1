"""The universal adversarial perturbation (AnonymousNet stage IV): its visibility and its effect
on identification, by the recognizer it was computed on (MobileFaceNet) and one it was not
(dlib's ResNet), on ../shared/data/lfw-dev.

    python bench/uap.py [--data ../shared/data/lfw-dev] [--uap builtin:uap-mobilefacenet]
                        [--method-photos 60] [--out /tmp/deid-uap]

Part 1, the perturbation alone, on every lfw-dev photo: it is added inside the face oval (the
face mesh's, feathered) of the original, aligned by the face mesh's five points as the
``attribute`` method does; random signs of the same L-infinity bound are the baseline noise.
Reported per recognizer: identification top-1 (T1: gallery = the other original photos) of the
perturbed photo, the mean embedding distance to the clean photo, and the same after a JPEG
(quality 90) round trip; PSNR of the perturbed vs the clean photo inside the oval and over
the photo.

Part 2, the ``attribute`` method with and without the perturbation on ``--method-photos``
photos (evenly spaced; the same seeded draws for both, so only the perturbation differs):
T1, same-source top-1 and PSNR of perturbed vs unperturbed output.

Prints tables; writes a contact sheet (clean | perturbed | amplified difference) to --out.
"""

from __future__ import annotations

import argparse
import csv
import io
import sys
import time
from pathlib import Path

import numpy as np
from PIL import Image

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))


def oval_alpha(shape, mesh, feather: float = 0.08):
    import cv2

    from deid.faces.facemesh_backend import FACE_OVAL

    h, w = shape[:2]
    poly = np.asarray(mesh, np.float64)[list(FACE_OVAL), :2]
    m = np.zeros((h, w), np.uint8)
    cv2.fillPoly(m, [np.round(poly).astype(np.int32)], 255)
    width = max(poly[:, 0].max() - poly[:, 0].min(), 8.0)
    k = int(max(3, round(width * feather)) // 2 * 2 + 1)
    return cv2.GaussianBlur(m.astype(np.float32) / 255.0, (k, k), 0) * (m > 0)


def jpeg(rgb: np.ndarray, q: int = 90) -> np.ndarray:
    buf = io.BytesIO()
    Image.fromarray(rgb).save(buf, "JPEG", quality=q)
    return np.asarray(Image.open(io.BytesIO(buf.getvalue())).convert("RGB"))


def main() -> None:
    ap = argparse.ArgumentParser()
    ap.add_argument("--data", default="../shared/data/lfw-dev")
    ap.add_argument("--uap", default="builtin:uap-mobilefacenet")
    ap.add_argument("--method-photos", type=int, default=60)
    ap.add_argument("--out", default="/tmp/deid-uap")
    ap.add_argument("--only-method", action="store_true", help="part 2 only (part 1's tables skipped)")
    a = ap.parse_args()

    from deid.anonymize.uap import UAP, psnr
    from deid.evaluate.attacks import identify, t1
    from deid.evaluate.recognizers import DlibResNet, Landmarker, MobileFaceNet
    from deid.faces.dlib_backend import DlibDetector
    from deid.faces.facemesh_backend import FaceMeshDetector, mesh_arcface5

    out_dir = Path(a.out)
    out_dir.mkdir(parents=True, exist_ok=True)
    u = UAP.load(a.uap)
    with open(Path(a.data) / "subjects.csv") as fh:
        rows = list(csv.DictReader(fh))
    det, lm, mesher = DlibDetector("dlib-hog", upsample=1), Landmarker(), FaceMeshDetector()
    recs = {"mobilefacenet (computed on)": MobileFaceNet(landmarker=lm), "dlib-resnet128 (not)": DlibResNet(landmarker=lm)}
    noise = UAP(np.random.default_rng().choice([-u.xi, u.xi], u.v.shape).astype(np.float32), dict(u.card))
    t0 = time.time()
    kept, variants = [], {k: [] for k in ("clean", "uap", "uap_jpeg", "noise", "noise_jpeg", "clean_jpeg")}
    ps_oval, ps_all = [], []
    sheet = []
    for r in rows:
        rgb = np.asarray(Image.open(Path(a.data) / r["path"]).convert("RGB"))
        faces = det.detect(rgb)
        if not faces:
            continue
        f = max(faces, key=lambda f: (f.box[2] - f.box[0]) * (f.box[3] - f.box[1]))
        mfaces = mesher.detect(rgb)
        if not mfaces:
            continue
        mf = max(mfaces, key=lambda g: (g.box[2] - g.box[0]) * (g.box[3] - g.box[1]))
        mesh = np.asarray(mf.mesh, np.float64)[:, :2]
        alpha = oval_alpha(rgb.shape, mesh)
        a5 = mesh_arcface5(mesh)
        pert = u.apply(rgb, a5, alpha)
        nz = noise.apply(rgb, a5, alpha)
        geom = lm.geometry(rgb, f.box)
        kept.append((r["subject"], r["path"], geom))
        for k, img in (("clean", rgb), ("uap", pert), ("uap_jpeg", jpeg(pert)), ("noise", nz),
                       ("noise_jpeg", jpeg(nz)), ("clean_jpeg", jpeg(rgb))):
            variants[k].append(img)
        m = alpha > 0
        ps_oval.append(float(10 * np.log10(255.0 ** 2 / max(np.mean((pert[m].astype(float) - rgb[m]) ** 2), 1e-12))))
        ps_all.append(psnr(rgb, pert))
        if len(sheet) < 6 and len(kept) % 70 == 1:
            diff = np.clip(128 + 8 * (pert.astype(int) - rgb.astype(int)), 0, 255).astype(np.uint8)
            sheet.append(np.concatenate([rgb, pert, diff], 1))
    n = len(kept)
    subjects = np.array([k[0] for k in kept])
    sources = np.array([k[1] for k in kept])
    print(f"part 1: {n} lfw-dev photos with a face (dlib HOG + face mesh), perturbation {a.uap} xi {u.xi:g} "
          f"({u.card.get('recognizer')}), {time.time() - t0:.0f} s")
    print(f"PSNR perturbed vs clean: inside the oval median {np.median(ps_oval):.1f} dB, whole photo "
          f"{np.median(ps_all):.1f} dB")
    print("| recognizer | probe | T1 top-1 | chance | mean distance to clean |")
    print("|---|---|---|---|---|")
    for name, rec in ({} if a.only_method else recs).items():
        emb = {k: np.stack([rec.embed(img, [g])[0] for img, (_, _, g) in zip(v, kept)]) for k, v in variants.items()}
        for k in ("clean", "clean_jpeg", "noise", "noise_jpeg", "uap", "uap_jpeg"):
            res = t1(emb["clean"], emb[k], subjects, sources)
            dist = float(np.linalg.norm(emb[k] - emb["clean"], axis=1).mean())
            print(f"| {name} | {k} | {res['top1']:.1%} | {res['chance_top1']:.1%} | {dist:.3f} |")
    if sheet:
        Image.fromarray(np.concatenate(sheet, 0)).save(out_dir / "uap-sheet.png")
        print(f"sheet: {out_dir / 'uap-sheet.png'}")

    if a.method_photos <= 0:
        return
    # ---------------------------------------------------------------- part 2: the attribute method
    from deid.anonymize import make_anonymizer
    from deid.faces.registry import make_detector

    t0 = time.time()
    plain = make_anonymizer("attribute", {"test_seed": 11}, {"backend": "mobilestylegan"})
    withu = make_anonymizer("attribute", {"test_seed": 11, "perturbation": a.uap}, {"backend": "mobilestylegan"})
    cf = make_detector({"backend": "centerface"})
    pick = np.unique(np.linspace(0, n - 1, min(a.method_photos, n)).round().astype(int))
    sel, outs_p, outs_u, ps = [], [], [], []
    for i in pick:
        rgb = variants["clean"][i]
        faces = [g for g in cf.detect(rgb) if g.width >= 40]
        if not faces:
            continue
        faces = [max(faces, key=lambda g: g.width * g.height)]
        seed = int(np.random.default_rng().integers(2**63))
        op, fp = plain(rgb, faces, np.random.default_rng(seed))
        ou, fu = withu(rgb, faces, np.random.default_rng(seed))
        if not (fp[0].get("swapped") and fu[0].get("swapped")):
            continue
        sel.append(i)
        outs_p.append(op)
        outs_u.append(ou)
        ps.append(psnr(op, ou))
    print(f"\npart 2: the attribute method on {len(sel)} photos, with and without the perturbation "
          f"({time.time() - t0:.0f} s); PSNR perturbed vs unperturbed output: median {np.median(ps):.1f} dB")
    print("| recognizer | output | T1 top-1 | same-source top-1 | chance |")
    print("|---|---|---|---|---|")
    idx = np.array(sel)
    own = sources[idx][:, None] == sources[None, :]  # T1 leaves out the probe's own source photo
    for name, rec in recs.items():
        clean = np.stack([rec.embed(variants["clean"][i], [kept[i][2]])[0] for i in range(n)])
        for label, outs in (("attribute", outs_p), ("attribute + perturbation", outs_u)):
            anon = np.stack([rec.embed(o, [kept[i][2]])[0] for o, i in zip(outs, sel)])
            r1 = identify(clean, subjects, anon, subjects[idx], exclude=own)
            r2 = identify(clean, subjects, anon, subjects[idx])
            print(f"| {name} | {label} | {r1['top1']:.1%} | {r2['top1']:.1%} | {r1['chance_top1']:.1%} |")


if __name__ == "__main__":
    main()

"""Privacy/utility sweep of the latent methods (dp-image epsilon, deepblur sigma) on lfw-dev.

    .venv/bin/python bench/privacy_sweep.py                      # every setting, table + sheets
    .venv/bin/python bench/privacy_sweep.py --only dp-image      # a subset (results are cached)
    .venv/bin/python bench/privacy_sweep.py --only deepblur,blur,recon,original
    .venv/bin/python bench/privacy_sweep.py --table-only         # the table from the cache
    .venv/bin/python bench/privacy_sweep.py --sheets-only        # docs/img contact sheets only

Data: ../shared/data/lfw-dev (457 LFW photos, 250x250, 60 identities). Faces are detected
once with ``DlibDetector()`` (dlib HOG, upsample 1, 5-point landmarks: the manifest
defaults) and EVERY detected face of every photo is anonymized, as ``deid run`` does.

Per setting, in process, with deid's own code: ``make_anonymizer(method, params, None)``
(default latent model ``builtin:eigenfaces``) on the photo and its faces, then
``IdentityChecker(DlibEmbedder(), detector)`` exactly as the pipeline's check stage
(dlib ResNet-128 distance between the original and the anonymized photo on the
original's landmarks; windowed re-detection, IoU >= 0.3). The embedding of the original
photo is computed once per photo and reused (it does not depend on the setting). Then the
detector runs again on the WHOLE output photo. Reported per setting:

  faces         detected faces anonymized (the same faces for every setting)
  beyond_0.6    fraction of faces with id_distance >= 0.6 (dlib's same-person threshold;
                the audit check's default ``min_identity_distance``)
  id_p5/median  5th percentile and median id_distance
  redetect_win  fraction of faces the audit check still finds (``still_detected``: HOG in a
                window around the face, IoU >= 0.3 with the original box)
  redetect_full fraction of faces matched (IoU >= 0.3) by HOG over the whole output photo
  photo_ge1     fraction of photos where HOG over the whole output photo finds >= 1 face
  rank-1 vs clear / vs anonymized
                linkage attacks on the labeled person's face (the most central detection)
                of every photo: is the nearest dlib embedding among the CLEAR faces (resp.
                the ANONYMIZED faces, same setting) of all other photos the same person?
                (DeepBlur's threat models T1 / T3.) Chance = share of same-identity photos.

``--latent-stats`` prints the latent-space view instead (no embeddings, seconds): pairwise
L1 distances of clipped codes against the L1 sensitivity, and how much of each face's
deviation from the public mean survives noise + posterior mean, per epsilon.

Noise: the DP path draws from OpenDP's OS-seeded sampler (no seed; ``test_seed`` is NOT
used), ``posterior-sample`` draws its sample from ``np.random.default_rng()`` (OS entropy)
as the pipeline does. A re-run therefore gives slightly different numbers (one draw per
face; with ~470 faces the fractions move by about 1-2 points).

Settings: dp-image laplace at epsilon 1 (the default), 3, 8, 10, 30, 100, 1000, 1e4, 1e5
(post = posterior-mean, the default), posterior-sample at epsilon 10, epsilon 1e6 (the
largest the params allow: clipped + grid-snapped reconstruction, practically no noise), and
epsilon 1 and 10 with ``noise_dims`` 8 / 12 / 16 / 24 / 32 (group ``dp-image-dims``: the
leading components are noised, the rest replaced by the public mean; still DP);
deepblur sigma 0.25, 0.5, 1, 2, 4 (the default), 8, 1000; ``recon`` = deepblur with sigma
1e-3 (the filter's radius rounds to 0: the plain encode -> decode -> paste-back, no
clipping); blur at its defaults; ``original`` = the unedited photo (detection baseline).

Results are cached per setting (``--cache``, JSON), so subsets can run in separate
invocations (each well under 15 minutes on one core) and ``--table-only`` assembles them.
Contact sheets: the same 6 faces (distinct identities) across the epsilon grid and the
sigma grid, written to docs/img/dp-image-epsilon.png and docs/img/deepblur-sigma.png.
"""

from __future__ import annotations

import argparse
import hashlib
import json
import os
import sys
import time
from pathlib import Path

for _v in ("OMP_NUM_THREADS", "OPENBLAS_NUM_THREADS", "MKL_NUM_THREADS"):
    os.environ.setdefault(_v, "1")

import numpy as np  # noqa: E402

REPO = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(REPO))

from deid.anonymize import make_anonymizer  # noqa: E402
from deid.audit.check import IdentityChecker  # noqa: E402
from deid.faces.dlib_backend import DlibDetector, DlibEmbedder  # noqa: E402
from deid.faces.types import Face, iou  # noqa: E402
from deid.io.decode import decode_image  # noqa: E402

THRESHOLD = 0.6
EPSILONS = [1, 3, 8, 10, 30, 100, 1000, 10000, 100000]
SIGMAS = [0.25, 0.5, 1, 2, 4, 8, 1000]
#: group dp-image-dims: how many leading components carry noise (the rest: public mean)
DIMS_EPSILONS = [1, 10]
NOISE_DIMS = [8, 12, 16, 24, 32]


def settings() -> dict[str, tuple[str, dict, str]]:
    """name -> (method, params, group)."""
    s: dict[str, tuple[str, dict, str]] = {"original": ("none", {}, "original"),
                                           "recon": ("deepblur", {"sigma": 1e-3}, "recon")}
    for e in EPSILONS:
        s[f"dp-image eps={e:g}"] = ("dp-image", {"epsilon": float(e)}, "dp-image")
    s["dp-image eps=10 posterior-sample"] = ("dp-image", {"epsilon": 10.0, "post": "posterior-sample"}, "dp-image")
    s["dp-image eps=1e+06 (max; ~no noise)"] = ("dp-image", {"epsilon": 1e6}, "dp-image")
    for e in DIMS_EPSILONS:  # fewer noised dimensions, the rest replaced by the public mean (still DP)
        for k in NOISE_DIMS:
            s[f"dp-image eps={e:g} noise_dims={k}"] = ("dp-image", {"epsilon": float(e), "noise_dims": k},
                                                       "dp-image-dims")
    for g in SIGMAS:
        s[f"deepblur sigma={g:g}"] = ("deepblur", {"sigma": float(g)}, "deepblur")
    s["blur (default)"] = ("blur", {}, "blur")
    return s


# ------------------------------------------------------------------------------------ data
def list_images(root: Path) -> list[tuple[str, str]]:
    """(relative path, subject) for every photo, sorted by path."""
    rows = []
    with open(root / "subjects.csv", encoding="utf-8") as f:
        next(f)
        for line in f:
            p, s = line.rstrip("\n").split(",", 1)
            rows.append((p, s))
    return sorted(rows)


def load(root: Path, limit: int | None) -> tuple[list[tuple[str, str]], list[np.ndarray]]:
    rows = list_images(root)
    if limit:
        rows = rows[:limit]
    imgs = [decode_image((root / p).read_bytes(), max_pixels=64_000_000, name=p).rgb for p, _ in rows]
    return rows, imgs


def data_fingerprint(root: Path, rows) -> str:
    h = hashlib.sha256()
    for p, _ in rows:
        h.update(p.encode() + b"\t" + hashlib.sha256((root / p).read_bytes()).hexdigest().encode() + b"\n")
    return h.hexdigest()[:16]


def _face_to_json(f: Face) -> dict:
    return {"box": list(f.box), "score": f.score, "lm5": np.asarray(f.landmarks5).tolist()}


def _face_from_json(d: dict) -> Face:
    return Face(box=tuple(d["box"]), score=d["score"], landmarks5=np.asarray(d["lm5"], dtype=np.float64),
                landmark_layout="dlib5")


def detect_all(imgs, detector, cache: Path) -> list[list[Face]]:
    if cache.exists():
        return [[_face_from_json(d) for d in fs] for fs in json.loads(cache.read_text())]
    faces = [detector.detect(rgb) for rgb in imgs]
    cache.write_text(json.dumps([[_face_to_json(f) for f in fs] for fs in faces]))
    return faces


class OriginalCachedEmbedder:
    """DlibEmbedder whose embeddings of the ORIGINAL photo come from a cache.

    ``IdentityChecker.check`` embeds the original and the anonymized photo on the same
    shapes; the original's embedding does not depend on the setting, so it is computed
    once per photo. Everything else is DlibEmbedder's own code."""

    def __init__(self, inner: DlibEmbedder):
        self.inner = inner
        self._orig = None
        self._emb = None
        self.last_after = None  # embeddings of the last anonymized photo (for the linkage attacks)

    def set_original(self, rgb: np.ndarray, emb: np.ndarray) -> None:
        self._orig, self._emb = rgb, emb

    def locate(self, rgb, faces):
        return self.inner.locate(rgb, faces)

    def embed(self, rgb, shapes):
        if rgb is self._orig and self._emb is not None:
            return self._emb
        self.last_after = self.inner.embed(rgb, shapes)
        return self.last_after

    distance = staticmethod(DlibEmbedder.distance)


def original_embeddings(imgs, faces, emb: DlibEmbedder, cache: Path) -> list[np.ndarray]:
    if cache.exists():
        z = np.load(cache)
        return [z[f"e{i}"] for i in range(len(imgs))]
    out = [emb.embed_faces(rgb, fs) if fs else np.zeros((0, 128)) for rgb, fs in zip(imgs, faces)]
    np.savez(cache, **{f"e{i}": e for i, e in enumerate(out)})
    return out


# ------------------------------------------------------------------------------------ sweep
def subject_face(rgb: np.ndarray, fs: list[Face]) -> int:
    """Index of the labeled person's face: LFW photos are centred on it."""
    h, w = rgb.shape[:2]
    return int(np.argmin([((f.box[0] + f.box[2]) / 2 - w / 2) ** 2 + ((f.box[1] + f.box[3]) / 2 - h / 2) ** 2
                          for f in fs]))


def rank1(probe: np.ndarray, gallery: np.ndarray, labels: np.ndarray) -> float:
    """Fraction of probes whose nearest gallery embedding (excluding the probe's own photo,
    same index) has the probe's identity."""
    d = np.linalg.norm(probe[:, None, :] - gallery[None, :, :], axis=-1)
    np.fill_diagonal(d, np.inf)
    return float(np.mean(labels[np.argmin(d, axis=1)] == labels))


def run_setting(name, spec, rows, imgs, faces, orig_emb, detector, embedder) -> dict:
    method, params, group = spec
    anon = None if method == "none" else make_anonymizer(method, params, None)
    cached = OriginalCachedEmbedder(embedder)
    checker = IdentityChecker(cached, detector, threshold=THRESHOLD, redetect=True)
    rng = np.random.default_rng()  # OS entropy, as the pipeline's stage; DP noise never uses it
    dist, still, full, photo_ge1 = [], [], [], []
    subj_orig, subj_anon, subj_label = [], [], []
    facts0 = None
    t0 = time.perf_counter()
    t_anon = 0.0
    for (path, subject), rgb, fs, e0 in zip(rows, imgs, faces, orig_emb):
        if not fs:
            continue
        t = time.perf_counter()
        if anon is None:
            out = rgb
        else:
            out, facts = anon(rgb, fs, rng)
            facts0 = facts0 or facts[0]
        t_anon += time.perf_counter() - t
        if anon is None:
            checks = [None] * len(fs)
            dist += [0.0] * len(fs)
            still += [checker._still_detected(out, f) for f in fs]
        else:
            cached.set_original(rgb, e0)
            checks = checker.check(rgb, out, fs)
            dist += [c.id_distance for c in checks]
            still += [bool(c.still_detected) for c in checks]
        j = subject_face(rgb, fs)
        subj_orig.append(e0[j])
        subj_anon.append(e0[j] if anon is None else cached.last_after[j])
        subj_label.append(subject)
        det = detector.detect(out)
        photo_ge1.append(len(det) >= 1)
        full += [any(iou(f.box, g.box) >= 0.3 for g in det) for f in fs]
    d = np.asarray(dist)
    lab = np.asarray(subj_label)
    so, sa = np.asarray(subj_orig), np.asarray(subj_anon)
    same = (lab[:, None] == lab[None, :]).sum(axis=1) - 1
    res = {
        "name": name, "method": method, "params": params, "group": group,
        "faces": int(d.size), "photos": len(photo_ge1),
        "beyond": float(np.mean(d >= THRESHOLD)),
        "id_p5": float(np.percentile(d, 5)), "id_median": float(np.median(d)),
        "redetect_win": float(np.mean(still)), "redetect_full": float(np.mean(full)),
        "photo_ge1": float(np.mean(photo_ge1)),
        # linkage attacks on the labeled person's face (one per photo): rank-1 identification
        # of the anonymized face among the CLEAR faces of every other photo, and among the
        # ANONYMIZED faces of every other photo (same method and setting); chance = mean
        # share of same-identity photos in the gallery
        "reid_vs_clear": rank1(sa, so, lab), "reid_vs_anon": rank1(sa, sa, lab),
        "reid_chance": float(np.mean(same / (len(lab) - 1))),
        "anon_ms_per_photo": 1000.0 * t_anon / max(1, len(photo_ge1)),
        "seconds": round(time.perf_counter() - t0, 1),
        "noise": "opendp (OS entropy), no test_seed" if method == "dp-image" else None,
        "effective_params": None if anon is None else anon.params.model_dump(mode="json"),
    }
    if facts0 is not None and facts0.epsilon is not None:
        res.update(epsilon=facts0.epsilon, sensitivity=facts0.sensitivity, noise_scale=facts0.noise_scale,
                   dp_scope=facts0.dp_scope, test_mode=facts0.test_mode)
    return res


def table(results: list[dict]) -> str:
    head = ("| setting | faces | id_distance >= 0.6 | id p5 | id median | still_detected (window) "
            "| re-detect, full photo (IoU>=0.3) | photos with >= 1 detection | re-id rank-1 vs clear | "
            "re-id rank-1 vs anonymized |")
    lines = [head, "|---|---:|---:|---:|---:|---:|---:|---:|---:|---:|"]
    nice = {"original": "original photo (not anonymized)", "recon": "no edit (encode -> decode, no noise)"}
    for r in results:
        lines.append(f"| {nice.get(r['name'], r['name'])} | {r['faces']} | {100 * r['beyond']:.1f}% | {r['id_p5']:.3f} | "
                     f"{r['id_median']:.3f} | {100 * r['redetect_win']:.1f}% | {100 * r['redetect_full']:.1f}% | "
                     f"{100 * r['photo_ge1']:.1f}% | {_pct(r.get('reid_vs_clear'))} | {_pct(r.get('reid_vs_anon'))} |")
    if results and results[0].get("reid_chance") is not None:
        lines.append(f"\nre-id chance level (share of same-identity photos among the others): "
                     f"{100 * results[0]['reid_chance']:.1f}%")
    return "\n".join(lines)


def _pct(x) -> str:
    return "n/a" if x is None else f"{100 * x:.1f}%"


def target_lines(results: list[dict]) -> list[str]:
    out = ["Target (issue): at epsilon <= 10 per face, dlib HOG still detects >= 90% of faces in the output "
           "photo and >= 95% of faces are beyond the identity-check threshold (0.6)."]
    for r in results:
        if r["method"] == "dp-image" and r["params"].get("epsilon", 1e9) <= 10:
            det_ok = r["redetect_win"] >= 0.90
            id_ok = r["beyond"] >= 0.95
            out.append(f"  {r['name']}: detection {100 * r['redetect_win']:.1f}% (window) / "
                       f"{100 * r['redetect_full']:.1f}% (full photo) -> {'met' if det_ok else 'NOT met'}; "
                       f"beyond 0.6 {100 * r['beyond']:.1f}% -> {'met' if id_ok else 'NOT met'}; "
                       f"target {'MET' if det_ok and id_ok else 'NOT MET'}")
    return out


# ------------------------------------------------------------------------------------ latent view
def latent_stats(rows, imgs, faces) -> str:
    """What the guarantee means for real faces, in the latent space of the default model.

    * Pairwise L1 distance between CLIPPED codes of the labeled faces (same identity /
      different identities) against the L1 sensitivity (the box diameter the noise is
      calibrated to). For the Laplace mechanism the privacy loss between two given faces
      is exactly epsilon * ||c_A - c_B||_1 / Delta_1 (an ex-post reading, not what the
      ledger charges: the ledger charges epsilon, the worst case over ANY two faces).
    * How much of a face's deviation from the public mean face survives the noise and the
      posterior mean (no embeddings: the codes only): ``kept`` = ||(y - mu)/sd|| /
      ||(c - mu)/sd|| and ``cos`` = cosine between (y - mu)/sd and (c - mu)/sd, medians
      over the faces (one draw each). kept -> 0: the output is the public average face.
    """
    a = make_anonymizer("dp-image", {"epsilon": 8.0}, None)
    m = a.model
    idx = [(i, subject_face(rgb, fs)) for i, (rgb, fs) in enumerate(zip(imgs, faces)) if fs]
    z = np.concatenate([m.encode(a.crops(imgs[i], [faces[i][j]])[0]) for i, j in idx])
    c = np.clip(z, m.lower, m.upper)
    lab = np.asarray([rows[i][1] for i, _ in idx])
    d1 = np.abs(c[:, None, :] - c[None, :, :]).sum(-1)
    iu = np.triu_indices(len(c), 1)
    same = (lab[:, None] == lab[None, :])[iu]
    dd = d1[iu]
    L1 = a.calibrated.bound_sensitivity
    out = [f"latent: {m.name}, L1 sensitivity (box diameter) {L1:.1f}; clipped coordinates of these faces: "
           f"{100 * np.mean((z < m.lower) | (z > m.upper)):.2f}%", "",
           "| pairs of faces | n | median L1 distance | p95 | max | median / Delta_1 |",
           "|---|---:|---:|---:|---:|---:|"]
    for name, sel in (("same identity", same), ("different identities", ~same)):
        x = dd[sel]
        out.append(f"| {name} | {x.size} | {np.median(x):.1f} | {np.percentile(x, 95):.1f} | {x.max():.1f} | "
                   f"{np.median(x) / L1:.3f} |")
    out += ["", "| epsilon | b (Laplace scale) | b / public sd (median over dims) | kept (median) | cos (median) |",
            "|---:|---:|---:|---:|---:|"]
    mu, sd = m.mean, m.std
    u = (c - mu) / sd
    for e in EPSILONS + [1e6]:
        ae = make_anonymizer("dp-image", {"epsilon": float(e)}, None)
        y = np.stack([ae.posterior(np.asarray(ae.mechanism(zi).z), None) for zi in z])
        v = (y - mu) / sd
        kept = np.linalg.norm(v, axis=1) / np.linalg.norm(u, axis=1)
        cos = (v * u).sum(1) / (np.linalg.norm(v, axis=1) * np.linalg.norm(u, axis=1) + 1e-12)
        b = ae.calibrated.noise_scale
        out.append(f"| {e:g} | {b:.4g} | {np.median(b / sd):.3g} | {np.median(kept):.3f} | {np.median(cos):.3f} |")
    return "\n".join(out)


# ------------------------------------------------------------------------------------ sheets
SHEET_DP = ["original", "recon", "dp-image eps=100000", "dp-image eps=10000", "dp-image eps=1000", "dp-image eps=100",
            "dp-image eps=30", "dp-image eps=10", "dp-image eps=3", "dp-image eps=1", "dp-image eps=10 posterior-sample"]
SHEET_DB = ["original", "recon", "deepblur sigma=0.25", "deepblur sigma=0.5", "deepblur sigma=1", "deepblur sigma=2",
            "deepblur sigma=4", "deepblur sigma=8", "deepblur sigma=1000"]


def _label(name: str) -> str:
    if name == "original":
        return "original"
    if name == "recon":
        return "no edit"
    if name == "dp-image eps=10 posterior-sample":
        return "eps 10 sample"
    if name.startswith("dp-image eps="):
        v = float(name.split("=")[1].split()[0])
        return f"eps {v:g}" if v < 1e4 else f"eps 1e{int(round(np.log10(v)))}"
    if name.startswith("deepblur sigma="):
        return f"sigma {name.split('=')[1]}"
    return name


def pick_sheet_faces(rows, faces, n: int = 6) -> list[int]:
    """n photos of distinct identities, one detected face each, spread over the sorted list."""
    subjects = sorted({s for _, s in rows})
    step = max(1, len(subjects) // n)
    chosen = []
    for s in subjects[::step]:
        for i, (_, subj) in enumerate(rows):
            if subj == s and len(faces[i]) == 1:
                chosen.append(i)
                break
        if len(chosen) == n:
            break
    return chosen


def _face_cell(rgb: np.ndarray, face: Face, size: int) -> "Image.Image":
    from PIL import Image

    x0, y0, x1, y1 = face.box
    cx, cy = (x0 + x1) / 2, (y0 + y1) / 2 + 0.05 * (y1 - y0)
    half = 0.8 * max(x1 - x0, y1 - y0)
    h, w = rgb.shape[:2]
    box = (int(max(0, cx - half)), int(max(0, cy - half)), int(min(w, cx + half)), int(min(h, cy + half)))
    return Image.fromarray(rgb).crop(box).resize((size, size), Image.LANCZOS)


def contact_sheet(names, specs, rows, imgs, faces, idx, out: Path, title: str, footer: str, size: int = 96) -> int:
    from PIL import Image, ImageDraw

    pad, top = 4, 30
    W = pad + len(names) * (size + pad)
    H = top + len(idx) * (size + pad) + 16
    sheet = Image.new("RGB", (W, H), (255, 255, 255))
    draw = ImageDraw.Draw(sheet)
    draw.text((pad, 2), title, fill=(0, 0, 0))
    rng = np.random.default_rng()
    anons = {n: (None if specs[n][0] == "none" else make_anonymizer(specs[n][0], specs[n][1], None)) for n in names}
    for c, n in enumerate(names):
        draw.text((pad + c * (size + pad) + 2, top - 13), _label(n), fill=(0, 0, 0))
    for r, i in enumerate(idx):
        rgb, fs = imgs[i], faces[i]
        for c, n in enumerate(names):
            a = anons[n]
            edited = rgb if a is None else a(rgb, fs, rng)[0]
            sheet.paste(_face_cell(edited, fs[0], size), (pad + c * (size + pad), top + r * (size + pad)))
    draw.text((pad, H - 14), f"LFW (Huang et al. 2007); builtin:eigenfaces; {footer}", fill=(90, 90, 90))
    out.parent.mkdir(parents=True, exist_ok=True)
    sheet.save(out, optimize=True)
    if out.stat().st_size > 400_000:  # keep docs light: adaptive palette
        sheet.quantize(colors=256, method=Image.Quantize.MEDIANCUT, dither=Image.Dither.NONE).save(out, optimize=True)
    return out.stat().st_size


# ------------------------------------------------------------------------------------ main
def main(argv=None) -> int:
    ap = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    ap.add_argument("--data", default=str(REPO.parent / "shared" / "data" / "lfw-dev"))
    ap.add_argument("--cache", default="/tmp/deid-privacy-sweep")
    ap.add_argument("--only", default="", help="comma list of groups (dp-image, dp-image-dims, deepblur, blur, recon, "
                                                "original) "
                                                "or exact setting names")
    ap.add_argument("--limit", type=int, default=None, help="first N photos only (smoke test)")
    ap.add_argument("--table-only", action="store_true")
    ap.add_argument("--sheets-only", action="store_true")
    ap.add_argument("--no-sheets", action="store_true")
    ap.add_argument("--img-dir", default=str(REPO / "docs" / "img"))
    ap.add_argument("--json", default=None, help="write all cached results here")
    ap.add_argument("--latent-stats", action="store_true", help="only the latent-space view (codes, no embeddings)")
    a = ap.parse_args(argv)

    root = Path(a.data)
    t0 = time.perf_counter()
    rows, imgs = load(root, a.limit)
    fp = data_fingerprint(root, rows)
    cache = Path(a.cache) / fp
    cache.mkdir(parents=True, exist_ok=True)
    detector = DlibDetector()  # dlib HOG, upsample 1, 5-point landmarks
    faces = detect_all(imgs, detector, cache / "faces.json")
    n_faces = sum(len(f) for f in faces)
    print(f"# {len(rows)} photos, {len({s for _, s in rows})} identities, {n_faces} faces detected in "
          f"{sum(1 for f in faces if f)} photos ({time.perf_counter() - t0:.0f}s)", flush=True)
    specs = settings()
    if a.latent_stats:
        print(latent_stats(rows, imgs, faces))
        return 0

    if not a.table_only and not a.sheets_only:
        only = {x.strip() for x in a.only.split(",") if x.strip()}
        todo = [n for n, s in specs.items() if not only or n in only or s[2] in only]
        todo = [n for n in todo if not (cache / f"{_slug(n)}.json").exists()]
        if todo:
            embedder = DlibEmbedder()
            t = time.perf_counter()
            orig = original_embeddings(imgs, faces, embedder, cache / "orig_emb.npz")
            print(f"# original embeddings ready ({time.perf_counter() - t:.0f}s)", flush=True)
            for n in todo:
                r = run_setting(n, specs[n], rows, imgs, faces, orig, detector, embedder)
                (cache / f"{_slug(n)}.json").write_text(json.dumps(r, indent=1))
                print(f"  {n:<36} beyond0.6 {100 * r['beyond']:5.1f}%  med {r['id_median']:.3f}  "
                      f"still {100 * r['redetect_win']:5.1f}%  full {100 * r['redetect_full']:5.1f}%  "
                      f"({r['seconds']:.0f}s)", flush=True)

    if not a.sheets_only:
        results = [json.loads((cache / f"{_slug(n)}.json").read_text()) for n in specs
                   if (cache / f"{_slug(n)}.json").exists()]
        print()
        print(table(results))
        print()
        print("\n".join(target_lines(results)))
        if a.json:
            Path(a.json).write_text(json.dumps(results, indent=1))

    if not a.no_sheets and not a.table_only and not a.limit:
        idx = pick_sheet_faces(rows, faces)
        img_dir = Path(a.img_dir)
        s1 = contact_sheet(SHEET_DP, specs, rows, imgs, faces, idx, img_dir / "dp-image-epsilon.png",
                           "dp-image (laplace, posterior-mean, builtin:eigenfaces): per-face epsilon",
                           "one noise draw per cell (OpenDP, OS entropy); 'no edit' = encode -> decode, no noise")
        s2 = contact_sheet(SHEET_DB, specs, rows, imgs, faces, idx, img_dir / "deepblur-sigma.png",
                           "deepblur (builtin:eigenfaces): sigma of the latent low-pass (not DP)",
                           "deterministic: the same face always gives the same output")
        print(f"\n# sheets: dp-image-epsilon.png {s1 // 1024} KB, deepblur-sigma.png {s2 // 1024} KB; "
              f"faces: {', '.join(rows[i][0] for i in idx)}")
    print(f"# total {time.perf_counter() - t0:.0f}s")
    return 0


def _slug(name: str) -> str:
    return "".join(ch if ch.isalnum() or ch in "-_." else "_" for ch in name)


if __name__ == "__main__":
    raise SystemExit(main())

"""Fitting the universal perturbation on public faces, end to end: the faces found and aligned
as the attacker aligns them, :func:`deid.anonymize.uap.fit` against MobileFaceNet in PyTorch,
the held-out fooling rates and the random-sign baseline measured, the card filled in. Here
(evaluate) rather than in :mod:`deid.anonymize.uap` because it needs the recognizers; applying
a perturbation needs only the file."""

from __future__ import annotations

import hashlib
from collections.abc import Callable
from typing import Any

import numpy as np

from deid.anonymize.uap import FORMAT, UAP, fit, fooling

IMAGE_SUFFIXES = (".jpg", ".jpeg", ".png", ".webp", ".bmp", ".tif", ".tiff")


def public_crops(folder: str, n: int, progress: Callable[[int], None] | None = None
                 ) -> tuple[np.ndarray, list[tuple[str, str]]]:
    """ArcFace-aligned 112 crops of the largest face of up to ``n`` photos of a local PUBLIC
    folder, evenly spaced over its sorted file names (deterministic, no seed); the attacker's
    own alignment (dlib HOG box, 68 landmarks). Returns the crops and ``(name, sha256)`` of the
    photos used (for the card's set fingerprint)."""
    from pathlib import Path

    from PIL import Image

    from deid.evaluate.recognizers import Landmarker, arcface_crop
    from deid.faces.dlib_backend import DlibDetector

    root = Path(folder).expanduser()
    if not root.is_dir():
        raise ValueError(f"--images {folder}: not a folder of public photos")
    files = sorted(p for p in root.rglob("*") if p.suffix.lower() in IMAGE_SUFFIXES and p.is_file())
    if not files:
        raise ValueError(f"--images {folder}: no photos in it")
    pick = [files[int(i)] for i in np.unique(np.linspace(0, len(files) - 1, min(n, len(files))).round())]
    det, lm = DlibDetector("dlib-hog", upsample=1), Landmarker()
    crops, used = [], []
    for p in pick:
        try:
            rgb = np.asarray(Image.open(p).convert("RGB"))
        except OSError:
            continue
        faces = det.detect(rgb)
        if progress is not None:
            progress(1)
        if not faces:
            continue
        f = max(faces, key=lambda f: (f.box[2] - f.box[0]) * (f.box[3] - f.box[1]))
        crops.append(arcface_crop(rgb, lm.geometry(rgb, f.box)))
        used.append((str(p.relative_to(root)), hashlib.sha256(p.read_bytes()).hexdigest()))
    if len(crops) < 8:
        raise ValueError(f"--images {folder}: faces found on only {len(crops)} photos; a perturbation needs more")
    return np.stack(crops), used


def fit_public(folder: str, *, n: int = 300, holdout: float = 0.25, xi: float = 8.0, epochs: int = 4,
               inner_steps: int = 3, jitter: float = 2.0, seed: int = 0, threads: int | None = None,
               command: str = "", progress=None) -> UAP:
    """:func:`fit` on the public photos of ``folder`` with MobileFaceNet (PyTorch), held-out
    fooling measured, the card filled in. ``seed`` makes the fit reproducible: it orders the
    passes and the jitter of a fit on public data, nothing of any release."""
    import torch

    from deid import __version__
    from deid.evaluate.recognizers import MobileFaceNetTorch
    from deid.latent.pca import set_fingerprint

    if threads:
        torch.set_num_threads(threads)
    crops, used = public_crops(folder, n, progress=(lambda k: progress("faces", k)) if progress else None)
    rng = np.random.default_rng(seed)
    k = round(len(crops) * (1.0 - holdout))
    order = rng.permutation(len(crops))
    fit_idx, ho_idx = np.sort(order[:k]), np.sort(order[k:])
    net = MobileFaceNetTorch()
    v, stats = fit(net, crops[fit_idx], xi=xi, epochs=epochs, inner_steps=inner_steps, jitter=jitter, rng=rng,
                   progress=(lambda e, m, r: progress("epoch", e, m, r)) if progress else None)
    card: dict[str, Any] = {
        "format": FORMAT, "recognizer": net.name, "recognizer_fingerprint": net.fingerprint,
        "recognizer_runtime": "PyTorch (deid.evaluate.recognizers.MobileFaceNetTorch)", "xi": float(xi),
        "norm": "linf, pixel units 0-255, in the 112x112 ArcFace crop", "target": stats["target"],
        "images": str(folder), "n_fit": len(fit_idx), "n_heldout": len(ho_idx),
        "set_fingerprint": set_fingerprint(used),
        "epochs_run": len(stats["rates_by_epoch"]), "inner_steps": inner_steps, "jitter_px": jitter,
        "fit_fooling_rate": stats["fit_fooling_rate"], "seed": seed, "command": command, "deid_version": __version__,
        "method": "universal perturbation (Moosavi-Dezfooli et al. 2017) with DeepFool steps on the embedding "
                  "distance to the clean face; fooled = distance >= target",
    }
    if len(ho_idx):
        d = fooling(net, crops[ho_idx], v, stats["target"])
        noise = np.random.default_rng(seed + 1).choice([-xi, xi], v.shape).astype(np.float32)
        dn = fooling(net, crops[ho_idx], noise, stats["target"])
        card.update(heldout_fooling_rate=float((d >= stats["target"]).mean()),
                    heldout_median_distance=float(np.median(d)),
                    heldout_random_sign_fooling_rate=float((dn >= stats["target"]).mean()),
                    heldout_random_sign_median_distance=float(np.median(dn)))
    return UAP(v, card)

"""Universal adversarial perturbation against a face recognizer (AnonymousNet, stage IV).

One perturbation ``v`` for every face, computed once per recognizer on PUBLIC faces (Moosavi-
Dezfooli et al. 2017, "Universal adversarial perturbations", with DeepFool's linear steps;
AnonymousNet, Li & Lin 2019, section III-D) and stored as a model file with its card. It lives in
the recognizer's own aligned frame (the 112 x 112 ArcFace crop, pixel units 0-255) and is bounded
in L-infinity by ``xi``. A release adds it to each anonymized face region: warped from that frame
onto the face by the face's five landmarks, weighted by the region's alpha, then rounded.

Contract:

* ``fit`` -- the recognizer must be differentiable (:class:`deid.evaluate.recognizers.MobileFaceNetTorch`).
  A face counts as *fooled* when the embedding of its perturbed crop is at least ``target`` away
  from the embedding of its clean crop (default: the recognizer's same-person threshold, i.e. it
  would no longer be called the same person as itself). Passes over the faces in random order;
  for each batch, the faces not yet fooled get a DeepFool step at the current ``v`` -- the minimal
  linear move to the ``target`` sphere, ``r = (target - d) * grad d / |grad d|^2``, iterated
  ``inner_steps`` times with ``overshoot`` -- and ``v`` is moved by each in turn and projected onto
  the L-infinity ball of radius ``xi`` (the universal iteration). Expectation over small
  misalignments: each evaluation warps the perturbed crop by a random similarity (shift up to
  ``jitter`` px, scale and rotation to match), since a release aligns by other landmarks than the
  attacker. Stops after ``epochs`` passes or when the fooling rate on the fit faces reaches
  ``stop_rate``.
* The file (``.npz``, loaded with ``allow_pickle=False``): ``v`` float32 [112, 112, 3] and a JSON
  ``card``: format, recognizer name and fingerprint, ``xi``, ``target``, the public set (folder,
  number of faces, sha256 over the sorted names and file hashes), fit and held-out fooling rates, epochs,
  the command. Nothing of any record is in it: public faces only.
* ``apply`` never moves a pixel outside the alpha > 0 region and never by more than ``xi`` (plus
  the rounding), so it keeps what the anonymization removed removed: it is a post-process of the
  anonymized pixels, not a privacy mechanism of its own, and the audit says so.
"""

from __future__ import annotations

import hashlib
import io
import json
from collections.abc import Callable
from dataclasses import dataclass, field
from typing import Any

import numpy as np

FORMAT = "deid-uap/1"
SIZE = 112
#: the perturbation shipped with deid (``make uap`` recomputes it): MobileFaceNet, lfw-public-ref
BUILTIN = {"builtin:uap-mobilefacenet": "uap-mobilefacenet.npz"}


def resolve(uri: str) -> str:
    """A local path or URI for ``uri``; ``builtin:uap-mobilefacenet`` is the shipped file."""
    if uri.startswith("builtin:"):
        from importlib import resources

        if uri not in BUILTIN:
            raise ValueError(f"perturbation {uri}: no such built-in file (there is {', '.join(BUILTIN)})")
        return str(resources.files("deid.anonymize") / "data" / BUILTIN[uri])
    return uri


@dataclass
class UAP:
    v: np.ndarray  # float32 [112, 112, 3], |v| <= xi, pixel units
    card: dict[str, Any] = field(default_factory=dict)

    def __post_init__(self) -> None:
        self.v = np.asarray(self.v, dtype=np.float32)
        if self.v.shape != (SIZE, SIZE, 3):
            raise ValueError(f"a perturbation is {SIZE}x{SIZE}x3, got {list(self.v.shape)}")

    @property
    def xi(self) -> float:
        return float(self.card.get("xi", np.abs(self.v).max()))

    def to_bytes(self) -> bytes:
        buf = io.BytesIO()
        np.savez_compressed(buf, v=self.v, card=np.frombuffer(json.dumps(self.card, sort_keys=True).encode(), np.uint8))
        return buf.getvalue()

    @property
    def fingerprint(self) -> str:
        return hashlib.sha256(self.v.tobytes() + json.dumps(self.card, sort_keys=True).encode()).hexdigest()

    @classmethod
    def from_bytes(cls, data: bytes, where: str = "perturbation") -> UAP:
        try:
            with np.load(io.BytesIO(data), allow_pickle=False) as z:
                card = json.loads(bytes(z["card"]).decode())
                v = z["v"]
        except (OSError, ValueError, KeyError) as exc:
            raise ValueError(f"{where}: not a deid perturbation file ({exc}); write one with `deid uap fit`") from None
        if card.get("format") != FORMAT:
            raise ValueError(f"{where}: format {card.get('format')!r}, expected {FORMAT!r}")
        return cls(v, card)

    def save(self, uri: str) -> None:
        import fsspec

        from deid.io.write import atomic_write

        fs, path = fsspec.core.url_to_fs(uri)
        parent = path.rsplit("/", 1)[0] if "/" in path else ""
        if parent:
            fs.makedirs(parent, exist_ok=True)
        atomic_write(fs, path, self.to_bytes())

    @classmethod
    def load(cls, uri: str) -> UAP:
        from deid.latent.base import read_uri

        try:
            data = read_uri(resolve(uri))
        except (OSError, FileNotFoundError) as exc:
            raise ValueError(f"perturbation {uri}: cannot read it ({exc}); write one with `deid uap fit` "
                             f"(or `make uap`)") from None
        return cls.from_bytes(data, where=f"perturbation {uri}")

    # ------------------------------------------------------------------ applying it
    def field_for(self, arcface5: np.ndarray, shape: tuple[int, int]) -> np.ndarray:
        """``v`` warped from the 112 crop onto an image of ``shape`` (h, w) for a face with
        these five ArcFace-layout landmarks: float32 [h, w, 3], zero outside the crop."""
        import cv2

        from deid.faces.align import estimate

        m = estimate(np.asarray(arcface5, np.float64), SIZE, layout="arcface5")  # image -> crop
        return cv2.warpAffine(self.v, m, (int(shape[1]), int(shape[0])), flags=cv2.INTER_LINEAR | cv2.WARP_INVERSE_MAP,
                              borderMode=cv2.BORDER_CONSTANT, borderValue=0).astype(np.float32)

    def apply(self, rgb: np.ndarray, arcface5: np.ndarray, alpha: np.ndarray | None = None,
              window: tuple[int, int, int, int] | None = None) -> np.ndarray:
        """``rgb`` with the perturbation added on one face, inside ``alpha`` (float [h, w] in
        [0, 1] over ``window`` = (x0, y0, x1, y1), or the whole image); uint8."""
        h, w = rgb.shape[:2]
        x0, y0, x1, y1 = window if window is not None else (0, 0, w, h)
        arc = np.asarray(arcface5, np.float64) - np.array([x0, y0], np.float64)
        f = self.field_for(arc, (y1 - y0, x1 - x0))
        if alpha is not None:
            f = f * np.asarray(alpha, np.float32)[..., None]
        out = np.array(rgb, copy=True)
        win = out[y0:y1, x0:x1].astype(np.float32)
        out[y0:y1, x0:x1] = np.clip(np.rint(win + f), 0, 255).astype(np.uint8)
        return out


# ---------------------------------------------------------------------------- fitting
def _jitter_grid(n: int, jitter: float, rng: np.random.Generator):
    """Random small similarities of the 112 crop, as ``affine_grid`` thetas [n, 2, 3]."""
    import torch

    shift = rng.uniform(-jitter, jitter, (n, 2)) * 2.0 / SIZE
    scale = 1.0 + rng.uniform(-jitter, jitter, n) * 2.0 / SIZE
    ang = rng.uniform(-jitter, jitter, n) * 2.0 / SIZE
    c, s = scale * np.cos(ang), scale * np.sin(ang)
    theta = np.stack([np.stack([c, -s, shift[:, 0]], 1), np.stack([s, c, shift[:, 1]], 1)], 1)
    return torch.as_tensor(theta, dtype=torch.float32)


def _view(x, theta):
    import torch.nn.functional as F

    if theta is None:
        return x
    grid = F.affine_grid(theta, list(x.shape), align_corners=False)
    return F.grid_sample(x, grid, mode="bilinear", padding_mode="border", align_corners=False)


def fooling(recognizer, crops: np.ndarray, v: np.ndarray, target: float, jitter: float = 0.0,
            rng: np.random.Generator | None = None, batch: int = 64) -> np.ndarray:
    """Distance between the embeddings of each perturbed crop and of its clean crop (float [n])."""
    import torch

    rng = rng if rng is not None else np.random.default_rng()
    vt = torch.from_numpy(np.ascontiguousarray(v.transpose(2, 0, 1)))[None]
    out = []
    with torch.no_grad():
        for i in range(0, len(crops), batch):
            x = torch.from_numpy(np.ascontiguousarray(crops[i:i + batch], np.float32)).permute(0, 3, 1, 2)
            e0 = recognizer.embed_tensor(x)
            theta = _jitter_grid(len(x), jitter, rng) if jitter > 0 else None
            e1 = recognizer.embed_tensor(_view(torch.clamp(x + vt, 0, 255), theta))
            out.append(torch.linalg.vector_norm(e1 - e0, dim=1).numpy())
    return np.concatenate(out) if out else np.zeros(0)


def fit(recognizer, crops: np.ndarray, *, xi: float = 8.0, target: float | None = None, epochs: int = 4,
        inner_steps: int = 3, overshoot: float = 0.02, batch: int = 16, jitter: float = 2.0,
        stop_rate: float = 0.9, rng: np.random.Generator | None = None,
        progress: Callable[[int, int, float], None] | None = None) -> tuple[np.ndarray, dict[str, Any]]:
    """The universal perturbation of ``crops`` (uint8 [n, 112, 112, 3], aligned public faces)
    against ``recognizer`` (module docstring). Returns ``(v, stats)``."""
    import torch

    if not getattr(recognizer, "embed_tensor", None):
        raise ValueError("a universal perturbation needs a differentiable recognizer (MobileFaceNetTorch)")
    rng = rng if rng is not None else np.random.default_rng()
    target = float(recognizer.same_person_threshold if target is None else target)
    x_all = torch.from_numpy(np.ascontiguousarray(crops, np.float32)).permute(0, 3, 1, 2)
    with torch.no_grad():
        e_all = torch.cat([recognizer.embed_tensor(x_all[i:i + 64]) for i in range(0, len(x_all), 64)])
    v = torch.zeros((1, 3, SIZE, SIZE))
    n = len(x_all)
    rates = []
    steps = 0
    for epoch in range(epochs):
        order = rng.permutation(n)
        for b0 in range(0, n, batch):
            idx = torch.as_tensor(order[b0:b0 + batch])
            x, e0 = x_all[idx], e_all[idx]
            theta = _jitter_grid(len(idx), jitter, rng) if jitter > 0 else None
            with torch.no_grad():
                d = torch.linalg.vector_norm(recognizer.embed_tensor(_view(torch.clamp(x + v, 0, 255), theta)) - e0, dim=1)
            todo = d < target
            if not bool(todo.any()):
                continue
            x, e0 = x[todo], e0[todo]
            th = theta[todo] if theta is not None else None
            r = torch.zeros_like(x)
            for _ in range(inner_steps):  # DeepFool: linear steps to the target sphere, per face
                xr = (x + v + r).detach().requires_grad_(True)
                dist = torch.linalg.vector_norm(recognizer.embed_tensor(_view(torch.clamp(xr, 0, 255), th)) - e0, dim=1)
                (g,) = torch.autograd.grad(dist.sum(), xr)
                gap = (target - dist.detach()).clamp(min=0)
                if not bool((gap > 0).any()):
                    break
                gn = (g.flatten(1) ** 2).sum(1).clamp(min=1e-12)
                r = r + ((gap * (1 + overshoot)) / gn)[:, None, None, None] * g
            for k in range(len(r)):  # the universal iteration: each face's step in turn, projected
                v = torch.clamp(v + r[k:k + 1], -xi, xi)
            steps += 1
        rate = float((fooling(recognizer, crops, v[0].permute(1, 2, 0).numpy(), target, jitter, rng) >= target).mean())
        rates.append(rate)
        if progress is not None:
            progress(epoch + 1, epochs, rate)
        if rate >= stop_rate:
            break
    return v[0].permute(1, 2, 0).numpy().astype(np.float32), {"fit_fooling_rate": rates[-1] if rates else 0.0,
                                                              "rates_by_epoch": rates, "updates": steps,
                                                              "target": target}


def psnr(a: np.ndarray, b: np.ndarray) -> float:
    """PSNR (dB) of ``b`` against ``a`` (uint8 images); inf when equal."""
    from skimage.metrics import peak_signal_noise_ratio

    if np.array_equal(a, b):
        return float("inf")
    return float(peak_signal_noise_ratio(np.asarray(a), np.asarray(b), data_range=255))


# ---------------------------------------------------------------------------- a public fit, end to end
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
    k = int(round(len(crops) * (1.0 - holdout)))
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

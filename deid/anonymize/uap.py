"""Universal adversarial perturbation against a face recognizer (AnonymousNet, stage IV).

One perturbation ``v`` for every face, computed once per recognizer on PUBLIC faces (Moosavi-
Dezfooli et al. 2017, "Universal adversarial perturbations", with DeepFool's linear steps;
AnonymousNet, Li & Lin 2019, section III-D) and stored as a model file with its card. It lives in
the recognizer's own aligned frame (the 112 x 112 ArcFace crop, pixel units 0-255) and is bounded
in L-infinity by ``xi``. A release adds it to each anonymized face region: warped from that frame
onto the face by the face's five landmarks, weighted by the region's alpha, then rounded.

Contract:

* ``fit`` (the fit on a public folder, end to end: :mod:`deid.evaluate.uap_fit`) -- the recognizer must be differentiable (:class:`deid.evaluate.recognizers.MobileFaceNetTorch`).
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
              window: tuple[int, int, int, int] | None = None, *, inplace: bool = False) -> np.ndarray:
        """``rgb`` with the perturbation added on one face, inside ``alpha`` (float [h, w] in
        [0, 1] over ``window`` = (x0, y0, x1, y1), or the whole image); uint8 (``rgb`` itself
        when ``inplace``)."""
        h, w = rgb.shape[:2]
        x0, y0, x1, y1 = window if window is not None else (0, 0, w, h)
        arc = np.asarray(arcface5, np.float64) - np.array([x0, y0], np.float64)
        f = self.field_for(arc, (y1 - y0, x1 - x0))
        if alpha is not None:
            f = f * np.asarray(alpha, np.float32)[..., None]
        out = rgb if inplace else np.array(rgb, copy=True)
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

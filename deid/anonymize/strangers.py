"""A bank of synthetic strangers: generated faces with their 468-point face meshes.

``synthetic-swap`` (:mod:`deid.anonymize.swap`) replaces a face with the stranger of the bank
whose pose and expression are nearest, warped onto the original's landmarks. The bank is made
once per machine from the run's generator (random latents only: no stranger comes from a real
face) and cached on disk, keyed by the generator's fingerprint, the bank size and crop size.

Contract:

* ``crops``: ``uint8 [n, size, size, 3]``, each a square around one generated face;
  ``points``: ``float32 [n, 468, 2]``, its face mesh in crop pixels (MediaPipe's face mesh,
  :mod:`deid.faces.facemesh_backend`); ``shapes``: ``complex128 [n, k]``, the pose descriptor
  (:func:`pose_shape`) of each mesh.
* A generated image enters the bank only when the face mesh finds exactly one face on it with
  presence >= 0.9; generation goes on until the bank is full (or gives up after 3x the size).
* The cache file is written whole (temporary name, then rename) and loaded read-only; a file
  that does not match what was asked for (size, crop size, mesh model) is rebuilt.
* Nothing of the bank identifies anyone: its faces come from random latents of the generator.
"""

from __future__ import annotations

import hashlib
import logging
from dataclasses import dataclass
from pathlib import Path
from typing import Callable, Iterator

import numpy as np

log = logging.getLogger(__name__)

#: mesh points that describe pose and expression (face oval, brows, eyes, nose, lips)
POSE_POINTS = (
    10, 338, 297, 332, 284, 251, 389, 356, 454, 323, 361, 288, 397, 365, 379, 378, 400, 377, 152, 148, 176, 149,
    150, 136, 172, 58, 132, 93, 234, 127, 162, 21, 54, 103, 67, 109,           # oval
    70, 63, 105, 66, 107, 336, 296, 334, 293, 300,                              # brows
    33, 133, 159, 145, 263, 362, 386, 374,                                      # eyes
    1, 4, 5, 195, 98, 327,                                                      # nose
    61, 291, 0, 17, 13, 14, 78, 308,                                            # lips
)

BANK_FORMAT = 1


def pose_shape(points: np.ndarray) -> np.ndarray:
    """The pose/expression descriptor of a mesh: the :data:`POSE_POINTS` as complex numbers,
    centred and scaled to unit norm (``[..., k]``). Two descriptors are compared up to rotation
    by :func:`pose_distance` (the in-plane roll is undone by the warp)."""
    p = np.asarray(points, dtype=np.float64)[..., list(POSE_POINTS), :2]
    z = p[..., 0] + 1j * p[..., 1]
    z = z - z.mean(axis=-1, keepdims=True)
    return z / np.linalg.norm(z, axis=-1, keepdims=True)


def pose_distance(bank_shapes: np.ndarray, shape: np.ndarray) -> np.ndarray:
    """Procrustes distance (rotation, scale and translation removed) of one descriptor to each
    of the bank's: ``sqrt(1 - |<b, s>|^2)``, 0 for the same shape."""
    c = bank_shapes.conj() @ shape
    return np.sqrt(np.clip(1.0 - np.abs(c) ** 2, 0.0, 1.0))


@dataclass
class StrangerBank:
    crops: np.ndarray
    points: np.ndarray
    fingerprint: str

    def __post_init__(self) -> None:
        self.shapes = pose_shape(self.points)

    def __len__(self) -> int:
        return len(self.crops)

    @property
    def forehead(self) -> np.ndarray:
        """``float64 [n]``: how much of each stranger's forehead is skin (:func:`forehead_scores`)."""
        return forehead_scores(self)

    def nearest(self, points: np.ndarray, k: int, among: np.ndarray | None = None) -> np.ndarray:
        """Indices of the ``k`` strangers whose pose is nearest to the mesh ``points`` (only
        those of ``among`` when given)."""
        d = pose_distance(self.shapes, pose_shape(points))
        idx = np.arange(len(d)) if among is None else np.asarray(among)
        k = max(1, min(int(k), len(idx)))
        return idx[np.argsort(d[idx], kind="stable")[:k]]

    def save(self, path: Path) -> None:
        from deid.io.npz import save_npz

        save_npz(path, {"crops": self.crops, "points": self.points, "fingerprint": np.array(self.fingerprint)},
                 version=BANK_FORMAT)

    @classmethod
    def load(cls, path: Path) -> "StrangerBank":
        from deid.io.npz import load_npz

        z, _ = load_npz(path, "stranger bank", BANK_FORMAT, required=("crops", "points", "fingerprint"))
        return cls(crops=np.ascontiguousarray(z["crops"]), points=z["points"].astype(np.float32),
                   fingerprint=str(z["fingerprint"]))


def forehead_scores(bank) -> np.ndarray:
    """``float64 [n]``: :func:`deid.anonymize.swap_ops.forehead_clear` of each of ``bank``'s
    crops and meshes (a :class:`StrangerBank` or the attribute method's set), computed on first
    use and kept on the bank."""
    if getattr(bank, "_forehead", None) is None:
        from deid.anonymize.swap_ops import forehead_clear

        bank._forehead = np.array([forehead_clear(c, p) for c, p in zip(bank.crops, bank.points)], dtype=np.float64)
    return bank._forehead


def allowed_strangers(bank, min_forehead: float, at_least: int = 1) -> np.ndarray | None:
    """Indices of ``bank``'s strangers whose forehead scores at least ``min_forehead``; None (all
    of them) when ``min_forehead`` is 0 or fewer than ``at_least`` strangers qualify."""
    if min_forehead <= 0:
        return None
    ok = np.flatnonzero(forehead_scores(bank) >= min_forehead)
    return ok if len(ok) >= max(1, at_least) else None


def crop_face(image: np.ndarray, mesh_xy: np.ndarray, size: int) -> tuple[np.ndarray, np.ndarray]:
    """A ``size`` square around the face (1.5x the mesh's larger extent, centred on it),
    resampled, and the mesh in its pixels."""
    import cv2

    lo, hi = mesh_xy.min(0), mesh_xy.max(0)
    c = (lo + hi) / 2
    side = 1.5 * float(max(hi - lo))
    k = size / side
    m = np.array([[k, 0, size / 2 - k * c[0]], [0, k, size / 2 - k * c[1]]], dtype=np.float64)
    crop = cv2.warpAffine(image, m, (size, size), flags=cv2.INTER_AREA if k < 1 else cv2.INTER_LINEAR,
                          borderMode=cv2.BORDER_REFLECT)
    return crop, (mesh_xy @ m[:, :2].T + m[:, 2]).astype(np.float32)


def build_bank(images: Iterator[np.ndarray], n: int, size: int, mesher, fingerprint: str,
               progress: Callable[[int], None] | None = None, max_side: int = 512) -> StrangerBank:
    """Fill a bank of ``n`` strangers from generated ``images`` (module contract)."""
    import cv2

    crops, points, tried = [], [], 0
    for image in images:
        tried += 1
        h, w = image.shape[:2]
        f = min(1.0, max_side / max(h, w))
        small = cv2.resize(image, (round(w * f), round(h * f)), interpolation=cv2.INTER_AREA) if f < 1 else image
        faces = mesher.detect(small)
        if len(faces) == 1 and faces[0].mesh is not None:
            mesh_xy = faces[0].mesh[:, :2] / f
            crop, pts = crop_face(image, mesh_xy, size)
            crops.append(crop)
            points.append(pts)
            if progress:
                progress(1)
        if len(crops) >= n or tried >= 3 * n:
            break
    if len(crops) < n:
        raise RuntimeError(f"stranger bank: the face mesh found one face on only {len(crops)} of {tried} generated "
                           f"images (wanted {n})")
    return StrangerBank(crops=np.stack(crops), points=np.stack(points), fingerprint=fingerprint)


def cache_dir(explicit: str | None = None) -> Path:
    """Where banks are cached: ``explicit``, else ``strangers/`` under deid's cache folder
    (:func:`deid.latent.generator.cache_root`)."""
    from deid.latent.generator import cache_root

    return Path(explicit).expanduser() if explicit else cache_root() / "strangers"


def bank_key(generator_fingerprint: str, mesh_fingerprint: str, n: int, size: int, truncation: float) -> str:
    h = hashlib.sha256(f"{BANK_FORMAT}|{generator_fingerprint}|{mesh_fingerprint}|{n}|{size}|{truncation}".encode())
    return h.hexdigest()[:20]

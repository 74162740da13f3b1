"""The latent-model interface: aligned face crops <-> vectors, with public bounds.

Contract (every backend: ``pca``, ``torchscript``, ...):

* A model works on faces aligned with :func:`deid.faces.align.align` using the model's own
  ``crop_size``, ``layout`` and ``align_scale``: ``align(rgb, face.landmarks5, model.crop_size,
  layout=model.layout, scale=model.align_scale)``. Faces aligned any other way are out of the
  model's domain. ``layout`` must match the detector's landmark layout (``face.landmark_layout``).
* ``encode(crops)``: ``uint8 [n, crop_size, crop_size, 3]`` RGB -> ``float64 [n, dim]``.
  ``decode(z)``: ``[n, dim]`` (any real dtype) -> ``uint8 [n, crop_size, crop_size, 3]``.
  Both are deterministic and batch-independent: row i of the output depends on row i of the
  input only (up to floating-point rounding, which may differ with the batch size).
  ``n == 0`` is allowed and returns empty arrays of the right shape.
* ``lower`` / ``upper`` (``float64 [dim]``, ``lower < upper``) are the **public** clip bounds:
  a DP mechanism clips codes to them before adding noise, so its sensitivity is a property of
  these numbers (L1: ``sum(upper - lower)``; L2: ``norm(upper - lower)``), never of the data
  being released. ``mean`` / ``std`` (``float64 [dim]``, ``std > 0``) describe the codes of the
  public reference set, for post-processing noisy codes onto the public prior.
* Invariant: bounds and statistics are fitted on a public reference set whose identities are
  disjoint from the records being anonymized, and never on those records. The model file
  records that set (``card["set_fingerprint"]``) so an audit can name it.
* ``fingerprint`` is a sha256 hex digest identifying the model (its file, or its files and
  bounds); it goes into the audit's ``model_fingerprints``. ``card`` is plain JSON data: what
  the model was fitted on, how, and how well it reconstructs.
* Models load once (an actor's ``__init__``) and are then read-only: ``encode``/``decode``
  keep no state between calls, so one instance may serve many batches.

Besides the abstract surface, :meth:`LatentModel.mask` gives the soft face mask in crop
space that anonymizers use to blend a decoded crop back into the photo
(:func:`paste_back`): only the face oval is replaced, with a feathered edge, and the corners
of the crop (background, hair, ears) stay original.
"""

from __future__ import annotations

import abc
from importlib import resources
from typing import Any

import numpy as np

# Face oval in the unit square of each alignment template at scale 1.0: (cx, cy, ax, ay).
# dlib5: fitted to dlib's 68-point jaw line and eyebrows, aligned to the dlib5 template,
# over 100 faces of lfw-public-ref: jaw x 0.09..0.91, eyebrows y 0.18, chin y 0.97; the
# ellipse adds the lower forehead. arcface5: the same oval mapped through the similarity
# that takes dlib5's eye centres to arcface5's (approximate: a different point set).
# ffhq: fitted the same way to dlib's 68 points on 23 MobileStyleGAN faces (psi 1; the FFHQ
# crop at 1024 px): jaw x 0.20..0.78 (medians; yaw spreads them: p10-p90 0.08-0.30 and
# 0.68-0.91), eyebrows y 0.37, chin y 0.94; the ellipse adds the lower forehead.
FACE_OVALS: dict[str, tuple[float, float, float, float]] = {
    "dlib5": (0.5, 0.55, 0.40, 0.42),
    "arcface5": (0.5, 0.674, 0.361, 0.379),
    "ffhq": (0.5, 0.64, 0.29, 0.31),
}


def face_mask(size: int, layout: str = "dlib5", scale: float = 1.0, feather: float = 0.06) -> np.ndarray:
    """float32 ``[size, size]`` alpha in crop space: 1 inside the face oval, a smooth ramp to 0
    over ``feather`` (fraction of the crop size) outside it. ``scale`` is the alignment scale."""
    cx, cy, ax, ay = FACE_OVALS[layout]
    cx, cy = (cx - 0.5) * scale + 0.5, (cy - 0.5) * scale + 0.5
    ax, ay = ax * scale, ay * scale
    c = (np.arange(size, dtype=np.float64) + 0.5) / size
    x, y = c[None, :], c[:, None]
    r = np.sqrt(((x - cx) / ax) ** 2 + ((y - cy) / ay) ** 2)
    # distance outside the oval, in crop units (radial approximation)
    d = (r - 1.0) * np.minimum(ax, ay)
    t = np.clip(1.0 - d / max(feather, 1e-6), 0.0, 1.0)
    return (t * t * (3.0 - 2.0 * t)).astype(np.float32)  # smoothstep


def paste_back(rgb: np.ndarray, crop: np.ndarray, m: np.ndarray, mask: np.ndarray, *, inplace: bool = False) -> np.ndarray:
    """``rgb`` with ``crop`` (aligned by the 2x3 image->crop matrix ``m``) blended in through
    ``mask`` (crop-space alpha, e.g. :func:`face_mask`): a copy, or ``rgb`` itself with
    ``inplace``. Only the window the crop lands on is warped and touched, so a face in a
    large photo costs what the face costs."""
    import cv2

    from deid.faces.align import warp_back

    h, w = rgb.shape[:2]
    out = rgb if inplace else np.array(rgb, copy=True)
    s = crop.shape[0]
    inv = cv2.invertAffineTransform(np.asarray(m, dtype=np.float64))
    corners = np.array([[0, 0, 1], [s, 0, 1], [0, s, 1], [s, s, 1]], dtype=np.float64) @ inv.T
    x0, y0 = (int(max(0, np.floor(v))) for v in corners.min(axis=0))
    x1, y1 = int(min(w, np.ceil(corners[:, 0].max()) + 1)), int(min(h, np.ceil(corners[:, 1].max()) + 1))
    if x1 <= x0 or y1 <= y0:
        return out
    mw = np.array(m, dtype=np.float64, copy=True)
    mw[:, 2] += mw[:, :2] @ np.array([x0, y0], dtype=np.float64)  # window coords -> crop
    layer, cover = warp_back(crop, mw, (y1 - y0, x1 - x0))
    alpha, _ = warp_back(mask.astype(np.float32), mw, (y1 - y0, x1 - x0))
    a = (np.clip(alpha, 0.0, 1.0) * np.clip(cover, 0.0, 1.0))[..., None]
    win = out[y0:y1, x0:x1]
    blended = a * layer.astype(np.float32) + (1.0 - a) * win.astype(np.float32)
    win[...] = np.clip(np.rint(blended), 0, 255).astype(np.uint8)
    return out


def read_uri(uri: str, storage_options: dict | None = None) -> bytes:
    """Bytes of a model file: any fsspec URI or local path, or ``builtin:<file name>`` for a
    file shipped in the package (``deid/latent/models/``)."""
    if uri.startswith("builtin:"):
        fname = uri[len("builtin:"):]
        res = resources.files("deid.latent") / "models" / fname
        if not fname or "/" in fname or "\\" in fname or not res.is_file():
            raise FileNotFoundError(f"{uri}: no such built-in model file")
        return res.read_bytes()
    import fsspec

    with fsspec.open(uri, "rb", **(storage_options or {})) as f:
        return f.read()


def bounds_from_codes(z: np.ndarray, quantile: float = 0.005) -> dict[str, np.ndarray]:
    """Public bounds and statistics from codes of a public reference set: per dimension the
    ``quantile`` / ``1 - quantile`` quantiles (min / max when 0), mean and std (ddof 1)."""
    z = np.asarray(z, dtype=np.float64)
    if z.ndim != 2 or len(z) < 2:
        raise ValueError("need codes [n >= 2, d]")
    if not 0.0 <= quantile < 0.5:
        raise ValueError("quantile must be in [0, 0.5)")
    lower = np.quantile(z, quantile, axis=0) if quantile > 0 else z.min(axis=0)
    upper = np.quantile(z, 1 - quantile, axis=0) if quantile > 0 else z.max(axis=0)
    return {"lower": lower, "upper": upper, "mean": z.mean(axis=0), "std": np.maximum(z.std(axis=0, ddof=1), 1e-12)}


class LatentModel(abc.ABC):
    """Abstract latent model; see the module docstring for the contract."""

    name: str
    backend: str
    crop_size: int
    layout: str = "dlib5"
    align_scale: float = 1.0

    @property
    @abc.abstractmethod
    def dim(self) -> int: ...

    # Public bounds and statistics: backends set ``_lower``, ``_upper``, ``_mean``, ``_std``
    # (float64 [dim]) when they load.
    _lower: np.ndarray
    _upper: np.ndarray
    _mean: np.ndarray
    _std: np.ndarray

    @property
    def lower(self) -> np.ndarray:
        return self._lower

    @property
    def upper(self) -> np.ndarray:
        return self._upper

    @property
    def mean(self) -> np.ndarray:
        return self._mean

    @property
    def std(self) -> np.ndarray:
        return self._std

    @property
    @abc.abstractmethod
    def fingerprint(self) -> str: ...

    @property
    @abc.abstractmethod
    def card(self) -> dict[str, Any]: ...

    @abc.abstractmethod
    def encode(self, crops: np.ndarray) -> np.ndarray: ...

    @abc.abstractmethod
    def decode(self, z: np.ndarray) -> np.ndarray: ...

    # -- helpers shared by all backends -------------------------------------------------

    def clip(self, z: np.ndarray) -> np.ndarray:
        """Codes clipped to the public bounds (float64)."""
        return np.clip(np.asarray(z, dtype=np.float64), self.lower, self.upper)

    def mask(self, feather: float = 0.06) -> np.ndarray:
        """Soft face oval in this model's crop frame (see :func:`face_mask`)."""
        return face_mask(self.crop_size, self.layout, self.align_scale, feather)

    def check_crops(self, crops: np.ndarray) -> np.ndarray:
        crops = np.asarray(crops)
        s = self.crop_size
        if crops.ndim != 4 or crops.shape[1:] != (s, s, 3):
            raise ValueError(f"{self.name}: crops must be [n, {s}, {s}, 3], got {list(crops.shape)}")
        if crops.dtype != np.uint8:
            raise ValueError(f"{self.name}: crops must be uint8, got {crops.dtype}")
        return crops

    def check_codes(self, z: np.ndarray) -> np.ndarray:
        z = np.asarray(z, dtype=np.float64)
        if z.ndim != 2 or z.shape[1] != self.dim:
            raise ValueError(f"{self.name}: codes must be [n, {self.dim}], got {list(z.shape)}")
        if not np.all(np.isfinite(z)):
            raise ValueError(f"{self.name}: codes must be finite")
        return z

    def __repr__(self) -> str:
        return (f"{type(self).__name__}(name={self.name!r}, crop_size={self.crop_size}, dim={self.dim}, "
                f"layout={self.layout!r}, align_scale={self.align_scale}, fingerprint={self.fingerprint[:12]})")

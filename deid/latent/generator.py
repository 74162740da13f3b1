"""The ``generator`` latent kind: a face generator z -> w -> image, with public w statistics.

Contract:

* A generator backend is any object with this duck-typed surface (a ``torch.nn.Module`` for
  the PyTorch ports; :mod:`deid.latent.mobilestylegan`'s OpenVINO runtime has the same one):
  attributes ``z_dim, w_dim, num_ws, resolution``; ``mapping(z: Tensor[N, z_dim]) ->
  Tensor[N, w_dim]``; ``synthesis(ws: Tensor[N, num_ws, w_dim]) -> Tensor[N, 3, R, R]``, RGB in
  [-1, 1] (``R = resolution``). ``num_ws`` is the number of style inputs (w+: one w per
  modulated layer, in forward order: coarse to fine); a plain w is ``ws = w`` on every layer
  (:meth:`GeneratorModel.broadcast`). Optional: ``device`` (a torch device or string),
  ``differentiable`` (``synthesis`` keeps the autograd graph), ``ws_layers`` (a name per w+
  layer, for the card).
* :class:`GeneratorModel` wraps one as a :class:`deid.latent.base.LatentModel` whose latent
  is w (``dim = w_dim``): ``decode(w)`` draws the face of each w on all layers (``decode_ws``
  takes w+), ``encode`` is refused (a generator alone has no encoder: methods that need one
  declare ``Needs(latent="any")`` and are refused a generator at validation, see
  :func:`deid.latent.registry.latent_kinds`). Images are uint8 ``[n, crop_size, crop_size,
  3]`` RGB, ``crop_size`` = ``resolution`` unless the model is built smaller (resized with
  area interpolation).
* Public statistics of w, computed once from the generator itself (:class:`WStats`): the
  mapping of ``samples`` draws of z ~ N(0, I) (a fixed seed: a fit, not a privacy mechanism;
  nothing of any record goes in, so they are public by construction): per-dimension mean,
  std (ddof 1) and ``quantile`` / ``1 - quantile`` quantiles (the model's ``mean``, ``std``,
  ``lower``, ``upper``), and the principal components of w (rows orthonormal, by descending
  variance, signs fixed: largest-magnitude entry positive) with each component's std.
  Cached on disk (:func:`stats_path`), keyed by the generator's weights fingerprint, the
  sample count and the seed: loading the cache gives the same numbers bit for bit, and other
  weights never find another model's file (the file records the fingerprint; a mismatch is
  recomputed). An unwritable cache folder only costs the recomputation (a warning).
* Alignment: ``layout = "ffhq"`` (:func:`deid.faces.align.ffhq_estimate`): the face of the
  photo maps to the generated image's frame by a 2x3 similarity built from the face's
  landmarks (68 points when the detector gave them, else its 5 points: :meth:`align`);
  :meth:`mask` is the soft face oval in that frame and :func:`deid.latent.base.paste_back`
  blends a generated face into the photo, as for the other latent models.
* ``fingerprint``: sha256 over the weights fingerprint and the settings that change the
  model's numbers (crop size, alignment scale, statistics' samples, seed and quantile); the
  runtime (OpenVINO or PyTorch) and the device do not enter: they compute the same function.
"""

from __future__ import annotations

import hashlib
import io
import json
import logging
import os
import warnings
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import numpy as np
from fsspec.implementations.local import LocalFileSystem

from deid.io.npz import NpzError, load_npz, save_npz
from deid.io.write import atomic_write
from deid.latent.base import LatentModel

log = logging.getLogger(__name__)

STATS_FORMAT = "deid-generator-wstats/1"
#: env var naming deid's cache folder (generator statistics live in ``<it>/generator-stats``)
CACHE_ENV = "DEID_CACHE_DIR"


def cache_root() -> Path:
    """deid's cache folder: ``$DEID_CACHE_DIR``, else ``$XDG_CACHE_HOME/deid``, else ``~/.cache/deid``."""
    env = os.environ.get(CACHE_ENV)
    if env:
        return Path(env).expanduser()
    xdg = os.environ.get("XDG_CACHE_HOME")
    return (Path(xdg).expanduser() if xdg else Path.home() / ".cache") / "deid"


def stats_path(weights_fingerprint: str, samples: int, seed: int, cache_dir: str | os.PathLike | None = None) -> Path:
    """Where the w statistics of a generator are cached."""
    root = Path(cache_dir).expanduser() if cache_dir else cache_root() / "generator-stats"
    return root / f"wstats-{weights_fingerprint[:32]}-n{int(samples)}-seed{int(seed)}.npz"


@dataclass(frozen=True)
class WStats:
    """Public statistics of a generator's w (see the module docstring)."""

    mean: np.ndarray            # float64 [w_dim]
    std: np.ndarray             # float64 [w_dim], ddof 1
    lower: np.ndarray           # float64 [w_dim], the quantile
    upper: np.ndarray           # float64 [w_dim], 1 - quantile
    components: np.ndarray      # float64 [w_dim, w_dim]: rows = principal axes, by descending variance
    component_std: np.ndarray   # float64 [w_dim]
    samples: int
    seed: int
    quantile: float
    weights_fingerprint: str

    @property
    def explained(self) -> np.ndarray:
        """Cumulative fraction of the variance of w explained by the leading components."""
        v = self.component_std ** 2
        return np.cumsum(v) / v.sum()

    def to_pca(self, w: np.ndarray) -> np.ndarray:
        """Coordinates of ``w`` ``[n, w_dim]`` (or w+ ``[n, L, w_dim]``) on the principal axes."""
        return (np.asarray(w, dtype=np.float64) - self.mean) @ self.components.T

    def from_pca(self, c: np.ndarray) -> np.ndarray:
        return self.mean + np.asarray(c, dtype=np.float64) @ self.components

    def to_bytes(self) -> bytes:
        meta = {"format": STATS_FORMAT, "samples": self.samples, "seed": self.seed, "quantile": self.quantile,
                "weights_fingerprint": self.weights_fingerprint}
        buf = io.BytesIO()
        np.savez(buf, mean=self.mean, std=self.std, lower=self.lower, upper=self.upper, components=self.components,
                 component_std=self.component_std,
                 meta=np.frombuffer(json.dumps(meta, sort_keys=True).encode(), dtype=np.uint8))
        return buf.getvalue()

    @classmethod
    def from_bytes(cls, data: bytes) -> "WStats":
        with np.load(io.BytesIO(data), allow_pickle=False) as z:
            arrs = {k: z[k] for k in z.files}
        meta = json.loads(arrs.pop("meta").tobytes().decode())
        if meta.get("format") != STATS_FORMAT:
            raise ValueError(f"not a {STATS_FORMAT} file")
        return cls(**{k: np.asarray(v, dtype=np.float64) for k, v in arrs.items()}, samples=int(meta["samples"]),
                   seed=int(meta["seed"]), quantile=float(meta["quantile"]),
                   weights_fingerprint=str(meta["weights_fingerprint"]))


def fit_stats(w: np.ndarray, *, seed: int, quantile: float, weights_fingerprint: str) -> WStats:
    """:class:`WStats` of mapped samples ``w`` ``[n, w_dim]``."""
    w = np.asarray(w, dtype=np.float64)
    if w.ndim != 2 or len(w) < 2:
        raise ValueError("need mapped samples [n >= 2, w_dim]")
    mean = w.mean(axis=0)
    cov = np.cov(w, rowvar=False)
    var, vec = np.linalg.eigh(cov)
    order = np.argsort(var)[::-1]
    var, vec = np.clip(var[order], 0.0, None), vec[:, order].T
    sign = np.sign(vec[np.arange(len(vec)), np.abs(vec).argmax(axis=1)])
    vec = vec * np.where(sign == 0, 1.0, sign)[:, None]
    return WStats(mean=mean, std=np.maximum(w.std(axis=0, ddof=1), 1e-12),
                  lower=np.quantile(w, quantile, axis=0), upper=np.quantile(w, 1 - quantile, axis=0),
                  components=vec, component_std=np.sqrt(var), samples=len(w), seed=int(seed),
                  quantile=float(quantile), weights_fingerprint=weights_fingerprint)


def load_or_compute_stats(weights_fingerprint: str, mapping, z_dim: int, *, samples: int, seed: int = 0,
                          quantile: float = 0.005, cache_dir: str | os.PathLike | None = None,
                          batch: int = 1000) -> tuple[WStats, bool]:
    """``(stats, computed)``: from the cache when it holds this generator's, else computed
    with ``mapping`` (numpy z ``[n, z_dim]`` float32 -> w ``[n, w_dim]``) and cached."""
    path = stats_path(weights_fingerprint, samples, seed, cache_dir)
    if path.is_file():
        try:
            st = WStats.from_bytes(path.read_bytes())
            if (st.weights_fingerprint, st.samples, st.seed) == (weights_fingerprint, samples, seed) \
                    and st.quantile == quantile:
                return st, False
            log.info("%s: statistics of other weights or settings; recomputing", path)
        except (ValueError, OSError, KeyError) as exc:
            log.warning("%s: unreadable generator statistics (%s); recomputing", path, exc)
    z = np.random.default_rng(seed).standard_normal((samples, z_dim)).astype(np.float32)
    w = np.concatenate([np.asarray(mapping(z[a:a + batch]), dtype=np.float64) for a in range(0, samples, batch)])
    st = fit_stats(w, seed=seed, quantile=quantile, weights_fingerprint=weights_fingerprint)
    try:
        path.parent.mkdir(parents=True, exist_ok=True)
        atomic_write(LocalFileSystem(), str(path), st.to_bytes())
    except OSError as exc:
        warnings.warn(f"generator statistics not cached ({path}: {exc}); they are recomputed at every load",
                      stacklevel=2)
    return st, True


def _device_of(generator):
    import torch

    dev = getattr(generator, "device", None)
    if dev is not None:
        return torch.device(dev)
    if isinstance(generator, torch.nn.Module):
        for t in list(generator.parameters()) + list(generator.buffers()):
            return t.device
    return torch.device("cpu")


class GeneratorModel(LatentModel):
    """A face generator as a latent model of kind ``generator``; see the module docstring."""

    layout = "ffhq"

    def __init__(self, generator: Any, *, name: str, backend: str, weights_fingerprint: str,
                 card: dict[str, Any] | None = None, crop_size: int | None = None, align_scale: float = 1.0,
                 stats_samples: int = 10000, stats_seed: int = 0, quantile: float = 0.005,
                 cache_dir: str | os.PathLike | None = None, batch_size: int = 4, torch_factory=None):
        for attr in ("z_dim", "w_dim", "num_ws", "resolution", "mapping", "synthesis"):
            if not hasattr(generator, attr):
                raise TypeError(f"{name}: the generator has no {attr!r} (needs z_dim, w_dim, num_ws, resolution, "
                                "mapping(z), synthesis(ws))")
        self.generator = generator
        self._torch_factory = torch_factory
        self._differentiable: dict[str, Any] = {}
        self.name, self.backend = name, backend
        self.z_dim, self.w_dim = int(generator.z_dim), int(generator.w_dim)
        self.num_ws, self.resolution = int(generator.num_ws), int(generator.resolution)
        self.crop_size = int(crop_size or self.resolution)
        self.align_scale = float(align_scale)
        self.batch_size = max(1, int(batch_size))
        self.device = _device_of(generator)
        self.weights_fingerprint = weights_fingerprint
        #: whether this load computed the statistics (False: read from the cache)
        self.stats_computed: bool
        self.stats, self.stats_computed = load_or_compute_stats(weights_fingerprint, self.map, self.z_dim,
                                                     samples=int(stats_samples), seed=int(stats_seed),
                                                     quantile=float(quantile), cache_dir=cache_dir)
        st = self.stats
        if not np.all(st.lower < st.upper):
            raise ValueError(f"{name}: degenerate w statistics (lower >= upper in some dimension)")
        self._lower, self._upper, self._mean, self._std = st.lower, st.upper, st.mean, st.std
        h = hashlib.sha256()
        h.update(f"weights={weights_fingerprint}\ncrop={self.crop_size} scale={self.align_scale:g} "
                 f"stats={st.samples},{st.seed},{st.quantile:g}\n".encode())
        self._fp = h.hexdigest()
        self._card = {
            **(card or {}),
            "name": name, "backend": backend, "kind": "generator", "z_dim": self.z_dim, "w_dim": self.w_dim,
            "num_ws": self.num_ws, "resolution": self.resolution, "crop_size": self.crop_size, "layout": self.layout,
            "align_scale": self.align_scale, "weights_fingerprint": weights_fingerprint,
            "w_stats": {"samples": st.samples, "seed": st.seed, "quantile": st.quantile,
                        "cache": str(stats_path(weights_fingerprint, st.samples, st.seed, cache_dir)),
                        "explained_variance_at": {str(k): round(float(st.explained[k - 1]), 4)
                                                  for k in (8, 32, 128, 512) if k <= self.w_dim}},
            "ws_layers": list(getattr(generator, "ws_layers", []) or []),
            "device": str(self.device),
        }

    # -- LatentModel
    @property
    def dim(self) -> int:
        return self.w_dim

    @property
    def fingerprint(self) -> str:
        return self._fp

    @property
    def card(self) -> dict[str, Any]:
        return json.loads(json.dumps(self._card))

    def encode(self, crops: np.ndarray) -> np.ndarray:
        raise NotImplementedError(f"{self.name} is a generator without an encoder: it draws faces from w "
                                  "(decode, sample_w) but cannot encode a photo; methods that encode faces need "
                                  "a latent model with an encoder (pca, torchscript)")

    def decode(self, z: np.ndarray) -> np.ndarray:
        """uint8 faces ``[n, crop_size, crop_size, 3]`` of ``w`` ``[n, w_dim]`` (on every layer)."""
        w = self.check_codes(z)
        return self.decode_ws(self.broadcast(w))

    def pca_bounds(self) -> tuple[np.ndarray, np.ndarray]:
        """``(lower, upper)`` float64 ``[w_dim]``: the ``quantile`` / ``1 - quantile`` quantiles of
        the coordinates of the public mapped samples on the principal axes (:meth:`WStats.to_pca`):
        the same samples as the statistics (seed, count), so public by construction. Cached
        beside the statistics (``...-pca-q<quantile>.npz``) so that every process on a machine
        gets the same numbers bit for bit (a DP release's sensitivity is computed from them)."""
        if getattr(self, "_pca_bounds", None) is not None:
            return self._pca_bounds
        st = self.stats
        base = Path(self._card["w_stats"]["cache"])
        path = base.with_name(f"{base.stem}-pca-q{st.quantile:g}.npz")
        lo = hi = None
        if path.is_file():
            try:
                z, _ = load_npz(path, "generator PCA bounds", required=("lower", "upper", "weights_fingerprint"))
                if str(z["weights_fingerprint"]) == self.weights_fingerprint:
                    lo, hi = np.asarray(z["lower"], np.float64), np.asarray(z["upper"], np.float64)
            except NpzError as exc:
                log.warning("%s; recomputing", exc)
        if lo is None:
            z = np.random.default_rng(st.seed).standard_normal((st.samples, self.z_dim)).astype(np.float32)
            c = st.to_pca(np.concatenate([self.map(z[a:a + 1000]) for a in range(0, st.samples, 1000)]))
            lo, hi = np.quantile(c, st.quantile, axis=0), np.quantile(c, 1 - st.quantile, axis=0)
            try:
                path.parent.mkdir(parents=True, exist_ok=True)
                save_npz(path, {"lower": lo, "upper": hi, "weights_fingerprint": np.str_(self.weights_fingerprint)})
            except OSError as exc:
                warnings.warn(f"generator PCA bounds not cached ({path}: {exc})", stacklevel=2)
        # axes the samples do not span (fewer samples than w_dim): a nominal width, so that the
        # bounds stay valid; only noised axes enter a sensitivity, and those are the leading ones
        flat = ~(hi - lo > 1e-9)
        lo, hi = np.where(flat, lo - 1e-9, lo), np.where(flat, hi + 1e-9, hi)
        self._pca_bounds = (lo, hi)
        return self._pca_bounds

    # -- the generator
    def broadcast(self, w: np.ndarray) -> np.ndarray:
        """w ``[n, w_dim]`` -> w+ ``[n, num_ws, w_dim]`` (the same w on every layer)."""
        w = np.asarray(w)
        return np.repeat(w[:, None, :], self.num_ws, axis=1)

    def map(self, z: np.ndarray) -> np.ndarray:
        """w ``float64 [n, w_dim]`` of z ``[n, z_dim]``."""
        import torch

        z = np.asarray(z, dtype=np.float32)
        if z.ndim != 2 or z.shape[1] != self.z_dim:
            raise ValueError(f"{self.name}: z must be [n, {self.z_dim}], got {list(z.shape)}")
        if not len(z):
            return np.zeros((0, self.w_dim))
        with torch.no_grad():
            w = self.generator.mapping(torch.from_numpy(z).to(self.device))
        return w.detach().double().cpu().numpy().reshape(len(z), self.w_dim)

    def synthesize(self, ws: np.ndarray) -> np.ndarray:
        """float32 images ``[n, 3, R, R]`` in about [-1, 1] of w+ ``[n, num_ws, w_dim]``, in
        batches of ``batch_size``."""
        import torch

        ws = np.asarray(ws, dtype=np.float32)
        if ws.ndim != 3 or ws.shape[1:] != (self.num_ws, self.w_dim):
            raise ValueError(f"{self.name}: ws must be [n, {self.num_ws}, {self.w_dim}], got {list(ws.shape)}")
        if not np.all(np.isfinite(ws)):
            raise ValueError(f"{self.name}: ws must be finite")
        out = [np.zeros((0, 3, self.resolution, self.resolution), np.float32)]
        with torch.no_grad():
            for a in range(0, len(ws), self.batch_size):
                img = self.generator.synthesis(torch.from_numpy(ws[a:a + self.batch_size]).to(self.device))
                out.append(img.detach().float().cpu().numpy())
        return np.concatenate(out)

    def decode_ws(self, ws: np.ndarray) -> np.ndarray:
        """uint8 faces ``[n, crop_size, crop_size, 3]`` of w+ ``[n, num_ws, w_dim]``."""
        return self.to_uint8(self.synthesize(ws))

    def to_uint8(self, images: np.ndarray) -> np.ndarray:
        """``[n, 3, R, R]`` in [-1, 1] -> uint8 ``[n, crop_size, crop_size, 3]`` (clipped, rounded;
        area-resized to ``crop_size`` when it is not ``R``)."""
        x = np.clip((np.asarray(images, dtype=np.float32).transpose(0, 2, 3, 1) + 1.0) * 127.5 + 0.5, 0, 255)
        x = x.astype(np.uint8)
        if self.crop_size != self.resolution and len(x):
            import cv2

            x = np.stack([cv2.resize(i, (self.crop_size, self.crop_size), interpolation=cv2.INTER_AREA) for i in x])
        return x.reshape(len(x), self.crop_size, self.crop_size, 3)

    def sample_z(self, n: int, rng: np.random.Generator) -> np.ndarray:
        return rng.standard_normal((int(n), self.z_dim)).astype(np.float32)

    def sample_w(self, n: int, rng: np.random.Generator, psi: float = 1.0) -> np.ndarray:
        """``n`` w of random z, truncated towards the public mean w by ``psi`` (1: none)."""
        w = self.map(self.sample_z(n, rng))
        return self.mean + float(psi) * (w - self.mean)

    def generate(self, n: int, rng: np.random.Generator, psi: float = 1.0) -> np.ndarray:
        """``n`` uint8 faces of strangers."""
        return self.decode(self.sample_w(n, rng, psi))

    # -- the photo <-> the generated image
    def matrix(self, face) -> np.ndarray:
        """The 2x3 photo -> crop matrix of a detected face (:class:`deid.faces.types.Face`):
        from its 68 points when it has them, else its 5 (``dlib5`` or ``arcface5``)."""
        from deid.faces.align import ffhq_estimate

        if getattr(face, "landmarks68", None) is not None:
            return ffhq_estimate(face.landmarks68, self.crop_size, "dlib68", self.align_scale)
        return ffhq_estimate(face.landmarks5, self.crop_size, face.landmark_layout, self.align_scale)

    def align(self, rgb: np.ndarray, face) -> tuple[np.ndarray, np.ndarray]:
        """``(crop, M)``: the face of the photo in the generated image's frame."""
        import cv2

        m = self.matrix(face)
        s = self.crop_size
        return cv2.warpAffine(rgb, m, (s, s), flags=cv2.INTER_LINEAR, borderMode=cv2.BORDER_REFLECT), m

    def torch_generator(self):
        """The backend object (for gradients: a ``torch.nn.Module`` whose ``synthesis`` keeps
        the autograd graph; check ``getattr(model.torch_generator(), "differentiable", False)``)."""
        return self.generator

    def differentiable(self, device: Any = "cpu"):
        """A generator whose ``synthesis`` keeps the autograd graph, on ``device``: the backend
        object itself when it is one and already there, else the backend's PyTorch port
        (``torch_factory(device)``, built once per device and kept). Latent search
        (:mod:`deid.latent.search`) runs on it; decoding stays on the backend object."""
        import torch

        dev = torch.device(device)
        key = str(dev)
        if key in self._differentiable:
            return self._differentiable[key]
        gen = self.generator
        if getattr(gen, "differentiable", False) and _device_of(gen) == dev:
            out = gen
        elif self._torch_factory is not None:
            out = self._torch_factory(key)
        elif getattr(gen, "differentiable", False) and isinstance(gen, torch.nn.Module):
            out = gen.to(dev)
        else:
            raise ValueError(f"{self.name}: no differentiable generator (its backend gives no PyTorch port); "
                             "latent search needs gradients through the synthesis network")
        for prm in getattr(out, "parameters", lambda: [])():
            prm.requires_grad_(False)
        self._differentiable[key] = out
        return out

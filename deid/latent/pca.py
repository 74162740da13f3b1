"""Eigenfaces: a PCA latent model fitted on a public reference set of face photos.

Contract:

* Fitting (:func:`fit_pca`) lists a folder (any fsspec URI), decodes every image with deid's
  safe decoder, detects faces with deid's dlib HOG detector and 5-point landmarks, aligns
  them with :func:`deid.faces.align.align` (``crop_size``, ``layout="dlib5"``,
  ``align_scale``), and fits PCA on the RGB crops scaled to [0, 1]. Which faces of a photo
  are used is ``faces``: ``"all"`` (every face whose box is at least ``min_face`` px) or
  ``"largest"``.
* Codes are PCA coordinates of ``crop / 255 - mean_face`` on orthonormal components (pixel
  values in [0, 1]; component j has variance ``var[j]`` on the fitting set, descending).
  ``decode`` is ``mean_face + z @ components``, rounded and clipped to uint8.
* Public bounds: per component, the ``q`` and ``1 - q`` quantiles (default q = 0.005: the
  0.5% / 99.5% quantiles) of the codes of the fitting set, computed with the stored
  (float16) components. Quantiles rather than min/max: one odd reference photo must not
  widen the range (and with it the DP noise) for everyone; rather than mean +- c std:
  the code distributions are skewed and heavy-tailed in the first components. About 1% of
  public codes per dimension fall outside and get clipped. ``mean``/``std`` are the mean and
  standard deviation of the same codes.
* ``holdout`` > 0 keeps a deterministic fraction of the files out of the fit (a file is held
  out iff the first 8 hex digits of sha256(relative path) / 16**8 < holdout); the card then
  reports reconstruction RMSE on the held-out faces, measured at fit time.
* The set fingerprint is sha256 over the sorted lines ``"<relative path>\\t<sha256 of the
  file>\\n"`` of the files the model was fitted on: the same files in any folder give the
  same fingerprint; one changed byte gives another. ``source_fingerprint`` covers every
  listed file (fitted and held out).
* File format: one ``.npz`` (a zip written with fixed timestamps, so the same arrays give
  the same bytes) holding ``mean`` (float32 [D]), ``components`` (float16 [k, D]), ``lower``,
  ``upper``, ``code_mean``, ``code_std``, ``var`` (float64 [k]) and ``card`` (UTF-8 JSON as
  uint8). Loading never unpickles. The model's fingerprint is sha256 of the file bytes.

The SVD: exact (eigendecomposition of the Gram matrix of the centred data) up to
``EXACT_MAX_ROWS`` faces; above that a randomized SVD (Halko et al. 2011, 4 power
iterations, fixed seed: this is a fit, not a privacy mechanism) that streams the data in
chunks. Component signs are fixed (largest-magnitude entry positive), so refits agree.
"""

from __future__ import annotations

import hashlib
import io
import json
import posixpath
import shlex
import time
import zipfile
from dataclasses import dataclass, field
from importlib import resources
from typing import Any, Callable, Iterable

import numpy as np

from pydantic import Field

from deid.latent.base import LatentModel, bounds_from_codes, read_uri
from deid.latent.registry import DEFAULT_MODEL, LATENT_MODELS, LatentParams
from deid.plugins import Licence, Needs, Plugin, path_field

FORMAT = "deid-latent-pca/1"
BUILTIN_DIR = "models"
BUILTIN_ALIASES = {"eigenfaces": "eigenfaces-64-128"}
IMAGE_EXTENSIONS = (".jpg", ".jpeg", ".png", ".webp", ".tif", ".tiff", ".bmp", ".gif", ".pgm", ".ppm")
EXACT_MAX_ROWS = 6000
DEFAULTS = dict(crop_size=64, n_components=128, align_scale=0.9, quantile=0.005, faces="all", min_face=48.0,
                upsample=1, holdout=0.0)
_ZIP_DATE = (1980, 1, 1, 0, 0, 0)


# -- the model ------------------------------------------------------------------------------


class PCALatentModel(LatentModel):
    """Eigenfaces model. Build with :func:`fit_pca` or :meth:`load`."""

    backend = "pca"

    def __init__(self, *, mean_face: np.ndarray, components: np.ndarray, lower: np.ndarray, upper: np.ndarray,
                 code_mean: np.ndarray, code_std: np.ndarray, var: np.ndarray, card: dict[str, Any],
                 data: bytes | None = None):
        self.card_data = dict(card)
        self.name = str(card.get("name", "eigenfaces"))
        self.crop_size = int(card["crop_size"])
        self.layout = str(card.get("layout", "dlib5"))
        self.align_scale = float(card.get("align_scale", 1.0))
        d = self.crop_size * self.crop_size * 3
        self._components_stored = np.ascontiguousarray(components)
        self._comp = np.ascontiguousarray(components, dtype=np.float32)
        self._mean_face = np.ascontiguousarray(mean_face, dtype=np.float32).reshape(-1)
        k = self._comp.shape[0]
        arrs = {"lower": lower, "upper": upper, "code_mean": code_mean, "code_std": code_std, "var": var}
        arrs = {n: np.asarray(a, dtype=np.float64).reshape(-1) for n, a in arrs.items()}
        if self._comp.ndim != 2 or self._comp.shape[1] != d or self._mean_face.shape != (d,):
            raise ValueError(f"{self.name}: components {list(self._comp.shape)} / mean {list(self._mean_face.shape)} "
                             f"do not match crop_size {self.crop_size} (D = {d})")
        for n, a in arrs.items():
            if a.shape != (k,) or not np.all(np.isfinite(a)):
                raise ValueError(f"{self.name}: {n} must be {k} finite numbers")
        if not np.all(arrs["lower"] < arrs["upper"]):
            raise ValueError(f"{self.name}: lower must be < upper in every dimension")
        if not np.all(arrs["code_std"] > 0):
            raise ValueError(f"{self.name}: code_std must be > 0")
        if int(card.get("dim", k)) != k:
            raise ValueError(f"{self.name}: card says dim {card.get('dim')}, file has {k} components")
        self._lower, self._upper = arrs["lower"], arrs["upper"]
        self._mean, self._std, self.var = arrs["code_mean"], arrs["code_std"], arrs["var"]
        self._data = data
        self._fp: str | None = None

    # -- interface
    @property
    def dim(self) -> int:
        return int(self._comp.shape[0])

    @property
    def card(self) -> dict[str, Any]:
        return dict(self.card_data)

    @property
    def mean_face(self) -> np.ndarray:
        """float32 [H, W, 3] in [0, 1]."""
        return self._mean_face.reshape(self.crop_size, self.crop_size, 3)

    @property
    def fingerprint(self) -> str:
        if self._fp is None:
            self._fp = hashlib.sha256(self.to_bytes()).hexdigest()
        return self._fp

    def encode(self, crops: np.ndarray) -> np.ndarray:
        crops = self.check_crops(crops)
        x = crops.reshape(len(crops), self._mean_face.shape[0]).astype(np.float32) * np.float32(1 / 255.0)
        x -= self._mean_face
        return (x @ self._comp.T).astype(np.float64)

    def decode(self, z: np.ndarray) -> np.ndarray:
        z = self.check_codes(z)
        x = z.astype(np.float32) @ self._comp + self._mean_face
        x = np.clip(np.rint(x * 255.0), 0, 255).astype(np.uint8)
        return x.reshape(len(z), self.crop_size, self.crop_size, 3)

    # -- extras
    def truncated(self, k: int) -> "PCALatentModel":
        """The same model keeping its first ``k`` components. PCA components are nested and
        bounds/statistics are per component, so they carry over unchanged: the result is
        exactly the model ``fit`` would give with ``k`` components (up to rounding). Its card
        names the parent (``truncated_from``: the parent's fingerprint); its fingerprint is
        that of its own canonical file bytes, so the same truncation always has the same one."""
        if not 1 <= k <= self.dim:
            raise ValueError(f"{self.name}: dim must be in 1..{self.dim}, got {k}")
        if k == self.dim:
            return self
        card = {key: v for key, v in self.card_data.items()
                if key not in ("fit_rmse", "holdout_rmse", "clipped_fraction_fit", "clipped_fraction_holdout")}
        card.update(dim=int(k), name=f"eigenfaces-{self.crop_size}-{k}", truncated_from=self.fingerprint,
                    truncated_from_name=self.name)
        tv = self.card_data.get("total_variance")
        if tv:
            card["explained_variance"] = round(float(self.var[:k].sum() / tv), 6)
        card["explained_variance_at"] = {n: v for n, v in self.card_data.get("explained_variance_at", {}).items() if int(n) <= k}
        card["l1_sensitivity"] = float(np.sum(self._upper[:k] - self._lower[:k]))
        card["l2_sensitivity"] = float(np.linalg.norm(self._upper[:k] - self._lower[:k]))
        return PCALatentModel(mean_face=self._mean_face, components=self._components_stored[:k], lower=self._lower[:k],
                              upper=self._upper[:k], code_mean=self._mean[:k], code_std=self._std[:k],
                              var=self.var[:k], card=card)

    def to_bytes(self) -> bytes:
        if self._data is None:
            self._data = _npz_bytes({
                "mean": self._mean_face.astype(np.float32),
                "components": self._components_stored,
                "lower": self._lower, "upper": self._upper,
                "code_mean": self._mean, "code_std": self._std, "var": self.var,
                "card": np.frombuffer(json.dumps(self.card_data, sort_keys=True, indent=1).encode("utf-8"), dtype=np.uint8),
            })
        return self._data

    def save(self, uri: str, storage_options: dict | None = None) -> str:
        """Write the model file to ``uri`` (any fsspec URI); returns its fingerprint."""
        import fsspec

        data = self.to_bytes()
        with fsspec.open(uri, "wb", **(storage_options or {})) as f:
            f.write(data)
        return self.fingerprint

    @classmethod
    def from_bytes(cls, data: bytes, source: str = "<bytes>") -> "PCALatentModel":
        try:
            with np.load(io.BytesIO(data), allow_pickle=False) as z:
                arrs = {k: z[k] for k in z.files}
        except (ValueError, OSError, zipfile.BadZipFile) as exc:
            raise ValueError(f"{source}: not a deid PCA model file ({exc})") from None
        need = {"mean", "components", "lower", "upper", "code_mean", "code_std", "var", "card"}
        if not need <= set(arrs):
            raise ValueError(f"{source}: not a deid PCA model file (missing {sorted(need - set(arrs))})")
        card = json.loads(arrs["card"].tobytes().decode("utf-8"))
        if card.get("format") != FORMAT:
            raise ValueError(f"{source}: unsupported model format {card.get('format')!r} (expected {FORMAT})")
        return cls(mean_face=arrs["mean"], components=arrs["components"], lower=arrs["lower"], upper=arrs["upper"],
                   code_mean=arrs["code_mean"], code_std=arrs["code_std"], var=arrs["var"], card=card, data=data)

    @classmethod
    def load(cls, uri: str, storage_options: dict | None = None, dim: int | None = None) -> "PCALatentModel":
        """Load from ``builtin:<name>`` (package data; ``builtin:eigenfaces`` is the default
        model) or any fsspec URI / local path; ``dim`` keeps the leading components only
        (:meth:`truncated`)."""
        m = cls._load(uri, storage_options)
        return m if dim is None else m.truncated(int(dim))

    @classmethod
    def _load(cls, uri: str, storage_options: dict | None) -> "PCALatentModel":
        if uri.startswith("builtin:"):
            name = uri[len("builtin:"):]
            name = BUILTIN_ALIASES.get(name, name)
            if name not in builtin_names():
                raise FileNotFoundError(f"{uri}: no built-in latent model {name!r} (have: {', '.join(builtin_names())})")
            return cls.from_bytes(read_uri(f"builtin:{name}.npz"), uri)
        return cls.from_bytes(read_uri(uri, storage_options), uri)


def builtin_names() -> list[str]:
    root = resources.files("deid.latent") / BUILTIN_DIR
    names = sorted(p.name[:-4] for p in root.iterdir() if p.name.endswith(".npz")) if root.is_dir() else []
    return names + sorted(BUILTIN_ALIASES)


def _npz_bytes(arrays: dict[str, np.ndarray]) -> bytes:
    buf = io.BytesIO()
    with zipfile.ZipFile(buf, "w", compression=zipfile.ZIP_DEFLATED) as zf:
        for name in sorted(arrays):
            info = zipfile.ZipInfo(f"{name}.npy", date_time=_ZIP_DATE)
            info.compress_type = zipfile.ZIP_DEFLATED
            info.external_attr = 0o644 << 16
            with zf.open(info, "w") as f:
                np.lib.format.write_array(f, np.ascontiguousarray(arrays[name]), allow_pickle=False)
    return buf.getvalue()


# -- the reference set ----------------------------------------------------------------------


def in_holdout(rel_path: str, holdout: float) -> bool:
    """Deterministic split: the same file is always on the same side."""
    if holdout <= 0:
        return False
    return int(hashlib.sha256(rel_path.encode("utf-8")).hexdigest()[:8], 16) / 16**8 < holdout


def set_fingerprint(entries: Iterable[tuple[str, str]]) -> str:
    """sha256 over sorted ``(relative path, file sha256)`` pairs."""
    h = hashlib.sha256()
    for rel, sha in sorted(entries):
        h.update(f"{rel}\t{sha}\n".encode("utf-8"))
    return h.hexdigest()


@dataclass
class ReferenceScan:
    """What detection found in a reference folder: plain data, cheap to cache.

    ``faces`` rows are ``(file index, box x0 y0 x1 y1, landmarks5 flattened)``.
    """

    root: str
    files: list[str]                     # relative paths, sorted
    sha256: list[str]
    failed: list[str] = field(default_factory=list)     # undecodable files (relative paths)
    face_file: np.ndarray = field(default_factory=lambda: np.zeros(0, np.int64))
    face_box: np.ndarray = field(default_factory=lambda: np.zeros((0, 4), np.float64))
    face_lm5: np.ndarray = field(default_factory=lambda: np.zeros((0, 5, 2), np.float64))
    detector: str = ""

    def fingerprint(self, idx: Iterable[int] | None = None) -> str:
        idx = range(len(self.files)) if idx is None else idx
        return set_fingerprint((self.files[i], self.sha256[i]) for i in idx)

    def save(self, path: str) -> None:
        np.savez(path, root=np.array(self.root), files=np.array(self.files), sha256=np.array(self.sha256),
                 failed=np.array(self.failed, dtype=str), face_file=self.face_file, face_box=self.face_box,
                 face_lm5=self.face_lm5, detector=np.array(self.detector))

    @classmethod
    def load(cls, path: str) -> "ReferenceScan":
        with np.load(path, allow_pickle=False) as z:
            return cls(root=str(z["root"]), files=[str(s) for s in z["files"]], sha256=[str(s) for s in z["sha256"]],
                       failed=[str(s) for s in z["failed"]], face_file=z["face_file"], face_box=z["face_box"],
                       face_lm5=z["face_lm5"], detector=str(z["detector"]))


def list_images(images_dir: str, storage_options: dict | None = None) -> tuple[Any, str, list[str]]:
    """``(fs, root, relative paths)`` of the image files under ``images_dir`` (recursive,
    sorted; names starting with ``.`` skipped)."""
    import fsspec

    fs, root = fsspec.core.url_to_fs(images_dir, **(storage_options or {}))
    root = root.rstrip("/") or "/"
    if not fs.isdir(root):
        raise FileNotFoundError(f"{images_dir}: not a folder")
    rels = []
    for p in fs.find(root):
        rel = posixpath.relpath(p, root)
        if any(part.startswith(".") for part in rel.split("/")):
            continue
        if rel.lower().endswith(IMAGE_EXTENSIONS):
            rels.append(rel)
    return fs, root, sorted(rels)


def _read_rgb(fs, root: str, rel: str) -> tuple[np.ndarray | None, str]:
    from deid.io.decode import DecodeError, decode_image

    data = fs.cat_file(posixpath.join(root, rel))
    sha = hashlib.sha256(data).hexdigest()
    try:
        return decode_image(data, max_pixels=64_000_000, name=rel).rgb, sha
    except DecodeError:
        return None, sha


def scan_reference(images_dir: str, *, faces: str = "all", min_face: float = 48.0, upsample: int = 1,
                   storage_options: dict | None = None, progress: Callable[[int, int], None] | None = None) -> ReferenceScan:
    """Detect faces (dlib HOG, 5-point landmarks) in every image under ``images_dir``."""
    from deid.faces.dlib_backend import DlibDetector

    if faces not in ("all", "largest"):
        raise ValueError("faces must be 'all' or 'largest'")
    fs, root, rels = list_images(images_dir, storage_options)
    if not rels:
        raise FileNotFoundError(f"{images_dir}: no image files ({', '.join(IMAGE_EXTENSIONS)})")
    det = DlibDetector(backend="dlib-hog", upsample=upsample, landmarks=5)
    shas, failed, ff, fb, fl = [], [], [], [], []
    for i, rel in enumerate(rels):
        rgb, sha = _read_rgb(fs, root, rel)
        shas.append(sha)
        if rgb is None:
            failed.append(rel)
            continue
        found = [f for f in det.detect(rgb) if f.size >= min_face]
        if faces == "largest" and found:
            found = [max(found, key=lambda f: f.size)]
        for f in found:
            ff.append(i)
            fb.append(f.box)
            fl.append(f.landmarks5)
        if progress is not None:
            progress(i + 1, len(rels))
    return ReferenceScan(root=images_dir, files=rels, sha256=shas, failed=failed,
                         face_file=np.array(ff, dtype=np.int64), face_box=np.array(fb, dtype=np.float64).reshape(-1, 4),
                         face_lm5=np.array(fl, dtype=np.float64).reshape(-1, 5, 2),
                         detector=f"dlib-hog upsample={upsample} landmarks=5 faces={faces} min_face={min_face:g}")


def align_scan(scan: ReferenceScan, crop_size: int, *, align_scale: float = DEFAULTS["align_scale"],
               layout: str = "dlib5", select: np.ndarray | None = None,
               storage_options: dict | None = None) -> np.ndarray:
    """uint8 [n, crop, crop, 3]: the scan's faces (rows ``select``, default all) aligned."""
    import fsspec

    from deid.faces.align import align

    fs, root = fsspec.core.url_to_fs(scan.root, **(storage_options or {}))
    root = root.rstrip("/") or "/"
    rows = np.arange(len(scan.face_file)) if select is None else np.asarray(select)
    out = np.zeros((len(rows), crop_size, crop_size, 3), dtype=np.uint8)
    cache_i, cache_rgb = -1, None
    for j, r in enumerate(rows):
        fi = int(scan.face_file[r])
        if fi != cache_i:
            cache_rgb, _ = _read_rgb(fs, root, scan.files[fi])
            cache_i = fi
        out[j] = align(cache_rgb, scan.face_lm5[r], crop_size, layout=layout, scale=align_scale)[0]
    return out


# -- the fit --------------------------------------------------------------------------------


def _fix_signs(comp: np.ndarray) -> np.ndarray:
    idx = np.argmax(np.abs(comp), axis=1)
    s = np.sign(comp[np.arange(len(comp)), idx])
    s[s == 0] = 1
    return comp * s[:, None]


def pca_svd(x: np.ndarray, k: int, *, method: str = "auto", seed: int = 0, chunk: int = 1024,
            power_iters: int = 4, oversample: int = 16) -> tuple[np.ndarray, np.ndarray, np.ndarray, float]:
    """PCA of the rows of ``x`` (uint8 or float, [N, D], values scaled by 1/255 if uint8).

    Returns ``(mean float64 [D], components float32 [k, D] orthonormal, var float64 [k],
    total variance float64)``; variances use ``N - 1``.
    """
    n, d = x.shape
    if not 1 <= k <= min(n - 1, d):
        raise ValueError(f"n_components must be in 1..{min(n - 1, d)} for {n} faces of {d} values, got {k}")
    scale = np.float32(1 / 255.0) if x.dtype == np.uint8 else np.float32(1.0)

    def rows(a: int, b: int) -> np.ndarray:
        return x[a:b].astype(np.float32) * scale

    mean = np.zeros(d, dtype=np.float64)
    for a in range(0, n, chunk):
        mean += rows(a, a + chunk).sum(axis=0, dtype=np.float64)
    mean /= n
    mean32 = mean.astype(np.float32)
    total = 0.0
    for a in range(0, n, chunk):
        c = rows(a, a + chunk) - mean32
        total += float(np.einsum("ij,ij->", c, c, dtype=np.float64))
    total /= n - 1
    if method == "auto":
        method = "exact" if n <= EXACT_MAX_ROWS else "randomized"
    if method == "exact":
        xc = x.astype(np.float32) * scale - mean32
        g = (xc @ xc.T).astype(np.float64)
        w, u = np.linalg.eigh(g)
        order = np.argsort(w)[::-1][:k]
        w, u = np.maximum(w[order], 1e-30), u[:, order]
        comp = (u.T.astype(np.float32) @ xc) / np.sqrt(w).astype(np.float32)[:, None]
        comp = comp.astype(np.float64)
        comp /= np.linalg.norm(comp, axis=1, keepdims=True)
        var = w / (n - 1)
    elif method == "randomized":
        rng = np.random.default_rng(seed)
        l = min(k + oversample, min(n, d))

        def xq(q: np.ndarray) -> np.ndarray:  # Xc @ q, q [D, l]
            q32 = q.astype(np.float32)
            mq = mean32 @ q32
            return np.concatenate([rows(a, a + chunk) @ q32 - mq for a in range(0, n, chunk)]).astype(np.float64)

        def xtp(p: np.ndarray) -> np.ndarray:  # Xc^T @ p, p [N, l]
            acc = np.zeros((d, p.shape[1]), dtype=np.float64)
            for a in range(0, n, chunk):
                pa = p[a:a + chunk].astype(np.float32)
                acc += (rows(a, a + chunk).T @ pa) - np.outer(mean32, pa.sum(axis=0))
            return acc

        q, _ = np.linalg.qr(xq(rng.standard_normal((d, l))))
        for _ in range(power_iters):
            q, _ = np.linalg.qr(xtp(q))
            q, _ = np.linalg.qr(xq(q))
        b = xtp(q).T  # [l, D] = Q^T Xc
        _, s, vt = np.linalg.svd(b, full_matrices=False)
        comp, var = vt[:k], s[:k] ** 2 / (n - 1)
    else:
        raise ValueError("method must be auto, exact or randomized")
    comp = _fix_signs(comp).astype(np.float32)
    return mean, comp, np.asarray(var, dtype=np.float64), total


def fit_arrays(crops: np.ndarray, n_components: int, *, quantile: float = DEFAULTS["quantile"],
               card: dict[str, Any] | None = None, method: str = "auto",
               holdout_crops: np.ndarray | None = None) -> PCALatentModel:
    """Fit eigenfaces on aligned uint8 crops [n, s, s, 3] and return the model (components
    stored as float16; bounds and statistics computed with the stored components)."""
    n, s = crops.shape[0], crops.shape[1]
    if crops.shape[1:] != (s, s, 3) or crops.dtype != np.uint8:
        raise ValueError("crops must be uint8 [n, s, s, 3]")
    if not 0.0 <= quantile < 0.5:
        raise ValueError("quantile must be in [0, 0.5)")
    x = crops.reshape(n, -1)
    t0 = time.perf_counter()
    mean, comp, var, total = pca_svd(x, n_components, method=method)
    comp16 = comp.astype(np.float16)
    card = dict(card or {})
    card.update(format=FORMAT, backend="pca", crop_size=int(s), dim=int(n_components), n_faces=int(n),
                components_dtype="float16", pixel_scale="crop/255 in [0,1], RGB, HWC flattened",
                bounds_method=(f"per-component quantiles {quantile:g} / {1 - quantile:g} of the codes of the "
                               f"{n} fitting faces" if quantile > 0 else f"per-component min / max of the codes of the {n} fitting faces"),
                svd=("exact (Gram eigendecomposition)" if (method == "auto" and n <= EXACT_MAX_ROWS) or method == "exact"
                     else "randomized (seed 0, 4 power iterations)"),
                total_variance=float(total))
    card.setdefault("name", f"eigenfaces-{s}-{n_components}")
    provisional = PCALatentModel(mean_face=mean.astype(np.float32), components=comp16,
                                 lower=-np.ones(n_components), upper=np.ones(n_components),
                                 code_mean=np.zeros(n_components), code_std=np.ones(n_components), var=var, card=card)
    z = np.concatenate([provisional.encode(crops[a:a + 512]) for a in range(0, n, 512)])
    b = bounds_from_codes(z, quantile)
    lower, upper = b["lower"], b["upper"]
    card["quantile"] = float(quantile)
    card["explained_variance"] = round(float(var.sum() / total), 6) if total > 0 else 0.0
    cum = np.cumsum(var) / total if total > 0 else np.zeros_like(var)
    card["explained_variance_at"] = {str(k): round(float(cum[k - 1]), 6) for k in (8, 16, 32, 64, 128, 256, 512)
                                    if k <= n_components}
    card["fit_rmse"] = round(_rmse(provisional, crops), 4)
    card["clipped_fraction_fit"] = round(float(np.mean((z < lower) | (z > upper))), 6)
    if holdout_crops is not None and len(holdout_crops):
        card["holdout_rmse"] = round(_rmse(provisional, holdout_crops), 4)
        card["holdout_n_faces"] = int(len(holdout_crops))
        zh = provisional.encode(holdout_crops)
        card["clipped_fraction_holdout"] = round(float(np.mean((zh < lower) | (zh > upper))), 6)
    card["l1_sensitivity"] = float(np.sum(upper - lower))
    card["l2_sensitivity"] = float(np.linalg.norm(upper - lower))
    card["fit_seconds"] = round(time.perf_counter() - t0, 1)
    return PCALatentModel(mean_face=mean.astype(np.float32), components=comp16, lower=lower, upper=upper,
                          code_mean=b["mean"], code_std=b["std"], var=var, card=card)


def _rmse(model: PCALatentModel, crops: np.ndarray) -> float:
    """Per-pixel RMSE (0..255 units) of the plain reconstruction of ``crops``."""
    se, cnt = 0.0, 0
    for a in range(0, len(crops), 512):
        c = crops[a:a + 512]
        r = model.decode(model.encode(c))
        se += float(np.sum((r.astype(np.float64) - c) ** 2))
        cnt += c.size
    return float(np.sqrt(se / max(cnt, 1)))


def fit_command(images_dir: str, out: str | None, crop_size: int, n_components: int, *, align_scale: float,
                quantile: float, faces: str, min_face: float, upsample: int, holdout: float) -> str:
    """The ``deid latent fit`` command line that reproduces a fit (every option spelled out)."""
    return shlex.join(["deid", "latent", "fit", "--images", str(images_dir), "--out", str(out or "MODEL.npz"),
                       "--crop", str(crop_size), "--components", str(n_components), "--align-scale", f"{align_scale:g}",
                       "--quantile", f"{quantile:g}", "--faces", faces, "--min-face", f"{min_face:g}",
                       "--upsample", str(upsample), "--holdout", f"{holdout:g}"])


def fit_pca(images_dir: str, crop_size: int = DEFAULTS["crop_size"], n_components: int = DEFAULTS["n_components"], *,
            out: str | None = None, align_scale: float = DEFAULTS["align_scale"], quantile: float = DEFAULTS["quantile"],
            faces: str = DEFAULTS["faces"], min_face: float = DEFAULTS["min_face"], upsample: int = DEFAULTS["upsample"],
            holdout: float = DEFAULTS["holdout"], name: str | None = None, scan: ReferenceScan | None = None,
            storage_options: dict | None = None, progress: Callable[[int, int], None] | None = None) -> PCALatentModel:
    """Fit eigenfaces on the public reference folder ``images_dir`` and (if ``out``) save it.

    ``scan`` reuses an earlier :func:`scan_reference` of the same folder (same ``faces``,
    ``min_face`` and ``upsample``).
    """
    from deid import __version__

    if scan is None:
        scan = scan_reference(images_dir, faces=faces, min_face=min_face, upsample=upsample,
                              storage_options=storage_options, progress=progress)
    held = np.array([in_holdout(r, holdout) for r in scan.files], dtype=bool)
    fit_files = [i for i in range(len(scan.files)) if not held[i] and scan.files[i] not in scan.failed]
    fit_rows = np.flatnonzero(~held[scan.face_file]) if len(scan.face_file) else np.zeros(0, np.int64)
    ho_rows = np.flatnonzero(held[scan.face_file]) if len(scan.face_file) else np.zeros(0, np.int64)
    if len(fit_rows) < 2:
        raise ValueError(f"{images_dir}: only {len(fit_rows)} faces found to fit on")
    crops = align_scan(scan, crop_size, align_scale=align_scale, select=fit_rows, storage_options=storage_options)
    ho = align_scan(scan, crop_size, align_scale=align_scale, select=ho_rows, storage_options=storage_options) if len(ho_rows) else None
    with_face = set(scan.face_file[fit_rows].tolist())
    card = {
        "name": name or f"eigenfaces-{crop_size}-{n_components}",
        "fitted_on": str(images_dir),
        "set_fingerprint": scan.fingerprint(fit_files),
        "set_fingerprint_method": "sha256 over sorted '<relative path>\\t<file sha256>\\n' of the fitted files",
        "source_fingerprint": scan.fingerprint(),
        "n_files": len(scan.files),
        "n_images": len(fit_files),
        "n_images_with_face": len(with_face),
        "n_undecodable": len(scan.failed),
        "holdout": float(holdout),
        "holdout_n_images": int(held.sum()),
        "layout": "dlib5",
        "align_scale": float(align_scale),
        "detector": scan.detector,
        "fit_command": fit_command(images_dir, out, crop_size, n_components, align_scale=align_scale, quantile=quantile,
                                   faces=faces, min_face=min_face, upsample=upsample, holdout=holdout),
        "deid_version": __version__,
    }
    model = fit_arrays(crops, n_components, quantile=quantile, card=card, holdout_crops=ho)
    if out is not None:
        model.save(out, storage_options=storage_options if "://" in str(out) else None)
    return model


# -- the plug-in -----------------------------------------------------------------------------


class PCAParams(LatentParams):
    uri: str = path_field(DEFAULT_MODEL, description="model file (any fsspec URI) or builtin:<name>")
    dim: int | None = Field(None, ge=1, description="keep only the leading components (null: all)")


LATENT_MODELS.register(Plugin(
    kind="latent", name="pca", params=PCAParams,
    summary="eigenfaces fitted on a public reference set (deid latent fit-pca); CPU, a few MB; "
            "builtin:eigenfaces ships with deid",
    factory=lambda p: PCALatentModel.load(p.uri, p.storage_options, dim=p.dim),
    licence=Licence(code="Apache-2.0 (deid)", weights="builtin:eigenfaces: fitted by deid on lfw-public-ref "
                    "(LFW, research use; docs/latent.md); your own files: yours"),
    needs=Needs(landmarks="dlib5"),
    module=__name__,
))

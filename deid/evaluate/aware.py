"""The anonymization-aware attacker's training data and fitted maps.

An attacker who knows the method and params (the audit states both) anonymizes a PUBLIC
labelled set with them and learns a map from embeddings of anonymized faces to embeddings
of their originals ("A False Sense of Privacy", Hanisch et al. 2023). The ``aware`` attack
(:mod:`deid.evaluate.attacks`) then identifies the user's released faces through that map.

* public set: the images under ``public_ref`` (``--public-ref``, else ``$DEID_PUBLIC_REF``; e.g.
  ``../shared/data/lfw-public-ref``), never the user's data; ``n`` of them, evenly spaced over
  the sorted names. Each is detected with the run's detector, every face found is
  anonymized with the group's method and params (latent methods need the run's manifest for
  their model), and the largest face is embedded, original and anonymized, by every recognizer
  at the original's geometry: the same protocol as the user's records;
* maps (per recognizer): ``linear`` (ridge regression, alpha by leave-one-out CV) and ``mlp``
  (one hidden layer of 256 ReLU units, L2 1e-2, on standardised inputs and targets,
  scikit-learn; early stopping from 100 training faces),
  fitted on 80% of the public faces; the other 20% give ``holdout_distance`` (mean distance of
  a mapped face to its original) beside ``holdout_distance_unmapped``;
* cache: the fitted weights (never the user's data: public embeddings only) in
  ``<deid cache>/evaluate-aware/<key>.npz``, ``key`` = sha256 of method, params, latent
  section, detector, recognizer fingerprint and the public set's names and sizes. Plain arrays:
  nothing is unpickled.
"""

from __future__ import annotations

import hashlib
import json
import logging
import posixpath
import warnings
from dataclasses import dataclass
from pathlib import Path

import fsspec
import numpy as np

log = logging.getLogger("deid.evaluate")

ENV = "DEID_PUBLIC_REF"
DEFAULT_N = 300
IMAGE_EXT = (".jpg", ".jpeg", ".png", ".webp", ".bmp", ".tif", ".tiff", ".pgm", ".ppm")
HOLDOUT = 0.2
_VERSION = "aware/2"


class Unavailable(Exception):
    """The aware attacker cannot run for this group: the message says why."""


@dataclass
class LinearMap:
    W: np.ndarray
    b: np.ndarray

    def apply(self, x: np.ndarray) -> np.ndarray:
        return x @ self.W + self.b


@dataclass
class MLPMap:
    mu: np.ndarray
    sd: np.ndarray
    W1: np.ndarray
    b1: np.ndarray
    W2: np.ndarray
    b2: np.ndarray
    ymu: np.ndarray
    ysd: np.ndarray

    def apply(self, x: np.ndarray) -> np.ndarray:
        h = np.maximum(((x - self.mu) / self.sd) @ self.W1 + self.b1, 0.0)
        return (h @ self.W2 + self.b2) * self.ysd + self.ymu


def fit_maps(anon: np.ndarray, orig: np.ndarray, seed: int = 0) -> tuple[dict, dict]:
    """``({"linear": LinearMap, "mlp": MLPMap}, fit report)`` from public pairs (row i: the same face)."""
    from sklearn.exceptions import ConvergenceWarning
    from sklearn.linear_model import RidgeCV
    from sklearn.neural_network import MLPRegressor

    n = len(anon)
    if n < 10:
        raise Unavailable(f"only {n} public faces were usable (at least 10 are needed)")
    idx = np.random.default_rng(seed).permutation(n)
    n_hold = max(2, int(round(HOLDOUT * n)))
    hold, train = idx[:n_hold], idx[n_hold:]
    ridge = RidgeCV(alphas=np.logspace(-3, 3, 13)).fit(anon[train], orig[train])
    linear = LinearMap(W=np.asarray(ridge.coef_, dtype=np.float64).T, b=np.asarray(ridge.intercept_, dtype=np.float64))
    # inputs and targets standardised (embeddings are small numbers: unscaled, Adam stalls)
    mu, sd = anon[train].mean(axis=0), anon[train].std(axis=0) + 1e-8
    ymu, ysd = orig[train].mean(axis=0), orig[train].std(axis=0) + 1e-8
    with warnings.catch_warnings():   # a map that stops at max_iter is still a map: its holdout says how good
        warnings.simplefilter("ignore", ConvergenceWarning)
        mlp = MLPRegressor(hidden_layer_sizes=(256,), alpha=1e-2, early_stopping=len(train) >= 100, max_iter=1000,
                           random_state=seed).fit((anon[train] - mu) / sd, (orig[train] - ymu) / ysd)
    mmap = MLPMap(mu=mu, sd=sd, W1=mlp.coefs_[0], b1=mlp.intercepts_[0], W2=mlp.coefs_[1], b2=mlp.intercepts_[1],
                  ymu=ymu, ysd=ysd)
    maps = {"linear": linear, "mlp": mmap}
    report = {"n_public": int(n), "n_train": int(len(train)), "n_holdout": int(n_hold),
              "holdout_distance_unmapped": float(np.linalg.norm(anon[hold] - orig[hold], axis=1).mean()),
              "holdout_distance": {k: float(np.linalg.norm(m.apply(anon[hold]) - orig[hold], axis=1).mean())
                                   for k, m in maps.items()},
              "ridge_alpha": float(ridge.alpha_)}
    return maps, report


_LINEAR = ("W", "b")
_MLP = ("mu", "sd", "W1", "b1", "W2", "b2", "ymu", "ysd")


def _save(path: Path, maps: dict, report: dict) -> None:
    from deid.io.npz import save_npz

    arrays = {f"linear.{k}": v for k, v in vars(maps["linear"]).items()}
    arrays.update({f"mlp.{k}": v for k, v in vars(maps["mlp"]).items()})
    save_npz(path, arrays, report, meta_key="report", meta_text=True)  # the layout of earlier caches


def _load(path: Path) -> tuple[dict, dict] | None:
    from deid.io.npz import load_npz

    try:
        z, report = load_npz(path, "aware-attacker maps", meta_key="report",
                             required=[f"linear.{k}" for k in _LINEAR] + [f"mlp.{k}" for k in _MLP] + ["report"])
    except ValueError as exc:
        log.warning("%s: ignoring the cached aware-attacker maps (%s)", path, exc)
        return None
    linear = LinearMap(**{k: z[f"linear.{k}"] for k in _LINEAR})
    mlp = MLPMap(**{k: z[f"mlp.{k}"] for k in _MLP})
    return {"linear": linear, "mlp": mlp}, report


class PublicSet:
    """``n`` images of a public folder (fsspec URI), evenly spaced over the sorted names."""

    def __init__(self, uri: str, n: int = DEFAULT_N, storage_options: dict | None = None):
        self.uri, self.storage_options = uri, storage_options or {}
        fs, root = fsspec.core.url_to_fs(uri, **self.storage_options)
        try:
            found = [(p, info.get("size")) for p, info in fs.find(root, detail=True).items()
                     if p.lower().endswith(IMAGE_EXT)]
        except (FileNotFoundError, OSError) as exc:
            raise Unavailable(f"public reference set {uri}: cannot list it ({exc})") from None
        if not found:
            raise Unavailable(f"public reference set {uri}: no images in it")
        found.sort()
        # evenly spaced over the sorted names: a fixed, content-independent choice (no seed)
        picks = np.unique(np.linspace(0, len(found) - 1, min(n, len(found))).round().astype(int))
        self.fs, self.root = fs, root
        self.items = [found[i] for i in picks]
        h = hashlib.sha256()
        for p, size in self.items:
            h.update(f"{posixpath.relpath(p, root)}\0{size}\n".encode())
        self.fingerprint = h.hexdigest()

    def __len__(self) -> int:
        return len(self.items)

    def read(self, path: str) -> np.ndarray:
        from deid.io.decode import decode_image

        with self.fs.open(path, "rb") as f:
            return decode_image(f.read(), max_pixels=64_000_000, name=path).rgb


def cache_key(method: str, params: dict, latent: dict | None, detector: dict, recognizer_fp: str,
              public_fp: str) -> str:
    blob = json.dumps({"v": _VERSION, "method": method, "params": params, "latent": latent, "detector": detector,
                       "recognizer": recognizer_fp, "public": public_fp}, sort_keys=True, default=str)
    return hashlib.sha256(blob.encode()).hexdigest()[:32]


def cache_dir() -> Path:
    from deid.latent.generator import cache_root

    return cache_root() / "evaluate-aware"


__all__ = ["DEFAULT_N", "ENV", "LinearMap", "MLPMap", "PublicSet", "Unavailable", "cache_dir", "cache_key", "fit_maps",
           "_load", "_save"]

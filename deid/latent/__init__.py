"""Latent models: encode aligned faces to vectors and decode them back, with public bounds.

The interface and its invariants are in :mod:`deid.latent.base`. Backends:

* ``pca`` (:mod:`deid.latent.pca`): eigenfaces fitted on a public reference set; CPU, a
  few MB; ``builtin:eigenfaces`` ships with deid (fitted on lfw-public-ref; docs/latent.md).
* ``torchscript`` (:mod:`deid.latent.torchscript`): a user's encoder/decoder files.

``load_latent_model(spec)`` builds one from a manifest-style spec::

    "builtin:eigenfaces"                                   # a string: a PCA model file / URI
    {"backend": "pca", "uri": "s3://bucket/eigenfaces-64-128.npz"}
    {"backend": "pca", "uri": "builtin:eigenfaces", "dim": 32}   # leading 32 components only
    {"backend": "torchscript", "encoder": URI, "decoder": URI, "bounds": URI, "crop_size": 256,
     "value_range": "-1,1", "layout": "dlib5", "align_scale": 1.0, "device": "auto"}
"""

from __future__ import annotations

from typing import Any, Mapping

from deid.latent.base import LatentModel, bounds_from_codes, face_mask, paste_back

DEFAULT_MODEL = "builtin:eigenfaces"

_PCA_KEYS = {"backend", "uri", "dim", "storage_options"}
_TS_KEYS = {"backend", "encoder", "decoder", "bounds", "crop_size", "value_range", "layout", "align_scale", "device",
            "batch_size", "name", "probe", "storage_options"}


def load_latent_model(spec: Mapping[str, Any] | str | None = None) -> LatentModel:
    """Build a latent model from ``spec`` (see the module docstring); ``None`` gives the
    default ``builtin:eigenfaces``. Unknown keys are an error that names them."""
    if spec is None:
        spec = DEFAULT_MODEL
    if isinstance(spec, str):
        spec = {"backend": "pca", "uri": spec}
    spec = dict(spec)
    backend = spec.get("backend", "pca")
    if backend == "pca":
        _check_keys(spec, _PCA_KEYS, backend)
        from deid.latent.pca import PCALatentModel

        return PCALatentModel.load(spec.get("uri", DEFAULT_MODEL), spec.get("storage_options"), dim=spec.get("dim"))
    if backend == "torchscript":
        _check_keys(spec, _TS_KEYS, backend)
        missing = [k for k in ("encoder", "decoder", "bounds", "crop_size") if spec.get(k) is None]
        if missing:
            raise ValueError(f"latent model (torchscript): missing {', '.join(missing)}")
        from deid.latent.torchscript import TorchScriptLatentModel

        kw = {k: v for k, v in spec.items() if k not in ("backend", "encoder", "decoder", "bounds", "crop_size")}
        return TorchScriptLatentModel(spec["encoder"], spec["decoder"], spec["bounds"], int(spec["crop_size"]), **kw)
    raise ValueError(f"latent model: unknown backend {backend!r} (pca, torchscript)")


def fingerprint(model: LatentModel | Mapping[str, Any] | str | None = None) -> str:
    """sha256 identifying a latent model (for the audit's ``model_fingerprints``); accepts a
    loaded model or a spec."""
    if not isinstance(model, LatentModel):
        model = load_latent_model(model)
    return model.fingerprint


def _check_keys(spec: dict, allowed: set[str], backend: str) -> None:
    extra = sorted(set(spec) - allowed)
    if extra:
        raise ValueError(f"latent model ({backend}): unknown key(s) {', '.join(extra)}; allowed: {', '.join(sorted(allowed))}")


__all__ = ["DEFAULT_MODEL", "LatentModel", "bounds_from_codes", "face_mask", "fingerprint", "load_latent_model", "paste_back"]

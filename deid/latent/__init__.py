"""Latent models: encode aligned faces to vectors and decode them back, with public bounds.

The interface and its invariants are in :mod:`deid.latent.base`. Backends:

* ``pca`` (:mod:`deid.latent.pca`): eigenfaces fitted on a public reference set; CPU, a
  few MB; ``builtin:eigenfaces`` ships with deid (fitted on lfw-public-ref; docs/latent.md).
* ``torchscript`` (:mod:`deid.latent.torchscript`): a user's encoder/decoder files.
* ``mobilestylegan`` (:mod:`deid.latent.mobilestylegan`): a face generator (latent kind
  ``generator``, :mod:`deid.latent.generator`): z -> w -> 1024 px FFHQ-aligned face, no encoder;
  non-commercial weights.

Backends are plug-ins of :mod:`deid.latent.registry`.

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
from deid.latent.registry import DEFAULT_MODEL, LATENT_MODELS, load_latent_model


def fingerprint(model: LatentModel | Mapping[str, Any] | str | None = None) -> str:
    """sha256 identifying a latent model (for the audit's ``model_fingerprints``); accepts a
    loaded model or a spec."""
    if not isinstance(model, LatentModel):
        model = load_latent_model(model)
    return model.fingerprint


__all__ = ["DEFAULT_MODEL", "LATENT_MODELS", "LatentModel", "bounds_from_codes", "face_mask", "fingerprint",
           "load_latent_model", "paste_back"]

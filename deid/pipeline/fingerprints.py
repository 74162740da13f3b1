"""Fingerprints (sha256) of every model file a run uses, for the audit."""

from __future__ import annotations

import os

import dlib

from deid.anonymize.params import LATENT_METHODS
from deid.config.schema import Manifest
from deid.faces.models import dlib_model_path, file_sha256


#: Detectors whose faces come with dlib's own landmarks (5 or 68 points).
DLIB_DETECTORS = ("dlib-hog", "dlib-cnn")


def model_fingerprints(manifest: Manifest) -> list[dict]:
    out: list[dict] = []
    det = manifest.detect
    if det.backend == "dlib-hog":
        # HOG weights are compiled into dlib: the version identifies them.
        out.append({"name": "dlib-hog", "sha256": f"builtin:dlib-{dlib.__version__}"})
    elif det.backend == "dlib-cnn":
        out.append({"name": "dlib-mmod", "sha256": file_sha256(det.model_path or dlib_model_path("dlib-mmod"))})
    elif det.backend == "centerface":
        from deid.faces.centerface_backend import resolve_model_path

        out.append({"name": "centerface", "sha256": file_sha256(resolve_model_path(det.model_path))})
    elif det.backend == "insightface":
        from deid.faces.insightface_backend import find_models

        path = find_models(det.model_dir).detection  # the checks use dlib, not the pack's recognizer
        out.append({"name": f"insightface:{os.path.basename(path)}", "sha256": file_sha256(path)})
    dlib_landmarks = det.backend in DLIB_DETECTORS  # else dlib's models only place landmarks in boxes
    if dlib_landmarks or manifest.checks.enabled or manifest.anonymize.method in LATENT_METHODS:
        out.append({"name": "dlib-shape5", "sha256": file_sha256(dlib_model_path("dlib-shape5"))})
    if det.landmarks == 68 and dlib_landmarks:
        out.append({"name": "dlib-shape68", "sha256": file_sha256(dlib_model_path("dlib-shape68"))})
    if manifest.checks.enabled:
        out.append({"name": "dlib-resnet128", "sha256": file_sha256(dlib_model_path("dlib-resnet128"))})
    if manifest.anonymize.method in LATENT_METHODS:
        from deid.latent import load_latent_model

        spec = dict(manifest.latent.spec())
        if spec.get("backend") == "torchscript":
            # the driver only needs the fingerprint: keep the model off the GPU (Ray gave the
            # driver none) and skip the probe, which the actors run anyway
            spec.update(device="cpu", probe=False)
        model = load_latent_model(spec)
        out.append({"name": f"latent:{model.name}", "sha256": model.fingerprint})
    return out

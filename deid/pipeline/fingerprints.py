"""Fingerprints (sha256) of every model file a run uses, for the audit.

The files come from the plug-ins' own declarations (``Plugin.model_files``): the detector's,
the residual-face gate's detector's, then dlib's 5-point model where dlib places landmarks on faces of another detector (the
identity check, dlib5 latent models), the check network, then the latent model: the files it
declares (``Plugin.model_files``: a generator's weights), else the loaded model's fingerprint, then
the method's own files (``Plugin.model_files``: synthetic-swap's face mesh, private-encoder's
encoder file); a method may add entries of its own (``fingerprint_entries``: private-encoder
names the recognizer its encoder was fine-tuned against, which ``deid evaluate`` reads).
"""

from __future__ import annotations

import importlib

from deid.anonymize.registry import METHODS, needs_latent
from deid.config.schema import Manifest
from deid.faces.models import dlib_model_path, file_sha256
from deid.faces.registry import DETECTORS
from deid.pipeline.errors import RunError
from deid.plugins import ModelFile


def _entry(f: ModelFile) -> dict:
    if f.path.startswith("builtin:"):
        sha = f.path
    elif "://" in f.path and not f.path.startswith("file://"):
        import hashlib

        import fsspec

        with fsspec.open(f.path, "rb") as fh:
            sha = hashlib.sha256(fh.read()).hexdigest()
    else:
        sha = file_sha256(f.path.removeprefix("file://"))
    return {"name": f.name, "sha256": sha}


def model_fingerprints(manifest: Manifest) -> list[dict]:
    files = DETECTORS.get(manifest.detect.backend).files(manifest.detect)
    gate = manifest.gate_detector
    if gate is not None:
        files += DETECTORS.get(gate.backend).files(gate)
    files = list({f.name: f for f in files}.values())  # one entry per file name
    latent = needs_latent(manifest.anonymize.method)
    names = {f.name for f in files}
    if (manifest.checks.enabled or latent) and "dlib-shape5" not in names:
        files.append(ModelFile("dlib-shape5", dlib_model_path("dlib-shape5")))
    if manifest.checks.enabled:
        files.append(ModelFile("dlib-resnet128", dlib_model_path("dlib-resnet128")))
    out = [_entry(f) for f in files]
    if latent:
        from deid.latent import LATENT_MODELS, load_latent_model

        declared = LATENT_MODELS.get(manifest.latent.backend).files(manifest.latent)
        if declared:  # its files say what it is (a generator: weights; its statistics follow from them)
            out += [_entry(f) for f in declared]
        else:
            # the driver only needs the fingerprint: keep a model off the GPU (Ray gave the driver
            # none) and skip the probe, which the actors run anyway
            model = load_latent_model(manifest.latent, device="cpu", probe=False)
            out.append({"name": f"latent:{model.name}", "sha256": model.fingerprint})
    plugin = METHODS.get(manifest.anonymize.method)
    seen = {e["name"] for e in out}
    try:
        out += [_entry(f) for f in plugin.files(manifest.anonymize.params) if f.name not in seen]
        extra = getattr(importlib.import_module(plugin.module), "fingerprint_entries", None) if plugin.module else None
        if extra is not None:
            out += extra(plugin.validate(manifest.anonymize.params))
    except (FileNotFoundError, ValueError) as exc:  # a method's own file missing or refused: nothing ran yet
        raise RunError(str(exc)) from None
    return out

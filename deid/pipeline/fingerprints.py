"""Fingerprints (sha256) of every model file a run uses, for the audit.

The files come from the plug-ins' own declarations (``Plugin.model_files``): the detector's,
the residual-face gate's detector's, then dlib's 5-point model where dlib places landmarks on faces of another detector (the
identity check, dlib5 latent models), the check network, then the latent model: the files it
declares (``Plugin.model_files``: a generator's weights), else the loaded model's fingerprint.
"""

from __future__ import annotations

from deid.anonymize.registry import needs_latent
from deid.config.schema import Manifest
from deid.faces.models import dlib_model_path, file_sha256
from deid.faces.registry import DETECTORS
from deid.plugins import ModelFile


def _entry(f: ModelFile) -> dict:
    sha = f.path if f.path.startswith("builtin:") else file_sha256(f.path)
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
    return out

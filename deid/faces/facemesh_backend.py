"""MediaPipe Face Mesh on LiteRT: BlazeFace detection, then 468 landmarks per face.

The still-image path of MediaPipe's ``FaceLandmarkFrontCpu`` graph
(mediapipe/modules/face_landmark/*.pbtxt), with both models from the mediapipe wheel
(Apache-2.0), run by ``ai-edge-litert``:

1. BlazeFace (:mod:`deid.faces.blazeface_backend`; full-range by default, where MediaPipe's
   face mesh uses the short-range model) finds the faces;
2. each detection becomes a region of interest (``FaceDetectionFrontDetectionToRoi``): the
   box centre, rotated by the line from the eye on the image's left to the other eye (so the
   eyes are level in the crop), a square of 1.5 x the box's longer side;
3. that square is cropped and resampled to 192x192 (edges replicated), scaled to [0, 1], and
   ``face_landmark.tflite`` gives 468 points (x, y, relative depth z, in crop pixels) and a
   face-presence logit; faces whose presence score (sigmoid) is under ``min_presence``
   (MediaPipe: 0.5) are dropped;
4. the points are mapped back into the photo (``LandmarkProjectionCalculator``).

A face is returned with ``box`` = the box of its 468 points, ``score`` = the BlazeFace score,
``mesh`` = the ``[468, 3]`` points (x, y in image pixels, z in the same units, negative
towards the camera), and ``landmarks5`` in deid's ``arcface5`` layout derived from the mesh:
the centres of the two eye contours (:data:`RIGHT_EYE`, :data:`LEFT_EYE`), nose tip (1) and
mouth corners (61, 291), the person's right first (the image's left in an upright face), so
arcface5 alignment (latent models, recognizers) works on them. ``Face.dlib_box`` maps the mesh
box into dlib's convention for dlib's 5-point model (identity check, dlib5 latent models).
:data:`FACE_OVAL` lists the contour from the forehead round the jaw and back.
"""

from __future__ import annotations

from typing import Literal

import numpy as np
from pydantic import Field

from deid.faces.base import DetectorBase
from deid.faces.blazeface_backend import (
    BlazeFaceDetector,
    BlazeFaceParams,
    blazeface_model_file,
    faces_from,
    load_interpreter,
    local_model_file,
    mediapipe_file,
)
from deid.faces.onnx_runtime import check_rgb
from deid.faces.registry import DETECTORS
from deid.faces.types import Face, shrink_for_detection
from deid.plugins import Licence, ModelFile, Needs, Plugin, path_field

MESH_FILE = "modules/face_landmark/face_landmark.tflite"
MESH_SIZE = 192
N_POINTS = 468
ROI_SCALE = 1.5  # RectTransformationCalculator scale_x, scale_y (square_long)
#: eye contours (MediaPipe's FACEMESH_RIGHT_EYE / FACEMESH_LEFT_EYE), the person's right and left
RIGHT_EYE = (33, 7, 163, 144, 145, 153, 154, 155, 133, 173, 157, 158, 159, 160, 161, 246)
LEFT_EYE = (263, 249, 390, 373, 374, 380, 381, 382, 362, 398, 384, 385, 386, 387, 388, 466)
NOSE_TIP = 1
MOUTH_CORNERS = (61, 291)  # the person's right, left
#: face outline, in order (MediaPipe's FACEMESH_FACE_OVAL): forehead centre, round the person's
#: left side, chin (152), the right side, back to the forehead
FACE_OVAL = (10, 338, 297, 332, 284, 251, 389, 356, 454, 323, 361, 288, 397, 365, 379, 378, 400, 377, 152,
             148, 176, 149, 150, 136, 172, 58, 132, 93, 234, 127, 162, 21, 54, 103, 67, 109)


def mesh_arcface5(mesh: np.ndarray) -> np.ndarray:
    """The ``arcface5`` points of a mesh: eye-contour centres, nose tip, mouth corners."""
    xy = np.asarray(mesh, dtype=np.float64)[:, :2]
    return np.stack([xy[list(RIGHT_EYE)].mean(0), xy[list(LEFT_EYE)].mean(0), xy[NOSE_TIP],
                     xy[MOUTH_CORNERS[0]], xy[MOUTH_CORNERS[1]]])


def roi_from_detection(box: np.ndarray, keypoints6: np.ndarray) -> tuple[float, float, float, float]:
    """``(cx, cy, side, angle)`` in image pixels and radians: the square MediaPipe crops for the
    mesh from one BlazeFace detection (box centre; 1.5 x the longer side; rotated so the line
    from keypoint 0 to keypoint 1 -- the eyes -- is horizontal)."""
    (ex0, ey0), (ex1, ey1) = keypoints6[0], keypoints6[1]
    angle = float(np.arctan2(ey1 - ey0, ex1 - ex0))
    cx, cy = (box[0] + box[2]) / 2, (box[1] + box[3]) / 2
    side = ROI_SCALE * max(box[2] - box[0], box[3] - box[1])
    return float(cx), float(cy), float(side), angle


def roi_matrix(cx: float, cy: float, side: float, angle: float, size: int = MESH_SIZE) -> np.ndarray:
    """2x3 affine map from crop pixels ``(u, v)`` of a ``size`` square to image pixels."""
    c, s = np.cos(angle), np.sin(angle)
    k = side / size
    return np.array([[c * k, -s * k, cx - k * size / 2 * (c - s)],
                     [s * k, c * k, cy - k * size / 2 * (s + c)]], dtype=np.float64)


def mesh_model_file(model_path: str | None, field: str = "detect.backend face-mesh",
                    param: str = "detect.model_path") -> str:
    """face_landmark.tflite: ``model_path`` (local), else the installed mediapipe wheel's (``field``
    names the setting that needs it and ``param`` the one that gives the file, in the error when
    the wheel is missing)."""
    return local_model_file(model_path, "face mesh") if model_path else mediapipe_file(MESH_FILE, field, param)


class FaceLandmarker:
    """MediaPipe's face landmark model alone (steps 2-4 of the module docstring): 468 points and a
    face-presence score for a face given by a box and its eyes. Used by :class:`FaceMeshDetector`
    and, as a second check of another model family, by CenterFace's small-face cascade."""

    def __init__(self, model_path: str | None = None, threads: int | None = None, field: str = "detect.backend face-mesh",
                 param: str = "detect.model_path"):
        self.mesh_file = mesh_model_file(model_path, field, param)
        self._it = load_interpreter(self.mesh_file, threads)
        inp, outs = self._it.get_input_details(), self._it.get_output_details()
        shapes = {tuple(int(v) for v in o["shape"]) for o in outs}
        want = {(1, 1, 1, N_POINTS * 3), (1, 1, 1, 1)}
        if len(inp) != 1 or tuple(inp[0]["shape"]) != (1, MESH_SIZE, MESH_SIZE, 3) or shapes != want:
            raise ValueError(
                f"{self.mesh_file}: not the MediaPipe face mesh model deid knows (expected input "
                f"[1, {MESH_SIZE}, {MESH_SIZE}, 3] and outputs {sorted(want)}; found "
                f"{[list(i['shape']) for i in inp]}, {sorted(shapes)})")
        self._in = inp[0]["index"]
        self._points = next(o["index"] for o in outs if o["shape"][-1] == N_POINTS * 3)
        self._flag = next(o["index"] for o in outs if o["shape"][-1] == 1)

    def mesh(self, rgb: np.ndarray, box: np.ndarray, keypoints: np.ndarray) -> tuple[np.ndarray, float]:
        """``(points [468, 3] in image pixels, presence score)`` for one face: ``box`` (x0, y0, x1,
        y1) and ``keypoints`` whose first two are the eyes, the image's left one first
        (BlazeFace's six keypoints, or the ``arcface5`` points)."""
        import cv2

        mat = roi_matrix(*roi_from_detection(box, keypoints))
        crop = cv2.warpAffine(rgb, cv2.invertAffineTransform(mat), (MESH_SIZE, MESH_SIZE),
                              flags=cv2.INTER_LINEAR, borderMode=cv2.BORDER_REPLICATE)
        self._it.set_tensor(self._in, (crop.astype(np.float32) / 255.0)[None])
        self._it.invoke()
        pts = self._it.get_tensor(self._points).reshape(N_POINTS, 3).astype(np.float64)
        logit = float(np.clip(self._it.get_tensor(self._flag).reshape(-1)[0], -100, 100))
        xy = pts[:, :2] @ mat[:, :2].T + mat[:, 2]
        z = pts[:, 2:] * np.hypot(mat[0, 0], mat[1, 0])  # crop pixels -> image pixels
        return np.concatenate([xy, z], axis=1), 1.0 / (1.0 + np.exp(-logit))

    def presence(self, rgb: np.ndarray, boxes: np.ndarray, keypoints: np.ndarray) -> np.ndarray:
        """The face-presence score of each face (``boxes`` [n, 4], ``keypoints`` [n, k >= 2, 2])."""
        return np.array([self.mesh(rgb, b, k)[1] for b, k in zip(boxes, keypoints)], dtype=np.float64)


class FaceMeshDetector(DetectorBase):
    """BlazeFace faces with MediaPipe's 468-point mesh (``landmark_layout="arcface5"``)."""

    backend = "face-mesh"
    landmark_layout = "arcface5"
    #: ``Face.dlib_box`` in units of the mesh box (x0, y0, x1, y1 relative to its top-left
    #: corner, as fractions of its width and height). Fitted like BlazeFaceDetector.DLIB_BOX:
    #: median of the HOG box's edges over the 297 faces both find on public reference photos
    #: 0..299; on photos 300..599 dlib's 5-point landmarks from it sit 0.47% of the eye distance
    #: from the HOG-based ones, median (raw mesh box: 1.03%).
    DLIB_BOX = (-0.08, 0.028, 1.032, 0.965)

    def __init__(self, model: str = "full", detector_path: str | None = None, model_path: str | None = None,
                 min_score: float = 0.0, min_presence: float = 0.5, max_side: int | None = None,
                 tile: int | None = BlazeFaceDetector.DEFAULT_TILE, threads: int | None = None):
        self.detector = BlazeFaceDetector(model=model, model_path=detector_path, min_score=min_score,
                                          tile=tile, threads=threads)
        self.landmarker = FaceLandmarker(model_path, threads)
        self.mesh_file = self.landmarker.mesh_file
        self.min_presence, self.max_side = float(min_presence), max_side

    def mesh(self, rgb: np.ndarray, box: np.ndarray, keypoints6: np.ndarray) -> tuple[np.ndarray, float]:
        """``(points [468, 3] in image pixels, presence score)`` for one BlazeFace detection."""
        return self.landmarker.mesh(rgb, box, keypoints6)

    def detect(self, rgb: np.ndarray) -> list[Face]:
        rgb = check_rgb(rgb)
        work, scale = shrink_for_detection(rgb, self.max_side)
        boxes, scores, kps = self.detector.raw(work)
        # the mesh runs on the full-size photo: its crop keeps the face's detail
        found = [(self.mesh(rgb, box, kp), score) for box, score, kp in zip(boxes / scale, scores, kps / scale)]
        found = [(m, s) for (m, presence), s in found if presence >= self.min_presence]
        meshes = np.array([m for m, _ in found]).reshape(-1, N_POINTS, 3)
        mesh_boxes = np.concatenate([meshes[:, :, :2].min(1), meshes[:, :, :2].max(1)], axis=1)
        return faces_from(rgb.shape, mesh_boxes, [s for _, s in found], [mesh_arcface5(m) for m in meshes],
                          "arcface5", self.DLIB_BOX, meshes)


class FaceMeshParams(BlazeFaceParams):
    model: Literal["full", "short"] = Field("full", description="the BlazeFace model that finds the faces: full "
                                            "(full-range, 192 px) or short (short-range, 128 px, MediaPipe's choice)")
    min_presence: float = Field(0.5, ge=0.0, le=1.0, description="drop faces whose mesh face-presence score is "
                                "below this (MediaPipe: 0.5)")
    detector_path: str | None = path_field(None, description="the BlazeFace .tflite file, local (default: the one "
                                           "in the installed mediapipe wheel)")
    model_path: str | None = path_field(None, description="face_landmark.tflite, local (default: the one in the "
                                        "installed mediapipe wheel)")


def _files(p: FaceMeshParams) -> list[ModelFile]:
    det = blazeface_model_file(BlazeFaceParams(model=p.model, model_path=p.detector_path))
    return [ModelFile(f"blazeface-{p.model}", det), ModelFile("face-mesh", mesh_model_file(p.model_path))]


DETECTORS.register(Plugin(
    kind="detector", name="face-mesh", params=FaceMeshParams,
    summary="BlazeFace, then MediaPipe's 468-point face mesh on LiteRT; mesh box, arcface5 points from the mesh",
    factory=lambda p: FaceMeshDetector(model=p.model, detector_path=p.detector_path, model_path=p.model_path,
                                       min_score=p.min_score, min_presence=p.min_presence, max_side=p.max_side,
                                       tile=p.tile),
    licence=Licence(code="Apache-2.0 (MediaPipe)", weights="Apache-2.0 (.tflite files of the mediapipe wheel)"),
    needs=Needs(landmarks="arcface5", gpu=False),
    model_files=_files,
    module=__name__,
))

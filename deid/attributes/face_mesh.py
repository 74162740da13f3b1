"""``face-mesh``: attributes measured on MediaPipe's 468-point face mesh; no model of their own.

* ``mouth`` (closed, open): the lips are apart when the gap between the inner lips (mesh points
  13 and 14) is more than ``mouth_open`` (default 0.1) of the mouth's width (corners 61, 291).
  "open" is any parting of the lips: talking, a smile that shows the teeth, a gasp. On 39 faces
  of the public reference photos the gap was 0.007-0.057 for closed mouths and 0.135-0.354 for
  parted ones, hence 0.1 (docs/attributes.md has the accuracy on other, hand-labelled faces).
* ``yaw`` (left, frontal, right) and ``pitch`` (down, level, up), ordered: the face's forward
  direction is the normal of the plane through the line between the eye-contour centres and the
  line from the forehead (10) to the chin (152), in the mesh's 3-D points (x, y in pixels, z
  its relative depth); yaw is its angle left/right of the camera axis (``left``: the face points
  to the image's left), pitch its angle up/down. Bands at ``yaw_bands`` / ``pitch_bands`` degrees.
  The forehead-chin line leans back in most faces, so a level face reads a few degrees down
  (median -6 on the public reference photos), which the default pitch bands allow for.

A face that came from ``detect.backend face-mesh`` carries its mesh; for faces of any other
detector the mesh is found here (the face mesh run on the photo, matched to the face by the
overlap of the boxes, IoU >= 0.3). A face with no mesh gets no estimate.
"""

from __future__ import annotations

import numpy as np
from pydantic import Field, field_validator

from deid.attributes.base import AttributeParams, AttributeSpec, Estimate
from deid.attributes.registry import ATTRIBUTES
from deid.plugins import Licence, ModelFile, Needs, Plugin

MOUTH = AttributeSpec("mouth", ("closed", "open"))
YAW = AttributeSpec("yaw", ("left", "frontal", "right"), ordered=True)
PITCH = AttributeSpec("pitch", ("down", "level", "up"), ordered=True)
INNER_LIPS = (13, 14)
MOUTH_CORNERS = (61, 291)
FOREHEAD, CHIN = 10, 152
MATCH_IOU = 0.3


def mouth_gap(mesh: np.ndarray) -> float:
    """Inner-lip gap over mouth width (2-D)."""
    xy = np.asarray(mesh, dtype=np.float64)[:, :2]
    width = np.linalg.norm(xy[MOUTH_CORNERS[0]] - xy[MOUTH_CORNERS[1]])
    return float(np.linalg.norm(xy[INNER_LIPS[0]] - xy[INNER_LIPS[1]]) / max(width, 1e-9))


def head_pose(mesh: np.ndarray) -> tuple[float, float]:
    """``(yaw, pitch)`` in degrees: yaw < 0 the face points to the image's left, pitch < 0 down."""
    from deid.faces.facemesh_backend import LEFT_EYE, RIGHT_EYE

    m = np.asarray(mesh, dtype=np.float64)
    across = m[list(LEFT_EYE)].mean(0) - m[list(RIGHT_EYE)].mean(0)   # image left -> right
    down = m[CHIN] - m[FOREHEAD]
    forward = -np.cross(across, down)                                  # towards the camera: z < 0
    forward /= max(np.linalg.norm(forward), 1e-12)
    yaw = np.degrees(np.arctan2(forward[0], -forward[2]))
    pitch = np.degrees(np.arctan2(-forward[1], -forward[2]))
    return float(yaw), float(pitch)


class FaceMeshAttributes:
    def __init__(self, mouth_open: float = 0.1, yaw_bands: tuple[float, float] = (-20.0, 20.0),
                 pitch_bands: tuple[float, float] = (-25.0, 15.0)):
        self.mouth_open = float(mouth_open)
        self.yaw_bands = np.asarray(yaw_bands, dtype=np.float64)
        self.pitch_bands = np.asarray(pitch_bands, dtype=np.float64)
        self.specs = (MOUTH, YAW, PITCH)
        self._detector = None

    def meshes(self, rgb: np.ndarray, faces: list) -> list[np.ndarray | None]:
        """Each face's mesh: its own, else the best-overlapping one the face mesh finds here."""
        out = [getattr(f, "mesh", None) for f in faces]
        if all(m is not None for m in out):
            return out
        from deid.faces.types import iou

        if self._detector is None:
            from deid.faces.registry import make_detector

            self._detector = make_detector({"backend": "face-mesh"})
        found = self._detector.detect(rgb)
        for i, f in enumerate(faces):
            if out[i] is None and found:
                best = max(found, key=lambda g: iou(tuple(f.box), tuple(g.box)))
                if iou(tuple(f.box), tuple(best.box)) >= MATCH_IOU:
                    out[i] = best.mesh
        return out

    def measure(self, mesh: np.ndarray) -> dict[str, float]:
        yaw, pitch = head_pose(mesh)
        return {"mouth_gap": mouth_gap(mesh), "yaw": yaw, "pitch": pitch}

    def estimate(self, rgb: np.ndarray, faces: list) -> list[dict[str, Estimate]]:
        out = []
        for mesh in self.meshes(rgb, faces):
            if mesh is None:
                out.append({})
                continue
            m = self.measure(mesh)
            out.append({
                "mouth": Estimate.point(MOUTH, int(m["mouth_gap"] > self.mouth_open)),
                "yaw": Estimate.point(YAW, int(np.searchsorted(self.yaw_bands, m["yaw"], side="right"))),
                "pitch": Estimate.point(PITCH, int(np.searchsorted(self.pitch_bands, m["pitch"], side="right"))),
            })
        return out


def _pair(v: list[float]) -> list[float]:
    if len(v) != 2 or not v[0] < v[1]:
        raise ValueError(f"two increasing band edges in degrees, got {v}")
    return v


class FaceMeshAttributeParams(AttributeParams):
    mouth_open: float = Field(0.1, gt=0.0, lt=1.0, description="the lips are apart when the inner-lip gap is "
                              "more than this fraction of the mouth's width")
    yaw_bands: list[float] = Field([-20.0, 20.0], description="yaw edges in degrees: left below the first, "
                                   "right above the second (the direction the face points in the image)")
    pitch_bands: list[float] = Field([-25.0, 15.0], description="pitch edges in degrees: down below the first, "
                                     "up above the second (a level face reads about -6)")

    _check = field_validator("yaw_bands", "pitch_bands")(classmethod(lambda cls, v: _pair(v)))


def _files(p: FaceMeshAttributeParams) -> list[ModelFile]:
    from deid.faces.registry import DETECTORS

    return DETECTORS.get("face-mesh").files()


ATTRIBUTES.register(Plugin(
    kind="attribute", name="face-mesh", params=FaceMeshAttributeParams,
    summary="mouth (closed, open), yaw (left, frontal, right) and pitch (down, level, up) bands measured on "
            "MediaPipe's 468-point face mesh (the face's own, else found by the face mesh)",
    factory=lambda p: FaceMeshAttributes(p.mouth_open, tuple(p.yaw_bands), tuple(p.pitch_bands)),
    licence=Licence(code="Apache-2.0 (MediaPipe) and deid's own", weights="Apache-2.0 (.tflite files of the "
                    "mediapipe wheel)"),
    needs=Needs(),
    model_files=_files,
    module=__name__,
))

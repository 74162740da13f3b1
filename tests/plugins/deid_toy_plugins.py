"""A third-party deid plug-in, for tests only: a toy detector and a toy method.

tests/test_plugins_e2e.py installs this module on the fly as the distribution
``deid_toy_plugins`` (a ``*.dist-info`` folder whose ``entry_points.txt`` names it in the
group ``deid.plugins``) and runs the real ``deid run`` on it: loading the entry point imports
this module, which registers both plug-ins. Nothing in deid names them.

* detector ``toy-centre``: one face per image, the square box of side ``fraction`` x the
  shorter image side centred in the image, with dlib5-layout landmarks (deid's alignment
  template mapped into the box). No weights: its model file is a ``builtin:`` string.
* method ``toy-invert``: inside each face box, ``amount`` of the way from each pixel to its
  colour inverse (``amount: 1``: ``255 - pixel``); nothing outside the boxes changes.
"""

from __future__ import annotations

import numpy as np
from pydantic import BaseModel, ConfigDict, Field

from deid.faces.align import TEMPLATES
from deid.faces.base import DetectorBase, DetectorParams
from deid.faces.types import Face
from deid.facts import FaceFacts
from deid.plugins import Licence, ModelFile, Needs, Plugin, registry

DETECTOR = "toy-centre"
METHOD = "toy-invert"
MODEL_FILE = ModelFile(DETECTOR, "builtin:toy-centre-v1")
LICENCE = Licence(code="Apache-2.0 (deid tests)")


def centre_box(h: int, w: int, fraction: float) -> tuple[int, int, int, int]:
    """The toy detector's box on an ``h`` x ``w`` image."""
    side = max(2, int(round(fraction * min(h, w))))
    x0, y0 = (w - side) // 2, (h - side) // 2
    return x0, y0, x0 + side, y0 + side


def invert(window: np.ndarray, amount: float) -> np.ndarray:
    """What the toy method does to the pixels of a box."""
    w = window.astype(np.float64)
    return np.clip(np.rint(w + amount * (255.0 - 2.0 * w)), 0, 255).astype(np.uint8)


class CentreParams(DetectorParams):
    fraction: float = Field(0.5, gt=0.0, le=1.0, description="box side, as a fraction of the shorter image side")


class CentreDetector(DetectorBase):
    landmark_layout = "dlib5"

    def __init__(self, params: CentreParams):
        self.fraction = params.fraction

    def detect(self, rgb: np.ndarray) -> list[Face]:
        h, w = rgb.shape[:2]
        x0, y0, x1, y1 = centre_box(h, w, self.fraction)
        pts = TEMPLATES["dlib5"] * [x1 - x0, y1 - y0] + [x0, y0]
        return [Face(box=(x0, y0, x1, y1), score=1.0, landmarks5=pts, landmark_layout="dlib5")]


class InvertParams(BaseModel):
    model_config = ConfigDict(extra="forbid", frozen=True)

    amount: float = Field(1.0, ge=0.0, le=1.0, description="how far each pixel moves towards its inverse")


class Invert:
    name = METHOD
    dp_scope = "none"
    release = None

    def __init__(self, params: InvertParams):
        self.params = params

    def __call__(self, rgb, faces, rng):
        out = np.array(rgb, copy=True)
        for f in faces:
            x0, y0, x1, y1 = f.box
            out[y0:y1, x0:x1] = invert(rgb[y0:y1, x0:x1], self.params.amount)
        return out, [FaceFacts(method=METHOD) for _ in faces]


registry("detector").register(Plugin(
    kind="detector", name=DETECTOR, params=CentreParams, factory=CentreDetector, licence=LICENCE,
    summary="toy: one square box in the image centre, dlib5 landmarks (tests only)",
    needs=Needs(landmarks="dlib5"), model_files=lambda p: [MODEL_FILE],
))
registry("method").register(Plugin(
    kind="method", name=METHOD, params=InvertParams, factory=Invert, licence=LICENCE,
    summary="toy: colour inversion inside each face box; not DP (tests only)",
))

"""Face regions: the grown box, its soft-edged mask, and blending into the photo.

All work happens inside a window around the face, so a small face in a 48 MP photo
costs what the face costs, not what the photo costs.

Region geometry shared by the classical methods (:class:`RegionParams`):

* ``margin``: the detector box is grown by this fraction of its size on every side
  before the method is applied (HOG boxes cut the forehead and the chin).
* ``feather``: width of the soft edge *outside* the grown region, as a fraction of the
  face size. Inside the grown region the method is applied at full strength, so the
  feathering never weakens the face itself.
* ``shape``: ``ellipse`` (inscribed in the grown box) or ``box``.
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import Literal

import cv2
import numpy as np
from pydantic import BaseModel, ConfigDict, Field

from deid.faces.types import Face


class RegionParams(BaseModel):
    """Params of a method applied to the grown face region. Unknown keys are errors, so a typo
    in a manifest ("sigmaa: 3") fails validation instead of silently using a default."""

    model_config = ConfigDict(extra="forbid", frozen=True)

    margin: float = Field(0.25, ge=0.0, le=2.0, description="grow the face box by this fraction per side")
    feather: float = Field(0.1, ge=0.0, le=1.0, description="soft edge outside the region, fraction of face size")
    shape: Literal["ellipse", "box"] = Field("ellipse", description="ellipse (inscribed in the grown box) or box")


@dataclass(frozen=True)
class Region:
    # grown face region (x0, y0, x1, y1), float, may extend past the image
    gx0: float
    gy0: float
    gx1: float
    gy1: float
    # window in image pixels that holds the region plus its feather, clipped
    wx0: int
    wy0: int
    wx1: int
    wy1: int


def region_for(face: Face, shape_hw: tuple[int, int], margin: float, feather: float, pad: float = 0.0) -> Region:
    h, w = shape_hw
    x0, y0, x1, y1 = face.box
    bw, bh = x1 - x0, y1 - y0
    gx0, gy0, gx1, gy1 = x0 - margin * bw, y0 - margin * bh, x1 + margin * bw, y1 + margin * bh
    extra = feather * face.size + pad
    wx0 = int(max(0, np.floor(gx0 - extra)))
    wy0 = int(max(0, np.floor(gy0 - extra)))
    wx1 = int(min(w, np.ceil(gx1 + extra)))
    wy1 = int(min(h, np.ceil(gy1 + extra)))
    return Region(gx0, gy0, gx1, gy1, wx0, wy0, wx1, wy1)


def alpha_mask(reg: Region, shape: str, feather_px: float) -> np.ndarray:
    """float32 mask over the window: 1 inside the grown region, a linear ramp to 0 over
    ``feather_px`` outside it."""
    hh, ww = reg.wy1 - reg.wy0, reg.wx1 - reg.wx0
    inside = np.zeros((hh, ww), dtype=np.uint8)
    cx = (reg.gx0 + reg.gx1) / 2 - reg.wx0
    cy = (reg.gy0 + reg.gy1) / 2 - reg.wy0
    if shape == "ellipse":
        axes = (max(1, int(round((reg.gx1 - reg.gx0) / 2))), max(1, int(round((reg.gy1 - reg.gy0) / 2))))
        cv2.ellipse(inside, (int(round(cx)), int(round(cy))), axes, 0, 0, 360, 1, thickness=-1)
    else:
        x0 = int(np.floor(reg.gx0 - reg.wx0))
        y0 = int(np.floor(reg.gy0 - reg.wy0))
        x1 = int(np.ceil(reg.gx1 - reg.wx0))
        y1 = int(np.ceil(reg.gy1 - reg.wy0))
        inside[max(0, y0) : max(0, y1), max(0, x0) : max(0, x1)] = 1
    if feather_px < 0.5:
        return inside.astype(np.float32)
    # distance (px) of each outside pixel to the region
    dist = cv2.distanceTransform((1 - inside).astype(np.uint8), cv2.DIST_L2, 5)
    return np.clip(1.0 - dist / float(feather_px), 0.0, 1.0).astype(np.float32)


def blend(rgb: np.ndarray, reg: Region, edited_window: np.ndarray, alpha: np.ndarray) -> None:
    """In place: rgb[window] = alpha * edited + (1 - alpha) * rgb[window]."""
    win = rgb[reg.wy0 : reg.wy1, reg.wx0 : reg.wx1]
    a = alpha[..., None]
    out = a * edited_window.astype(np.float32) + (1.0 - a) * win.astype(np.float32)
    win[...] = np.clip(np.rint(out), 0, 255).astype(np.uint8)

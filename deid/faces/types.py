"""What a detector returns: plain data, no model objects, safe to ship between processes."""

from __future__ import annotations

from dataclasses import dataclass, field

import numpy as np


@dataclass
class Face:
    """One detected face in image pixel coordinates.

    ``box`` is ``(x0, y0, x1, y1)`` with x1/y1 exclusive, clipped to the image.
    ``landmarks5`` are five points used for alignment, in the layout of the backend
    (``landmark_layout``): dlib's (two corners per eye, nose base) or insightface's
    (eye centres, nose tip, mouth corners). ``landmarks68`` is filled when asked for.
    ``dlib_box``, when set, is the face in dlib's detector box convention, for detectors
    whose boxes are framed differently: dlib's landmark models, run on faces from another
    backend (identity check, dlib5 latent models), start from it instead of ``box``.
    """

    box: tuple[int, int, int, int]
    score: float
    landmarks5: np.ndarray
    landmark_layout: str = "dlib5"
    landmarks68: np.ndarray | None = field(default=None, repr=False)
    dlib_box: tuple[int, int, int, int] | None = field(default=None, repr=False)
    #: a dense landmark mesh in image pixels, when the detector gives one (face-mesh: [468, 3] x, y, depth)
    mesh: np.ndarray | None = field(default=None, repr=False)

    @property
    def width(self) -> int:
        return self.box[2] - self.box[0]

    @property
    def height(self) -> int:
        return self.box[3] - self.box[1]

    @property
    def size(self) -> float:
        """Geometric mean of box width and height: the scale the anonymizers work at."""
        return float(np.sqrt(max(self.width, 1) * max(self.height, 1)))


def cut_by_frame(box: tuple[int, int, int, int], shape_hw: tuple[int, int], margin: int = 2) -> bool:
    """Is the face with ``box`` cut by the frame: does its box touch an image edge (within
    ``margin`` px)?"""
    h, w = shape_hw
    x0, y0, x1, y1 = box
    return x0 <= margin or y0 <= margin or x1 >= w - margin or y1 >= h - margin


def iou(a: tuple[int, int, int, int], b: tuple[int, int, int, int]) -> float:
    ix = max(0, min(a[2], b[2]) - max(a[0], b[0]))
    iy = max(0, min(a[3], b[3]) - max(a[1], b[1]))
    inter = ix * iy
    if inter == 0:
        return 0.0
    area = (a[2] - a[0]) * (a[3] - a[1]) + (b[2] - b[0]) * (b[3] - b[1]) - inter
    return inter / area if area > 0 else 0.0


def clip_box(x0: float, y0: float, x1: float, y1: float, w: int, h: int) -> tuple[int, int, int, int]:
    return (
        int(max(0, min(w, round(x0)))),
        int(max(0, min(h, round(y0)))),
        int(max(0, min(w, round(x1)))),
        int(max(0, min(h, round(y1)))),
    )


def shrink_for_detection(rgb: np.ndarray, max_side: int | None) -> tuple[np.ndarray, float]:
    """``(image, scale)``: ``rgb`` shrunk (area interpolation) so its longer side is at most
    ``max_side``, and the factor applied; ``(rgb, 1.0)`` when it already fits or no cap is
    set. Detectors divide what they find by ``scale`` to map it back."""
    h, w = rgb.shape[:2]
    if not max_side or max(h, w) <= max_side:
        return rgb, 1.0
    import cv2

    scale = max_side / max(h, w)
    return cv2.resize(rgb, (max(1, round(w * scale)), max(1, round(h * scale))), interpolation=cv2.INTER_AREA), scale

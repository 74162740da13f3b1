"""Skin tone of a face before and after anonymization: CIE Lab means over the skin of the face
mesh, and their CIEDE2000 difference (bench/skin_tone.py, tests/test_swap_skin_tone.py).

Two skins are measured, each over the same pixels of both images: the pixels that are skin in
the original's mesh and in the mesh found again on the output (the new face's features may
sit elsewhere than the original's):

* ``face``: :func:`deid.anonymize.swap_ops.skin_mask`, jaw line to brows less the eyes, brows,
  lips, nostrils and an outline band; the blend matches colour on this skin, so this one says
  what is left after the seam (feather, Poisson) and the mesh's error;
* ``cheeks``: the upper cheeks under the eyes only (:data:`CHEEKS`), a part of the face whose
  colour the blend does not match by itself.
"""

from __future__ import annotations

import cv2
import numpy as np

from deid.anonymize.swap_ops import skin_mask

#: the upper cheeks, the person's right then left, in the 468-point mesh
CHEEKS = ((116, 117, 118, 119, 100, 142, 203, 206, 216, 192, 213, 147, 123),
          (345, 346, 347, 348, 329, 371, 423, 426, 436, 416, 433, 376, 352))


def cheeks_mask(shape: tuple[int, ...], points: np.ndarray, shrink: float = 0.15) -> np.ndarray:
    """``bool [h, w]``: the :data:`CHEEKS` of mesh ``points``, each hull shrunk by ``shrink``
    towards its centre."""
    p = np.asarray(points, dtype=np.float64)[:, :2]
    out = np.zeros(shape[:2], np.uint8)
    for idx in CHEEKS:
        q = p[list(idx)]
        q = q.mean(0) + (1.0 - shrink) * (q - q.mean(0))
        cv2.fillConvexPoly(out, cv2.convexHull(np.round(q).astype(np.int32)), 1)
    return out > 0


def lab_mean(rgb: np.ndarray, mask: np.ndarray) -> np.ndarray:
    """``[3]``: the mean CIE Lab (D65, skimage) of ``rgb``'s pixels under ``mask``."""
    from skimage.color import rgb2lab

    px = np.asarray(rgb)[np.asarray(mask, dtype=bool)]
    if len(px) == 0:
        raise ValueError("lab_mean: the skin mask is empty")
    return rgb2lab(px[None].astype(np.float64) / 255.0)[0].mean(0)


def skin_change(original: np.ndarray, output: np.ndarray, points: np.ndarray,
                output_points: np.ndarray | None = None, part: str = "face") -> tuple[np.ndarray, np.ndarray, float]:
    """``(original Lab, output Lab, CIEDE2000)`` of the skin means over the same pixels: the
    ``part`` (``face`` or ``cheeks``, module doc) of ``points`` (the original's mesh) and, when
    given, of ``output_points`` (the mesh found on the output)."""
    from skimage.color import deltaE_ciede2000

    if part not in ("face", "cheeks"):
        raise ValueError(f"skin_change: part {part!r}, expected 'face' or 'cheeks'")
    make = (lambda pts: skin_mask(pts, original.shape)) if part == "face" else \
        (lambda pts: cheeks_mask(original.shape, pts))
    m = make(points)
    if output_points is not None:
        m &= make(output_points)
    a, b = lab_mean(original, m), lab_mean(output, m)
    return a, b, float(deltaE_ciede2000(a, b))

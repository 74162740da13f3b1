"""Helpers shared by the bench scripts that time methods on real single-face photos.

Import as ``from common import one_face_photos`` with ``bench/`` on ``sys.path`` (each script
puts the repository root there; the scripts in ``bench/`` see this module beside them when run
as ``python bench/X.py``).
"""

from __future__ import annotations

from pathlib import Path

import numpy as np


def one_face_photos(root: Path, n: int, size: tuple[int, int] | None = None) -> list[tuple[np.ndarray, list]]:
    """The first ``n`` photos ``root/*/*.jpg`` (sorted; LFW's layout) on which dlib HOG finds exactly
    one face, as ``(rgb, faces)``; ``size``: keep only photos of this ``(height, width)``.
    Decoded with deid's own decoder (:func:`deid.io.decode.decode_image`)."""
    from deid.faces.dlib_backend import DlibDetector
    from deid.io.decode import decode_image

    det = DlibDetector()
    out = []
    for p in sorted(Path(root).glob("*/*.jpg")):
        rgb = decode_image(p.read_bytes(), max_pixels=64_000_000, name=str(p)).rgb
        if size is not None and rgb.shape[:2] != tuple(size):
            continue
        faces = det.detect(rgb)
        if len(faces) == 1:
            out.append((rgb, faces))
        if len(out) == n:
            break
    return out

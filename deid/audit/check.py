"""Identity-distance check: does the anonymized face still look like the person?

For each face, the original and the anonymized image are embedded with the same
landmarks and the same alignment (dlib's aligned chip from the *original* detection),
so the distance measures the edit and nothing else. ``still_detected`` re-runs the
detector on the output: a face that is no longer found is a utility fact, not a
privacy one. ``passed`` is ``id_distance >= threshold``.
"""

from __future__ import annotations

from dataclasses import dataclass

import numpy as np

from deid.faces.types import Face, iou


@dataclass(frozen=True)
class FaceCheck:
    id_distance: float
    still_detected: bool | None
    passed: bool


class IdentityChecker:
    def __init__(self, embedder, detector=None, threshold: float = 0.6, redetect: bool = True, iou_threshold: float = 0.3):
        self.embedder = embedder
        self.detector = detector
        self.threshold = float(threshold)
        self.redetect = redetect and detector is not None
        self.iou_threshold = iou_threshold

    def check(self, original: np.ndarray, anonymized: np.ndarray, faces: list[Face]) -> list[FaceCheck]:
        if not faces:
            return []
        shapes = self.embedder.shapes(original, faces)
        before = self.embedder.embed_shapes(original, shapes)
        after = self.embedder.embed_shapes(anonymized, shapes)
        dist = self.embedder.distance(before, after)
        found: list[Face] | None = self.detector.detect(anonymized) if self.redetect else None
        out = []
        for face, d in zip(faces, dist):
            still = None
            if found is not None:
                still = any(iou(face.box, g.box) >= self.iou_threshold for g in found)
            out.append(FaceCheck(id_distance=float(d), still_detected=still, passed=bool(d >= self.threshold)))
        return out

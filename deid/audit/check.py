"""Identity-distance check: does the anonymized face still look like the person?

For each face, the original and the anonymized image are embedded with the same
landmarks and the same alignment (dlib's aligned chip from the *original* detection),
so the distance measures the edit and nothing else. ``still_detected`` re-runs the
detector on the output, in a window around each face (the face box grown by half its
size per side) rather than over the whole photo: the same detector at the same scale,
at a fraction of the cost on large photos. A face that is no longer found is a utility
fact, not a privacy one. ``passed`` is ``id_distance >= threshold``.
"""

from __future__ import annotations

from dataclasses import dataclass

import numpy as np

from deid.faces.types import Face, iou


@dataclass(frozen=True)
class FaceCheck:
    id_distance: float | None
    still_detected: bool | None
    passed: bool | None
    applicable: bool = True
    #: why a check was not applicable: ``not_applicable`` (too small), ``cut_by_frame``
    reason: str | None = None

    @property
    def label(self) -> str:
        """The audit's ``check`` value."""
        return "measured" if self.applicable else (self.reason or "not_applicable")


#: a face too small for the recognizer to judge (``checks.min_face_px``): it got an
#: irreversible treatment instead, and no distance is claimed for it
NOT_APPLICABLE = FaceCheck(id_distance=None, still_detected=None, passed=None, applicable=False,
                           reason="not_applicable")
#: a face cut by the frame edge (``checks.frame_cut``): the recognizer cannot judge it
#: either (a solid mask over such a face still measures under 0.6), so it gets the same treatment
CUT_BY_FRAME = FaceCheck(id_distance=None, still_detected=None, passed=None, applicable=False, reason="cut_by_frame")


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
        located = self.embedder.locate(original, faces)  # once, on the original
        before = self.embedder.embed(original, located)
        after = self.embedder.embed(anonymized, located)
        dist = self.embedder.distance(before, after)
        out = []
        for face, d in zip(faces, dist):
            still = self._still_detected(anonymized, face) if self.redetect else None
            out.append(FaceCheck(id_distance=float(d), still_detected=still, passed=bool(d >= self.threshold)))
        return out

    def _still_detected(self, image: np.ndarray, face: Face) -> bool:
        h, w = image.shape[:2]
        x0, y0, x1, y1 = face.box
        gx, gy = (x1 - x0) // 2, (y1 - y0) // 2
        wx0, wy0, wx1, wy1 = max(0, x0 - gx), max(0, y0 - gy), min(w, x1 + gx), min(h, y1 + gy)
        window = np.ascontiguousarray(image[wy0:wy1, wx0:wx1])
        for g in self.detector.detect(window):
            box = (g.box[0] + wx0, g.box[1] + wy0, g.box[2] + wx0, g.box[3] + wy0)
            if iou(face.box, box) >= self.iou_threshold:
                return True
        return False

"""The residual-face gate: is there a face on the output that nothing anonymized?

Contract: after a record's faces are anonymized, a detector of *another model family* than
the run's detector (``checks.residual_detector``; default :func:`deid.faces.registry.default_gate`)
scans the output image. A face it finds counts as covered when at least
``checks.residual_coverage`` of its box consists of pixels that the anonymization changed
*and* that lie in an anonymized face's region (its box grown by :data:`REGION_GROWTH` per
side: any method's margin and feather). The test is made on the output's pixels, whatever the
method. Any other face is a *residual face*: one the run's detector missed, which would be
published untouched (or one that appeared where nothing was anonymized).

``checks.residual``:

* ``anonymize`` (default): residual faces are anonymized on the output with the run's method
  (with ``mask`` when the method cannot take them: DP methods, whose every release must be
  reserved in the ledger before it is drawn; faces narrower than ``checks.min_face_px`` get the
  run's small-face treatment, recorded as ``masked``), and the output is scanned again, at most
  ``checks.residual_rounds`` times. Faces still found after the last round are ``unresolved``:
  the policy quarantines the record.
* ``quarantine``: a residual face quarantines the record; nothing else is done to it.
* ``off``: no scan.

The gate returns what it found, with the action taken on each face, for the audit
(``residual_faces``, ``residual_detector``); it keeps no state between records.
"""

from __future__ import annotations

from dataclasses import dataclass

import numpy as np

from deid.faces.types import Face

#: an anonymized face's region for the coverage test: its box grown by this fraction per side
REGION_GROWTH = 0.5

#: actions recorded per residual face
ACTIONS = ("anonymized", "masked", "quarantined", "unresolved")


@dataclass(frozen=True)
class ResidualFace:
    box: tuple[int, int, int, int]
    score: float
    action: str

    def row(self) -> dict:
        return {"box": list(self.box), "det_score": self.score, "action": self.action}


@dataclass(frozen=True)
class GateResult:
    image: np.ndarray
    found: tuple[ResidualFace, ...] = ()

    @property
    def unresolved(self) -> int:
        return sum(f.action in ("unresolved", "quarantined") for f in self.found)

    @property
    def handled(self) -> int:
        return sum(f.action in ("anonymized", "masked") for f in self.found)


def coverage(anonymized: np.ndarray, box: tuple[int, int, int, int]) -> float:
    """Fraction of ``box``'s pixels that were anonymized (``anonymized``: bool mask)."""
    x0, y0, x1, y1 = box
    win = anonymized[y0:y1, x0:x1]
    return float(win.mean()) if win.size else 1.0


def anonymized_mask(original: np.ndarray, out: np.ndarray, boxes) -> np.ndarray:
    """Pixels the anonymization changed inside the regions of the faces it was given."""
    h, w = original.shape[:2]
    near = np.zeros((h, w), bool)
    for x0, y0, x1, y1 in boxes:
        gx, gy = REGION_GROWTH * (x1 - x0), REGION_GROWTH * (y1 - y0)
        near[max(0, int(y0 - gy)):min(h, int(np.ceil(y1 + gy))), max(0, int(x0 - gx)):min(w, int(np.ceil(x1 + gx)))] = True
    return near & np.any(out != original, axis=2)


class ResidualGate:
    def __init__(self, detector, mode: str = "anonymize", anonymizer=None, fallback=None, rounds: int = 2,
                 min_coverage: float = 0.5, name: str = "", small: tuple[int, object] | None = None):
        if mode not in ("anonymize", "quarantine"):
            raise ValueError(f"residual gate mode must be anonymize or quarantine, got {mode!r}")
        self.detector = detector
        self.mode = mode
        self.anonymizer = anonymizer      # the run's method, or None when it cannot take residual faces
        self.fallback = fallback          # mask: irreversible, needs no budget
        self.rounds = int(rounds)
        self.min_coverage = float(min_coverage)
        self.name = name
        # (min_face_px, treatment): faces narrower than that get the run's small-face treatment
        self.small = small

    def residual(self, original: np.ndarray, out: np.ndarray, boxes) -> list[Face]:
        """Faces on ``out`` that the anonymization of ``boxes`` in ``original`` did not cover."""
        mask = anonymized_mask(original, out, boxes)
        return [f for f in self.detector.detect(out) if coverage(mask, f.box) < self.min_coverage]

    def scan(self, original: np.ndarray, out: np.ndarray, faces: list[Face], rng=None) -> GateResult:
        """Scan ``out`` (``original`` with ``faces`` anonymized) and handle what is found
        (module docstring)."""
        boxes = [f.box for f in faces]
        found: list[ResidualFace] = []
        faces = self.residual(original, out, boxes)
        if self.mode == "quarantine":
            return GateResult(out, tuple(ResidualFace(f.box, f.score, "quarantined") for f in faces))
        method, action = (self.anonymizer, "anonymized") if self.anonymizer is not None else (self.fallback, "masked")
        min_px, treat = self.small or (0, None)
        for _ in range(self.rounds):
            if not faces:
                break
            tiny = [f for f in faces if f.width < min_px]
            big = [f for f in faces if f.width >= min_px]
            if big:
                out, _facts = method(out, big, rng)
            if tiny:
                out, _facts = treat(out, tiny, rng)
            found += [ResidualFace(f.box, f.score, action) for f in big]
            found += [ResidualFace(f.box, f.score, "masked") for f in tiny]
            boxes += [f.box for f in faces]
            faces = self.residual(original, out, boxes)
        found += [ResidualFace(f.box, f.score, "unresolved") for f in faces]
        return GateResult(out, tuple(found))

"""The one interface every anonymizer shares, and the facts it reports per face.

An anonymizer takes the decoded image, its faces and a random source, and returns the
new image and one :class:`FaceFacts` per face, in the order of ``faces``. It must leave
every pixel outside its faces' regions untouched. The facts are frozen data that say
exactly what was done; the audit writer (and later the privacy ledger) read only
these facts, never the method's internals.
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import Protocol

import numpy as np

from deid.faces.types import Face


@dataclass(frozen=True)
class FaceFacts:
    method: str
    mechanism: str | None = None     # DP mechanism (laplace/gaussian); None for non-DP methods
    epsilon: float | None = None
    delta: float | None = None
    sensitivity: float | None = None
    noise_scale: float | None = None
    dp_scope: str = "none"           # none | face-latent | heuristic
    test_mode: bool = False          # noise from the seeded, non-DP test path (never in a release)


class Anonymizer(Protocol):
    name: str
    dp_scope: str

    def __call__(self, rgb: np.ndarray, faces: list[Face], rng: np.random.Generator) -> tuple[np.ndarray, list[FaceFacts]]:
        ...

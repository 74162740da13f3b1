"""The one interface every anonymizer shares.

An anonymizer takes the decoded image, its faces and a random source, and returns the
new image and one :class:`deid.facts.FaceFacts` per face, in the order of ``faces``. It must
leave every pixel outside its faces' regions untouched. The facts are frozen data that say
exactly what was done; the audit writer and the privacy ledger read only these facts, never
the method's internals. A DP method states its per-face ``release`` before it draws any
noise (the budget is reserved from it); non-DP methods have ``release = None``.
"""

from __future__ import annotations

from typing import Protocol, runtime_checkable

import numpy as np

from deid.faces.types import Face
from deid.facts import DpRelease, FaceFacts


@runtime_checkable
class Anonymizer(Protocol):
    name: str
    dp_scope: str
    release: DpRelease | None

    def __call__(self, rgb: np.ndarray, faces: list[Face], rng: np.random.Generator) -> tuple[np.ndarray, list[FaceFacts]]:
        ...


__all__ = ["Anonymizer", "DpRelease", "FaceFacts"]

"""The detector and recognizer interfaces every backend, check, evaluation and benchmark uses.

Contract of a :class:`Detector` (conformance: tests/test_plugins_conformance.py):

* ``detect(rgb)`` takes an RGB ``uint8 [h, w, 3]`` image (already EXIF-rotated) and returns
  :class:`~deid.faces.types.Face` objects: ``box`` inside the image in its own pixels
  (``0 <= x0 < x1 <= w``, same for y), a finite ``score``, and ``landmarks5`` in the layout the
  plug-in declares (``landmark_layout``; ``Needs.landmarks`` of its registration).
* ``detect_batch(images)`` returns one list per image; backends that can run several images at
  once override it, the rest inherit the loop in :class:`DetectorBase`.
* A detector loads its models once, in ``__init__``, and keeps no state between calls.

Contract of a :class:`Recognizer` (the identity check's network and the attackers of
``deid evaluate``): ``locate`` finds the geometry of each face once, on the original; ``embed``
applies that same geometry to any image of the same pixel grid (original or anonymized), so a
distance measures the edit and nothing else; ``distance`` is row-wise; faces closer than
``same_person_threshold`` are the same person to that network.
"""

from __future__ import annotations

from typing import Any, Protocol, runtime_checkable

import numpy as np
from pydantic import BaseModel, ConfigDict, Field

from deid.faces.types import Face


class DetectorParams(BaseModel):
    """What every detector accepts. A backend's params model subclasses this one."""

    model_config = ConfigDict(extra="forbid")

    min_score: float = Field(0.0, description="drop detections scoring below this (0: the backend's own default)")
    max_side: int | None = Field(None, ge=64, description="downscale images whose longer side exceeds this "
                                 "before detecting; boxes are mapped back")


@runtime_checkable
class Detector(Protocol):
    landmark_layout: str

    def detect(self, rgb: np.ndarray) -> list[Face]: ...

    def detect_batch(self, images: list[np.ndarray]) -> list[list[Face]]: ...


class DetectorBase:
    """Optional base class: the per-image loop for ``detect_batch``."""

    landmark_layout = "dlib5"

    def detect(self, rgb: np.ndarray) -> list[Face]:  # pragma: no cover - abstract
        raise NotImplementedError

    def detect_batch(self, images: list[np.ndarray]) -> list[list[Face]]:
        return [self.detect(rgb) for rgb in images]


@runtime_checkable
class Recognizer(Protocol):
    name: str
    dim: int
    same_person_threshold: float
    fingerprint: str

    def locate(self, rgb: np.ndarray, faces: list[Any]) -> list[Any]: ...

    def embed(self, rgb: np.ndarray, located: list[Any]) -> np.ndarray: ...

    def distance(self, a: np.ndarray, b: np.ndarray) -> np.ndarray: ...


class RecognizerBase:
    """Optional base class: :meth:`embed_faces` locates and embeds in one call."""

    def embed_faces(self, rgb: np.ndarray, faces: list[Any]) -> np.ndarray:
        return self.embed(rgb, self.locate(rgb, faces))  # type: ignore[attr-defined]

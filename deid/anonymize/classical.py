"""Classical anonymizers: gaussian blur, pixelate, solid mask.

The baselines of every paper in papers/. They are not differentially private and
their facts say ``dp_scope = none``. Strength is relative to the face size so one
setting behaves the same on small and large faces.
"""

from __future__ import annotations

from typing import Annotated, Literal

import cv2
import numpy as np
from pydantic import Field

from deid.anonymize.region import RegionParams, alpha_mask, blend, region_for
from deid.anonymize.registry import METHODS
from deid.faces.types import Face
from deid.facts import FaceFacts
from deid.plugins import Licence, Plugin

Channel = Annotated[int, Field(ge=0, le=255)]


class BlurParams(RegionParams):
    """Gaussian blur; ``strength`` is the kernel sigma as a fraction of the face size.

    The face size is the geometric mean of the detector box width and height, so the
    same setting hides a 40 px face and a 400 px face equally.
    """

    # Default by the attacks of deid evaluate (bench/attack_defaults.py on lfw-dev, MobileFaceNet,
    # docs/evaluation.md): 0.3 is the setting whose identification attacks (naive, trained, aware,
    # reversal) sit nearest 2x chance (worst 3.5%; 0.2: 4.8%); the identity check passes it too.
    strength: float = Field(0.3, gt=0.0, le=2.0, description="sigma / face size")


class PixelateParams(RegionParams):
    """Pixelation into ``blocks`` x ``blocks`` cells across the grown face region."""

    # Default by the attacks (bench/attack_defaults.py, docs/evaluation.md): the reversal attacker
    # (cell means upsampled) re-identifies 8 blocks at 6.1% and 12 at 9.0%; 6 blocks: 3.7%, as 4
    blocks: int = Field(6, ge=1, le=256, description="cells across the grown face region")


class MaskParams(RegionParams):
    """Solid fill of the grown face region."""

    shape: Literal["ellipse", "box"] = Field("box", description="ellipse (inscribed in the grown box) or box")
    feather: float = Field(0.0, ge=0.0, le=1.0, description="soft edge outside the region, fraction of face size")
    color: tuple[Channel, Channel, Channel] = Field((0, 0, 0), description="RGB fill colour")


class _Classical:
    name = ""
    dp_scope = "none"
    release = None
    params_model = BlurParams

    def __init__(self, params: dict | None = None):
        self.params = self.params_model.model_validate(params or {})

    def _edit(self, window: np.ndarray, face: Face, reg) -> np.ndarray:  # pragma: no cover - abstract
        raise NotImplementedError

    def _pad(self, face: Face) -> float:
        return 0.0

    def __call__(self, rgb: np.ndarray, faces: list[Face], rng: np.random.Generator | None = None):
        out = np.array(rgb, copy=True)
        facts = []
        p = self.params
        for face in faces:
            reg = region_for(face, out.shape[:2], p.margin, p.feather, pad=self._pad(face))
            if reg.wx1 <= reg.wx0 or reg.wy1 <= reg.wy0:
                facts.append(FaceFacts(method=self.name))
                continue
            # edit from the original pixels so overlapping faces do not compound
            window = rgb[reg.wy0 : reg.wy1, reg.wx0 : reg.wx1]
            edited = self._edit(window, face, reg)
            alpha = alpha_mask(reg, p.shape, p.feather * face.size)
            blend(out, reg, edited, alpha)
            facts.append(FaceFacts(method=self.name))
        return out, facts


class Blur(_Classical):
    name = "blur"
    params_model = BlurParams

    def _sigma(self, face: Face) -> float:
        return max(0.5, self.params.strength * face.size)

    def _pad(self, face: Face) -> float:
        # context so the blur near the region edge averages real neighbours
        return 3.0 * self._sigma(face)

    def _edit(self, window, face, reg):
        sigma = self._sigma(face)
        # Blur a downscaled copy when sigma is large: same result, a fraction of the cost.
        f = min(1.0, 4.0 / sigma) if sigma > 4.0 else 1.0
        if f < 1.0:
            h, w = window.shape[:2]
            small = cv2.resize(window, (max(1, round(w * f)), max(1, round(h * f))), interpolation=cv2.INTER_AREA)
            small = cv2.GaussianBlur(small, (0, 0), sigmaX=sigma * f, borderType=cv2.BORDER_REFLECT)
            return cv2.resize(small, (w, h), interpolation=cv2.INTER_LINEAR)
        return cv2.GaussianBlur(window, (0, 0), sigmaX=sigma, borderType=cv2.BORDER_REFLECT)


class Pixelate(_Classical):
    name = "pixelate"
    params_model = PixelateParams

    def _edit(self, window, face, reg):
        h, w = window.shape[:2]
        # cells are sized on the grown region, so `blocks` cells span the face region
        cell = max(1.0, max(reg.gx1 - reg.gx0, reg.gy1 - reg.gy0) / self.params.blocks)
        sw, sh = max(1, int(round(w / cell))), max(1, int(round(h / cell)))
        small = cv2.resize(window, (sw, sh), interpolation=cv2.INTER_AREA)
        return cv2.resize(small, (w, h), interpolation=cv2.INTER_NEAREST)


class Mask(_Classical):
    name = "mask"
    params_model = MaskParams

    def _edit(self, window, face, reg):
        return np.broadcast_to(np.array(self.params.color, dtype=np.uint8), window.shape)


_CODE = Licence(code="Apache-2.0 (deid)")
for _name, _cls, _summary in (
    ("blur", Blur, "Gaussian blur of the grown face region, sigma relative to the face size; not DP"),
    ("pixelate", Pixelate, "pixelation into blocks x blocks cells across the grown face region; not DP"),
    ("mask", Mask, "solid fill of the grown face region; not DP"),
):
    METHODS.register(Plugin(kind="method", name=_name, params=_cls.params_model, factory=_cls, summary=_summary,
                            licence=_CODE, module=__name__))

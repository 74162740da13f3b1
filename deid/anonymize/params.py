"""Parameters of each anonymization method, validated from `anonymize.params`.

Every method has one pydantic model here. Unknown keys are errors, so a typo in a
manifest ("sigmaa: 3") fails validation instead of silently using a default.

Region geometry shared by the classical methods:

* ``margin``: the detector box is grown by this fraction of its size on every side
  before the method is applied (HOG boxes cut the forehead and the chin).
* ``feather``: width of the soft edge *outside* the grown region, as a fraction of the
  face size. Inside the grown region the method is applied at full strength, so the
  feathering never weakens the face itself.
* ``shape``: ``ellipse`` (inscribed in the grown box) or ``box``.
"""

from __future__ import annotations

from typing import Annotated, Literal

from pydantic import BaseModel, ConfigDict, Field

Channel = Annotated[int, Field(ge=0, le=255)]


class _Params(BaseModel):
    model_config = ConfigDict(extra="forbid", frozen=True)

    margin: float = Field(0.25, ge=0.0, le=2.0, description="grow the face box by this fraction per side")
    feather: float = Field(0.1, ge=0.0, le=1.0, description="soft edge outside the region, fraction of face size")
    shape: Literal["ellipse", "box"] = "ellipse"


class BlurParams(_Params):
    """Gaussian blur; ``strength`` is the kernel sigma as a fraction of the face size.

    The face size is the geometric mean of the detector box width and height, so the
    same setting hides a 40 px face and a 400 px face equally.
    """

    strength: float = Field(0.12, gt=0.0, le=2.0, description="sigma / face size")


class PixelateParams(_Params):
    """Pixelation into ``blocks`` x ``blocks`` cells across the grown face region."""

    blocks: int = Field(8, ge=1, le=256, description="cells across the grown face region")


class MaskParams(_Params):
    """Solid fill of the grown face region."""

    shape: Literal["ellipse", "box"] = "box"
    feather: float = Field(0.0, ge=0.0, le=1.0)
    color: tuple[Channel, Channel, Channel] = Field((0, 0, 0), description="RGB fill colour")


PARAMS_BY_METHOD: dict[str, type[_Params]] = {
    "blur": BlurParams,
    "pixelate": PixelateParams,
    "mask": MaskParams,
}

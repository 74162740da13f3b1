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

from pydantic import BaseModel, ConfigDict, Field, model_validator

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

    # Default by measurement (bench/sweep_defaults.py on lfw-public-ref, docs/benchmarks.md):
    # the weakest strength whose pass rate at the check threshold reaches the solid-mask ceiling.
    strength: float = Field(0.2, gt=0.0, le=2.0, description="sigma / face size")


class PixelateParams(_Params):
    """Pixelation into ``blocks`` x ``blocks`` cells across the grown face region."""

    blocks: int = Field(8, ge=1, le=256, description="cells across the grown face region")


class MaskParams(_Params):
    """Solid fill of the grown face region."""

    shape: Literal["ellipse", "box"] = "box"
    feather: float = Field(0.0, ge=0.0, le=1.0)
    color: tuple[Channel, Channel, Channel] = Field((0, 0, 0), description="RGB fill colour")


class _LatentParams(BaseModel):
    """Shared by the latent-space methods: the face is aligned to the latent model's crop,
    edited in the latent space, decoded and pasted back through the model's soft face oval
    (``feather`` is that oval's soft edge, as a fraction of the crop size)."""

    model_config = ConfigDict(extra="forbid", frozen=True)

    feather: float = Field(0.06, ge=0.0, le=0.5, description="soft edge of the face oval, fraction of the crop")


class DPImageParams(_LatentParams):
    """DP-Image: clip the latent to public bounds, add calibrated noise, project onto the
    public prior (post-processing), decode."""

    # Defaults by measurement on lfw-dev (docs/privacy.md): under the built-in model's public
    # bounds every epsilon <= 30 already yields the public average face, so the strongest
    # guarantee costs nothing visible; noising the leading 32 components matches all 128.
    epsilon: float = Field(1.0, gt=0.0, le=1e6, description="per-face privacy budget of one release")
    delta: float = Field(0.0, ge=0.0, lt=1.0, description="gaussian only: the delta of (epsilon, delta)-DP")
    mechanism: Literal["laplace", "gaussian"] = "laplace"
    noise_dims: int | None = Field(
        32, ge=1, description="noise only the first k latent dimensions; the rest are replaced by public means (still DP); null: all"
    )
    post: Literal["posterior-mean", "posterior-sample", "none"] = Field(
        "posterior-mean", description="post-processing of the noisy latent onto the public prior (free under DP)"
    )
    test_seed: int | None = Field(
        None, description="TEST MODE ONLY: deterministic, non-DP noise; marked in the audit (dp_test_mode)"
    )

    @model_validator(mode="after")
    def _delta_fits_mechanism(self) -> "DPImageParams":
        if self.mechanism == "gaussian" and self.delta <= 0:
            raise ValueError("delta must be > 0 for the gaussian mechanism")
        if self.mechanism == "laplace" and self.delta != 0:
            raise ValueError("delta must be 0 for the laplace mechanism (pure epsilon-DP)")
        return self


class DeepBlurParams(_LatentParams):
    """DeepBlur: Gaussian low-pass of the (standardised) latent along its layout. Not DP."""

    sigma: float = Field(4.0, gt=0.0, le=1e6, description="width of the low-pass, in latent dimensions")


PARAMS_BY_METHOD: dict[str, type[BaseModel]] = {
    "blur": BlurParams,
    "pixelate": PixelateParams,
    "mask": MaskParams,
    "dp-image": DPImageParams,
    "deepblur": DeepBlurParams,
}

#: methods whose releases are charged to the privacy ledger
DP_METHODS = frozenset({"dp-image"})
#: methods that need a latent model
LATENT_METHODS = frozenset({"dp-image", "deepblur"})

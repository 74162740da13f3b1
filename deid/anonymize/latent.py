"""Latent-space anonymizers: DP-Image (papers/dp-image.txt) and DeepBlur (papers/deepblur.txt).

Both align each face to the latent model's canonical crop, encode it, edit the code,
decode, and paste the decoded face back through the model's soft face oval; pixels
outside the oval's window are untouched.

DP-Image (``dp_scope = face-latent``): the code is clipped to the model's PUBLIC bounds,
so the sensitivity is a property of the bounds; calibrated noise is drawn by
:class:`deid.privacy.mechanisms.LatentMechanism` (OpenDP's sampler, OS entropy); then the
noisy code is post-processed onto the public prior -- the posterior mean (or a posterior
sample) of each dimension under the public per-dimension distribution truncated to the
bounds. Post-processing touches only the noisy release and public numbers, so it costs no
privacy. The guarantee covers the face region that passes through the latent; what lies
outside it (background, hair outside the oval, undetected faces) is not protected by it.

DeepBlur (``dp_scope = none``): a Gaussian low-pass of the standardised code along the
latent layout (component index); ``sigma`` -> infinity gives the public average face.
It is not differentially private.
"""

from __future__ import annotations

import hashlib
from typing import Literal

import numpy as np
from pydantic import BaseModel, ConfigDict, Field, model_validator

from deid.anonymize.registry import METHODS
from deid.faces.align import align
from deid.faces.types import Face
from deid.facts import FaceFacts
from deid.latent import LatentModel, load_latent_model, paste_back
from deid.plugins import Licence, Needs, Plugin


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
    mechanism: Literal["laplace", "gaussian"] = Field(
        "laplace", description="laplace: pure epsilon-DP (L1 sensitivity); gaussian: (epsilon, delta)-DP, discrete Gaussian")
    noise_dims: int | None = Field(
        32, ge=1, description="noise only the first k latent dimensions; the rest are replaced by public means (still DP); null: all"
    )
    # Default by the attacks (bench/attack_defaults.py on lfw-dev, docs/privacy.md): a posterior
    # sample is a fresh face per release; the mean is one average face that links a person's
    # photos (T3 11.8% vs 58.9%, aware attacker 16.0% vs 26.7%, naive T1 7.9% vs 6.8%)
    post: Literal["posterior-mean", "posterior-sample", "none"] = Field(
        "posterior-sample", description="post-processing of the noisy latent onto the public prior (free under DP)"
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

#: grid points per dimension for the exact posterior over the (bounded) public prior
_GRID = 257


class _LatentMethod:
    name = ""
    dp_scope = "none"
    release = None
    params_model = DeepBlurParams

    def __init__(self, params: dict | None = None, model: LatentModel | dict | str | None = None):
        self.params = self.params_model.model_validate(params or {})
        self.model = model if isinstance(model, LatentModel) else load_latent_model(model)
        self._mask = self.model.mask(self.params.feather)

    def crops(self, rgb: np.ndarray, faces: list[Face]) -> tuple[np.ndarray, list[np.ndarray]]:
        m = self.model
        crops, mats = [], []
        for f in faces:
            pts = f.landmarks5
            if f.landmark_layout != m.layout:
                if m.layout != "dlib5":
                    raise ValueError(f"latent model {m.name} aligns on {m.layout} landmarks, "
                                     f"the detector gives {f.landmark_layout}")
                from deid.faces.dlib_backend import dlib5_points

                pts = dlib5_points(rgb, f)  # dlib's 5-point model inside the face's box
            crop, mat = align(rgb, pts, m.crop_size, layout=m.layout, scale=m.align_scale)
            crops.append(crop)
            mats.append(mat)
        return np.stack(crops) if crops else np.zeros((0, m.crop_size, m.crop_size, 3), np.uint8), mats

    def edit(self, z: np.ndarray, rng) -> tuple[np.ndarray, list[FaceFacts]]:  # pragma: no cover - abstract
        raise NotImplementedError

    def __call__(self, rgb: np.ndarray, faces: list[Face], rng: np.random.Generator | None = None):
        if not faces:
            return np.array(rgb, copy=True), []
        crops, mats = self.crops(rgb, faces)
        z = self.model.encode(crops)
        z_new, facts = self.edit(z, rng)
        decoded = self.model.decode(z_new)
        out = np.array(rgb, copy=True)
        for crop, mat in zip(decoded, mats):
            paste_back(out, crop, mat, self._mask, inplace=True)
        return out, facts


class DeepBlur(_LatentMethod):
    name = "deepblur"
    dp_scope = "none"
    params_model = DeepBlurParams

    def edit(self, z: np.ndarray, rng=None):
        from scipy.ndimage import gaussian_filter1d

        m = self.model
        u = (z - m.mean) / m.std
        u = gaussian_filter1d(u, sigma=self.params.sigma, axis=1, mode="constant", cval=0.0, truncate=4.0)
        return m.mean + m.std * u, [FaceFacts(method=self.name, scope="none") for _ in range(len(z))]


class DPImage(_LatentMethod):
    name = "dp-image"
    params_model = DPImageParams

    def __init__(self, params: dict | None = None, model: LatentModel | dict | str | None = None):
        super().__init__(params, model)
        from deid.privacy.mechanisms import LatentMechanism

        p, m = self.params, self.model
        dims = None
        if p.noise_dims is not None:
            if p.noise_dims > m.dim:
                raise ValueError(f"noise_dims={p.noise_dims} exceeds the latent model's {m.dim} dimensions")
            dims = np.zeros(m.dim, dtype=bool)
            dims[: p.noise_dims] = True
        self.mechanism = LatentMechanism(m.lower, m.upper, mechanism=p.mechanism, epsilon=p.epsilon, delta=p.delta,
                                         noise_dims=dims, public_values=m.mean)
        self.dp_scope = self.mechanism.dp_scope
        self.calibrated = self.mechanism.calibrated
        self.release = self.calibrated.release()  # what each face costs, known before any draw
        self._noise_mask = self.mechanism.mask
        # the public prior of each dimension, truncated to the bounds, on a grid
        t = np.linspace(0.0, 1.0, _GRID)
        self._grid = m.lower[:, None] + (m.upper - m.lower)[:, None] * t[None, :]
        self._log_prior = -0.5 * ((self._grid - m.mean[:, None]) / m.std[:, None]) ** 2

    def facts(self, test_mode: bool = False, scope: str | None = None) -> FaceFacts:
        """One face's facts: this method's release (the same object the ledger is charged from)."""
        return FaceFacts(method=self.name, scope=scope or self.dp_scope, dp=self.release, test_mode=test_mode)

    def posterior(self, y: np.ndarray, rng: np.random.Generator | None) -> np.ndarray:
        """Post-process one noisy code ``y`` onto the public prior (no privacy cost)."""
        mode = self.params.post
        if mode == "none":
            return y
        c = self.calibrated
        out = np.array(y, dtype=np.float64, copy=True)
        k = self._noise_mask
        g, lp, yk = self._grid[k], self._log_prior[k], y[k][:, None]
        if c.mechanism == "laplace":
            ll = -np.abs(yk - g) / c.noise_scale
        else:
            ll = -0.5 * ((yk - g) / c.noise_scale) ** 2
        logw = lp + ll
        w = np.exp(logw - logw.max(axis=1, keepdims=True))
        w /= w.sum(axis=1, keepdims=True)
        if mode == "posterior-mean":
            out[k] = (w * g).sum(axis=1)
        else:
            rng = rng if rng is not None else np.random.default_rng()
            cdf = np.cumsum(w, axis=1)
            u = rng.random(len(cdf))[:, None]
            idx = np.minimum((cdf < u).sum(axis=1), g.shape[1] - 1)
            out[k] = g[np.arange(len(g)), idx]
        return out

    def edit(self, z: np.ndarray, rng=None):
        out, facts = [], []
        seed = self.params.test_seed
        for zi in z:
            # test mode: the seed mixes in the face's own code, so faces never share noise
            face_seed = None if seed is None else int.from_bytes(
                hashlib.sha256(np.float64(seed).tobytes() + np.ascontiguousarray(zi).tobytes()).digest()[:8], "big")
            noised = self.mechanism(zi, test_seed=face_seed)
            # test mode: the posterior sample is seeded too (deterministic end to end, still marked)
            post_rng = rng if face_seed is None else np.random.default_rng(face_seed)
            out.append(self.posterior(np.asarray(noised.z), post_rng))
            facts.append(self.facts(test_mode=noised.test_mode, scope=noised.dp_scope))
        return np.stack(out), facts


def _latent_method(cls):
    return lambda params, latent=None: cls(params, latent)


METHODS.register(Plugin(
    kind="method", name="deepblur", params=DeepBlurParams, factory=_latent_method(DeepBlur),
    summary="DeepBlur (papers/deepblur.txt): Gaussian low-pass of the face's latent code, decoded and pasted "
            "through the face oval; not DP",
    licence=Licence(code="Apache-2.0 (deid)"), needs=Needs(latent="any"), module=__name__,
))
METHODS.register(Plugin(
    kind="method", name="dp-image", params=DPImageParams, factory=_latent_method(DPImage),
    summary="DP-Image (papers/dp-image.txt): latent clipped to public bounds, calibrated Laplace/Gaussian noise "
            "(OpenDP sampler), projected onto the public prior, decoded; every face charged to the ledger",
    licence=Licence(code="Apache-2.0 (deid)"), needs=Needs(latent="any", dp=True), module=__name__,
))

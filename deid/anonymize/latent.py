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

Over a generator (``latent.backend`` of kind ``generator``, e.g. mobilestylegan) both methods
take the generator path (docs/latent.md):

1. the face is aligned to the generator's FFHQ crop and its w+ is found by latent search
   (:mod:`deid.latent.search`: L-BFGS from the public mean w, or from ``encoder``'s w+, for
   ``search_steps`` forward+backward passes);
2. DeepBlur: a 2-D Gaussian low-pass (``sigma``, in layers and dimensions) of the standardised
   w+ ``(w+ - mean) / std`` with zero (the mean) outside, as in the paper's filter over omega.
   DP-Image: the layers' average w, its coordinates on the PUBLIC principal axes of w (mapped
   samples of the generator: :meth:`GeneratorModel.pca_bounds`), clipped to those axes' public
   quantile bounds, calibrated noise on the leading ``noise_dims`` coordinates (the same
   :class:`LatentMechanism` and post-processing as above), the other coordinates the public
   mean, decoded as that w on every layer;
3. the decoded face is drawn back through the alignment and blended with synthetic-swap's seam
   (:func:`deid.anonymize.swap_ops.blend_region`): the face mesh's region, Lab colour match,
   soft edge inside the region; a face without a valid mesh gets the generator's face oval.
   DP-Image with a posterior sample: a decoded stranger whose own face covers under
   ``min_cover`` of the region it goes into (turned, smaller or shifted: its background, hair or
   collar would show inside the region) or, with the whole oval (``keep_forehead: false``), whose
   forehead is not bare skin (bangs, a cap: ``forehead_clear`` under ``min_forehead``) is drawn
   again from the posterior of the same noisy code, at most ``redraws`` times, and the best fit
   kept. The choice reads the noisy release, fresh randomness and the region's outline (the
   original's mesh, which the region releases anyway): no new charge, no new noise.
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
from deid.latent.search import DEFAULT_STEPS
from deid.plugins import Licence, Needs, Plugin, path_field

#: params of the generator path only (a codec latent model refuses them when set)
GENERATOR_FIELDS = ("encoder", "search_steps", "search_optimizer", "search_device", "keep_forehead", "blend",
                    "blend_feather", "colour_match")
#: DeepBlur's sigma when the params give none
DEFAULT_SIGMA = {"codec": 4.0, "generator": 1.0}


class _LatentParams(BaseModel):
    """Shared by the latent-space methods: the face is aligned to the latent model's crop,
    edited in the latent space, decoded and pasted back through the model's soft face oval
    (``feather`` is that oval's soft edge, as a fraction of the crop size)."""

    model_config = ConfigDict(extra="forbid", frozen=True)

    feather: float = Field(0.06, ge=0.0, le=0.5, description="soft edge of the face oval, fraction of the crop")
    # the generator path (latent.backend a generator); refused with a codec latent model
    encoder: str | None = path_field(
        None, description="generator latent only: an encoder (deid.latent.encoder) whose w+ starts the latent "
        "search; null: the search starts from the public mean w")
    search_steps: int | None = Field(
        None, ge=0, le=10_000, description="generator latent only: forward+backward passes of the latent search "
        f"per face (0: the start as it is); null: {DEFAULT_STEPS['cpu']} on the CPU (~3.5 s each per face), "
        f"{DEFAULT_STEPS['cuda']} on CUDA")
    search_optimizer: Literal["lbfgs", "adam"] = Field(
        "lbfgs", description="generator latent only: lbfgs (the paper's; one face at a time) or adam (batched)")
    search_device: str = Field("auto", description="generator latent only: auto | cpu | cuda | cuda:N (auto: CUDA "
                               "when the actor holds a GPU)")
    keep_forehead: bool = Field(False, description="generator latent only: true: the region is jaw line to brows; "
                                "false: the whole face oval (synthetic-swap's region)")
    blend: Literal["feather", "poisson"] = Field("feather", description="generator latent only: soft edge inside the "
                                                 "region, or Poisson blending")
    blend_feather: float = Field(0.2, ge=0.0, le=1.0, description="generator latent only: soft edge width inside the "
                                 "region, x the eye distance")
    colour_match: bool = Field(True, description="generator latent only: match the decoded face's skin Lab mean and "
                               "contrast to the original's skin (face mesh; those 6 numbers pass unprotected: "
                               "docs/privacy.md)")


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
    # Defaults as synthetic-swap's min_forehead (docs/privacy.md: measured on lfw-dev)
    min_forehead: float = Field(
        0.75, ge=0.0, le=1.0, description="generator latent only, with post posterior-sample and keep_forehead "
        "false: a decoded stranger whose forehead band is less than this fraction skin (bangs, a cap over the "
        "photo's forehead) is drawn again from the same posterior (post-processing: no privacy cost); 0: off")
    min_cover: float = Field(
        0.9, ge=0.0, le=1.0, description="generator latent only, with post posterior-sample: a decoded stranger "
        "whose own face covers less than this fraction of the region it goes into (a turned or smaller face, whose "
        "background, hair or collar would show inside it) is drawn again from the same posterior; 0: off")
    redraws: int = Field(3, ge=0, le=20, description="generator latent only: at most this many more posterior "
                         "draws per face for min_cover and min_forehead (each one decode); the best fit is kept")

    @model_validator(mode="after")
    def _delta_fits_mechanism(self) -> "DPImageParams":
        if self.mechanism == "gaussian" and self.delta <= 0:
            raise ValueError("delta must be > 0 for the gaussian mechanism")
        if self.mechanism == "laplace" and self.delta != 0:
            raise ValueError("delta must be 0 for the laplace mechanism (pure epsilon-DP)")
        return self


class DeepBlurParams(_LatentParams):
    """DeepBlur: Gaussian low-pass of the (standardised) latent along its layout. Not DP."""

    sigma: float | None = Field(None, gt=0.0, le=1e6, description="width of the low-pass, in latent dimensions "
                                "(a generator: in w+ layers and dimensions); null: 4 (codec), 1 (generator: the "
                                "paper's strongest)")

#: grid points per dimension for the exact posterior over the (bounded) public prior
_GRID = 257


class _LatentMethod:
    name = ""
    dp_scope = "none"
    release = None
    params_model = DeepBlurParams
    #: this method's own params of the generator path (besides GENERATOR_FIELDS)
    generator_only: tuple[str, ...] = ()

    def __init__(self, params: dict | None = None, model: LatentModel | dict | str | None = None):
        self.params = self.params_model.model_validate(params or {})
        self.model = model if isinstance(model, LatentModel) else load_latent_model(model)
        self._mask = self.model.mask(self.params.feather)
        #: the generator path (see the module docstring)
        self.generator = hasattr(self.model, "decode_ws")
        p = self.params
        if not self.generator:
            # a manifest hands over every field with its default: refuse the ones set to anything else
            fields = GENERATOR_FIELDS + self.generator_only
            given = [k for k in fields if getattr(p, k) != type(p).model_fields[k].default]
            if given:
                raise ValueError(f"anonymize.params.{given[0]}: applies to a generator latent model only "
                                 f"(latent.backend mobilestylegan); {self.model.name} is a codec: remove "
                                 f"{', '.join(given)}")
            return
        from deid.latent.search import default_steps, search_device

        self.search_device = search_device(p.search_device)
        self.search_steps = default_steps(self.search_device) if p.search_steps is None else p.search_steps
        self._encoder = None
        self._mesher = None

    @property
    def audit_params(self) -> dict | None:
        """The params as this run resolved them, for the audit's ``params_json`` on the generator
        path (the search steps and device a manifest may leave to the machine, DeepBlur's sigma);
        None on a codec (the audit records the manifest's params as they are)."""
        if not self.generator:
            return None
        out = self.params.model_dump(mode="json")
        out.update(search_steps=self.search_steps, search_device=str(self.search_device))
        return out

    # ------------------------------------------------------------------ the generator path
    def encoder(self):
        if self._encoder is None and self.params.encoder is not None:
            from deid.latent.encoder import load_encoder  # another module's contract: loaded only when named

            enc = load_encoder(self.params.encoder, device=str(self.search_device))
            gfp = getattr(enc, "generator_fingerprint", None)
            if gfp not in (self.model.weights_fingerprint, self.model.fingerprint):
                raise ValueError(f"anonymize.params.encoder: {self.params.encoder} was trained for another generator "
                                 f"(its generator fingerprint {str(gfp)[:12]} is not {self.model.name}'s); use an "
                                 "encoder of this generator or none")
            self._encoder = enc
        return self._encoder

    def search(self, crops: np.ndarray) -> np.ndarray:
        """w+ ``[n, num_ws, w_dim]`` of aligned generator crops: the encoder's (if any), refined by
        ``search_steps`` passes of latent search."""
        from deid.latent.search import invert

        p = self.params
        enc = self.encoder()
        init = None if enc is None else np.asarray(enc.encode(crops), dtype=np.float32)
        res = invert(self.model, crops, steps=self.search_steps, optimizer=p.search_optimizer, init=init,
                     feather=p.feather, device=self.search_device, batch=self.model.batch_size)
        return res.ws

    def mesher(self):
        if self._mesher is None:
            from deid.faces.facemesh_backend import FaceMeshDetector

            self._mesher = FaceMeshDetector()
        return self._mesher

    def paste(self, out: np.ndarray, rgb: np.ndarray, face: Face, crop: np.ndarray, mat: np.ndarray,
              pts: np.ndarray | None) -> str:
        """Blend the decoded ``crop`` into ``out`` over ``face``, whose mesh is ``pts`` (image
        pixels; None: no valid mesh) with synthetic-swap's seam; returns the region used:
        ``mesh``, or ``oval`` when the face has no valid mesh."""
        from deid.anonymize.swap import mesh_points
        from deid.anonymize.swap_ops import blend_region, composite, warp_similarity

        p = self.params
        def decoded_mesh(win, pixels):
            # the decoded face's own mesh, for its skin (blend_region): it sits near, not on, the original's
            x0, y0, x1, y1 = win
            canvas = np.array(rgb, copy=True)
            canvas[y0:y1, x0:x1] = pixels
            return mesh_points(self.mesher(), canvas, face, own=False)

        res = None if pts is None else blend_region(
            rgb, pts, lambda win: warp_similarity(crop, mat, win), keep_forehead=p.keep_forehead,
            feather=p.blend_feather, poisson=p.blend == "poisson", colour=p.colour_match,
            render_points=decoded_mesh if p.colour_match else None)
        if res is None:
            paste_back(out, crop, mat, self._mask, inplace=True)
            return "oval"
        composite(out, res)
        return "mesh"

    def edit_ws(self, ws: np.ndarray, rng) -> tuple[np.ndarray, list[FaceFacts]]:  # pragma: no cover - abstract
        raise NotImplementedError

    def decode_faces(self, ws: np.ndarray, rng, targets: list[np.ndarray | None]) -> tuple[np.ndarray, list[FaceFacts]]:
        """The decoded crops ``[n, s, s, 3]`` and facts of the searched w+ ``ws``; ``targets``:
        each face's mesh in the crop's frame (None: no valid mesh), for a method that chooses
        among draws by how they fit the region (:meth:`DPImage.decode_faces`)."""
        ws_new, facts = self.edit_ws(ws, rng)
        return self.model.decode_ws(ws_new), facts

    def _generator_call(self, rgb: np.ndarray, faces: list[Face], rng):
        from deid.anonymize.swap import mesh_points

        m = self.model
        aligned = [m.align(rgb, f) for f in faces]
        crops = np.stack([c for c, _ in aligned])
        meshes = [mesh_points(self.mesher(), rgb, f) for f in faces]  # once: the region, and its fit
        targets = [None if pts is None else pts @ np.asarray(mat)[:, :2].T + np.asarray(mat)[:, 2]
                   for pts, (_, mat) in zip(meshes, aligned)]
        decoded, facts = self.decode_faces(self.search(crops), rng, targets)
        out = np.array(rgb, copy=True)
        regions = [self.paste(out, rgb, f, crop, mat, pts)
                   for f, crop, (_, mat), pts in zip(faces, decoded, aligned, meshes)]
        facts = [FaceFacts(method=f.method, scope=f.scope, dp=f.dp, test_mode=f.test_mode,
                           extra={**dict(f.extra), "region": r}) for f, r in zip(facts, regions)]
        return out, facts

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
        if self.generator:
            return self._generator_call(rgb, faces, rng)
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

    @property
    def sigma(self) -> float:
        s = self.params.sigma
        return DEFAULT_SIGMA["generator" if self.generator else "codec"] if s is None else s

    @property
    def audit_params(self) -> dict | None:
        out = super().audit_params
        return None if out is None else {**out, "sigma": self.sigma}

    def edit(self, z: np.ndarray, rng=None):
        from scipy.ndimage import gaussian_filter1d

        m = self.model
        u = (z - m.mean) / m.std
        u = gaussian_filter1d(u, sigma=self.sigma, axis=1, mode="constant", cval=0.0, truncate=4.0)
        return m.mean + m.std * u, [FaceFacts(method=self.name, scope="none") for _ in range(len(z))]

    def edit_ws(self, ws: np.ndarray, rng=None):
        """The paper's 2-D Gaussian over omega = w+ ``[layers, dims]``, standardised by the public
        statistics, zero (the public mean) beyond its edges: sigma -> infinity, the average face."""
        from scipy.ndimage import gaussian_filter

        m = self.model
        u = (np.asarray(ws, dtype=np.float64) - m.mean) / m.std
        u = gaussian_filter(u, sigma=(0.0, self.sigma, self.sigma), mode="constant", cval=0.0, truncate=4.0)
        return m.mean + m.std * u, [FaceFacts(method=self.name, scope="none") for _ in range(len(ws))]


class DPImage(_LatentMethod):
    name = "dp-image"
    params_model = DPImageParams
    generator_only = ("min_cover", "min_forehead", "redraws")

    def __init__(self, params: dict | None = None, model: LatentModel | dict | str | None = None):
        super().__init__(params, model)
        from deid.privacy.mechanisms import LatentMechanism

        p = self.params
        #: where the noise goes: the codec's own latent, or a generator's public principal axes of w
        m = self.space = _PublicAxes(self.model) if self.generator else self.model
        dims = None
        if p.noise_dims is not None:
            if p.noise_dims > m.dim:
                raise ValueError(f"noise_dims={p.noise_dims} exceeds the latent model's {m.dim} dimensions")
            if self.generator and p.noise_dims > self.model.stats.samples - 1:
                raise ValueError(f"noise_dims={p.noise_dims}: the public statistics of {self.model.name} span "
                                 f"{self.model.stats.samples - 1} axes (latent.stats_samples); noise fewer")
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

    def noise(self, z: np.ndarray, rng=None) -> list[tuple[np.ndarray, np.random.Generator | None, FaceFacts]]:
        """Each code clipped and noised (the DP release), with the generator its posterior
        draws take and the face's facts."""
        out = []
        seed = self.params.test_seed
        for zi in z:
            # test mode: the seed mixes in the face's own code, so faces never share noise
            face_seed = None if seed is None else int.from_bytes(
                hashlib.sha256(np.float64(seed).tobytes() + np.ascontiguousarray(zi).tobytes()).digest()[:8], "big")
            noised = self.mechanism(zi, test_seed=face_seed)
            # test mode: the posterior sample is seeded too (deterministic end to end, still marked)
            post_rng = rng if face_seed is None else np.random.default_rng(face_seed)
            out.append((np.asarray(noised.z), post_rng, self.facts(test_mode=noised.test_mode, scope=noised.dp_scope)))
        return out

    def edit(self, z: np.ndarray, rng=None):
        noisy = self.noise(z, rng)
        return np.stack([self.posterior(y, r) for y, r, _ in noisy]), [f for _, _, f in noisy]

    # ------------------------------------------------------------------ the generator path
    @property
    def redraws_on(self) -> bool:
        p = self.params
        return p.post == "posterior-sample" and p.redraws > 0 and (p.min_cover > 0 or (
            p.min_forehead > 0 and not p.keep_forehead))

    def draw_fit(self, crop: np.ndarray, target: np.ndarray | None) -> tuple[float, float] | None:
        """How well a decoded crop fits where it goes: ``(cover, forehead)``, ``cover`` the
        fraction of the face region ``target`` (the original's mesh in the crop's frame; None: no
        region) inside the decoded face's own region, ``forehead`` its
        :func:`deid.anonymize.swap_ops.forehead_clear`; both on the decoded face's own mesh at
        512 px; None when the mesh finds no single face on it."""
        import cv2

        from deid.anonymize.swap_ops import forehead_clear, region_polygon

        f = min(1.0, 512 / max(crop.shape[:2]))
        small = cv2.resize(crop, None, fx=f, fy=f, interpolation=cv2.INTER_AREA) if f < 1 else crop
        got = self.mesher().detect(small)
        if len(got) != 1 or got[0].mesh is None:
            return None
        pts = got[0].mesh[:, :2]
        cover = 1.0
        if target is not None:
            kf = self.params.keep_forehead
            own, want = np.zeros(small.shape[:2], np.uint8), np.zeros(small.shape[:2], np.uint8)
            cv2.fillPoly(own, [np.round(region_polygon(pts, kf) * 16).astype(np.int32)], 1, shift=4)
            cv2.fillPoly(want, [np.round(region_polygon(np.asarray(target) * f, kf) * 16).astype(np.int32)], 1, shift=4)
            cover = float((own & want).sum() / want.sum()) if want.sum() else 1.0
        return cover, (1.0 if self.params.keep_forehead else forehead_clear(small, pts))

    def _fit_score(self, fit: tuple[float, float] | None) -> float:
        """1 when a draw meets ``min_cover`` and ``min_forehead``, less by how far it falls short."""
        if fit is None:
            return 0.0
        p = self.params
        return min(1.0, fit[0] / p.min_cover if p.min_cover > 0 else 1.0,
                   fit[1] / p.min_forehead if p.min_forehead > 0 else 1.0)

    def decode_faces(self, ws: np.ndarray, rng, targets: list[np.ndarray | None]) -> tuple[np.ndarray, list[FaceFacts]]:
        """w+ -> the layers' average w -> its public-axes coordinates -> :meth:`noise` (clip,
        noise: the release) -> a posterior draw -> w on every layer -> decoded; with redraws
        (:attr:`redraws_on`), more draws of the same release while the decoded face does not fit
        its ``targets`` region (:meth:`draw_fit`), the best kept."""
        m, space = self.model, self.space

        def decode(codes):
            return m.decode_ws(m.broadcast(space.w(np.stack(codes))))

        noisy = self.noise(space.coordinates(ws), rng)
        decoded = decode([self.posterior(y, r) for y, r, _ in noisy])  # the first draws, one batch
        if self.redraws_on:
            for i, ((y, r, _), target) in enumerate(zip(noisy, targets)):
                best, tries = self._fit_score(self.draw_fit(decoded[i], target)), 0
                while best < 1.0 and tries < self.params.redraws:
                    tries += 1
                    again = decode([self.posterior(y, r)])[0]
                    score = self._fit_score(self.draw_fit(again, target))
                    if score > best:
                        best, decoded[i] = score, again
        return decoded, [f for _, _, f in noisy]


class _PublicAxes:
    """A generator's w on its PUBLIC principal axes (:class:`deid.latent.generator.WStats`): the
    coordinates ``(w - mean) @ components.T``, their bounds the public quantiles of the mapped
    samples' coordinates (:meth:`GeneratorModel.pca_bounds`), mean 0 and std the components' std
    (the prior the post-processing projects onto). Nothing of any record enters these numbers."""

    def __init__(self, model):
        st = model.stats
        self.stats = st
        self.w_lower, self.w_upper = model.lower, model.upper
        self.dim = int(model.w_dim)
        self.lower, self.upper = model.pca_bounds()
        self.mean = np.zeros(self.dim)
        self.std = np.maximum(st.component_std, 1e-12)

    def coordinates(self, ws: np.ndarray) -> np.ndarray:
        """``[n, w_dim]``: the coordinates of the layers' average w of each w+ ``[n, L, w_dim]``,
        after clipping it to the public bounds of w (a search's w+ already is: this makes the map
        total, any finite or infinite input giving finite coordinates)."""
        ws = np.asarray(ws, dtype=np.float64)
        if np.isnan(ws).any():
            raise ValueError("w+ must not contain NaN")
        return self.stats.to_pca(np.clip(ws, self.w_lower, self.w_upper).mean(axis=1))

    def w(self, c: np.ndarray) -> np.ndarray:
        return self.stats.from_pca(c)


def _latent_method(cls):
    return lambda params, latent=None: cls(params, latent)


METHODS.register(Plugin(
    kind="method", name="deepblur", params=DeepBlurParams, factory=_latent_method(DeepBlur),
    summary="DeepBlur (papers/deepblur.txt): Gaussian low-pass of the face's latent code, decoded and pasted "
            "through the face oval (a generator: latent search for w+, 2-D low-pass, synthetic-swap's seam); not DP",
    licence=Licence(code="Apache-2.0 (deid)"), needs=Needs(latent="codec|generator"), module=__name__,
))
METHODS.register(Plugin(
    kind="method", name="dp-image", params=DPImageParams, factory=_latent_method(DPImage),
    summary="DP-Image (papers/dp-image.txt): latent clipped to public bounds, calibrated Laplace/Gaussian noise "
            "(OpenDP sampler), projected onto the public prior, decoded (a generator: latent search, noise on the "
            "public principal axes of w, synthetic-swap's seam); every face charged to the ledger",
    licence=Licence(code="Apache-2.0 (deid)"), needs=Needs(latent="codec|generator", dp=True), module=__name__,
))

"""``synthetic-swap``: the whole face replaced by a synthetic stranger that keeps the pose.

After pose-consistent-anonymity.txt (Face Anonymity Based on Facial Pose Consistency): the
identity comes from random sampling of a StyleGAN-family generator only; pose, expression, skin
tone and lighting follow the original. deid's form of it needs no training:

1. a bank of strangers (:mod:`deid.anonymize.strangers`) is generated once per machine from the
   run's generator latent model (random latents, truncation ``truncation``) and cached, each with
   its 468-point face mesh;
2. each face gets the face mesh (MediaPipe's, on the face's box and eyes: any detector's faces,
   the residual-face gate's included); among the ``candidates`` strangers whose pose and
   expression are nearest (Procrustes distance of the meshes), one is drawn at random
   (``stable: fresh``, OS entropy: a fresh stranger per release), or one is chosen by the face's
   subject key (``stable: keyed``: the same stranger for a subject across photos);
3. the stranger is warped onto the original's mesh triangle by triangle, colour-matched in Lab
   skin on skin (its skin's mean and spread take the original's skin's: skin tone, lighting
   level) and blended in with a soft edge inside the region (``blend: feather``) or by Poisson
   blending (``blend: poisson``, the skin's drift corrected after it);
4. the region is the whole face oval (default) or the jaw line to the brows (``keep_forehead``,
   as in the paper); the stranger takes its own proportions (``shape: 0``, default) or the
   original's (``shape: 1``); every pixel outside the region is left untouched.

Not DP: the facts say ``dp_scope = none``. What is kept from the original: the mesh's geometry
(face shape, pose, expression), the skin's mean colour and contrast, and everything outside
the region (hair, ears, forehead with ``keep_forehead``, background): photos of one person stay
linkable through those. ``stable: keyed`` links them on purpose (one stranger per subject).
"""

from __future__ import annotations

import hashlib
import hmac
import logging
import threading
from pathlib import Path
from typing import Any, Literal

import numpy as np
from pydantic import BaseModel, ConfigDict, Field

from deid.anonymize.registry import METHODS
from deid.faces.types import Face
from deid.facts import FaceFacts
from deid.plugins import Licence, Needs, Plugin, path_field

log = logging.getLogger(__name__)


class SwapParams(BaseModel):
    model_config = ConfigDict(extra="forbid", frozen=True)

    bank_size: int = Field(128, ge=8, le=100_000, description="strangers in the bank (built once per machine and "
                           "cached; ~0.5 s each on 2 CPU cores): more strangers, nearer poses and fewer repeats")
    bank_crop: int = Field(320, ge=128, le=1024, description="pixels of each stranger's face crop in the bank")
    bank_dir: str | None = path_field(None, description="where banks are cached (default: $DEID_CACHE_DIR/strangers, "
                                      "else ~/.cache/deid/strangers)")
    truncation: float = Field(0.7, gt=0.0, le=1.0, description="generator truncation psi of the strangers (1: the "
                              "whole latent distribution, more varied and more artefacts)")
    candidates: int = Field(8, ge=1, le=1000, description="fresh: draw the stranger among this many nearest poses")
    stable: Literal["fresh", "keyed"] = Field(
        "fresh", description="fresh: a new random stranger for every face and release; keyed: one stranger per "
        "subject key (input.subjects), across photos (links a subject's photos to each other on purpose)")
    # Defaults by the attacks (docs/synthetic-swap.md, lfw-dev, MobileFaceNet): the whole oval and the
    # stranger's own shape halve T1 against the paper's forehead-kept, warped-onto-the-original form.
    keep_forehead: bool = Field(False, description="true: replace jaw line to brows and keep the forehead (the "
                                "paper); false: the whole face oval up to the hairline")
    blend: Literal["feather", "poisson"] = Field("feather", description="soft edge inside the region, or Poisson "
                                                 "(gradient-domain) blending")
    feather: float = Field(0.2, ge=0.0, le=1.0, description="soft edge width inside the region, x the eye distance")
    colour_match: bool = Field(True, description="match the new face's skin Lab mean and contrast to the original's "
                               "skin (face mesh: jaw line to brows less eyes, brows, lips and nostrils)")
    shape: float = Field(0.0, ge=0.0, le=1.0, description="how much of the original's face shape the stranger "
                         "takes: 1, warped onto the original's mesh; 0, its own shape placed by a similarity fit "
                         "(the original's shape carries identity)")
    key_points: bool = Field(False, description="with shape < 1: move the stranger's eye centres, nose tip and "
                             "mouth corners onto the original's, the move fading toward its own outline (pose kept "
                             "closer; docs/synthetic-swap.md)")
    min_forehead: float = Field(0.75, ge=0.0, le=1.0, description="with keep_forehead false: draw only strangers "
                                "whose forehead is at least this fraction skin (no fringe, cap or scarf over it, "
                                "which would be pasted over the original's forehead); 0: any stranger")
    grow: float = Field(0.0, ge=0.0, le=1.0, description="grow the region past the face oval by this x the eye "
                        "distance above the mouth (hairline, temples, ears from the stranger too): less re-identification "
                        "through what the oval leaves, lower SSIM and a visible band (docs/synthetic-swap.md)")

    def wants_subject_keys(self) -> bool:
        return self.stable == "keyed"


_BANKS: dict[str, Any] = {}
_BANKS_LOCK = threading.Lock()


def _key_index(key: str, n: int) -> int:
    digest = hmac.new(b"deid-synthetic-swap", key.encode("utf-8"), hashlib.sha256).digest()
    return int.from_bytes(digest[:8], "big") % n


def _eyes(face: Face) -> tuple[np.ndarray, np.ndarray]:
    """The eye on the image's left, then the other, from any layout's five points."""
    p = np.asarray(face.landmarks5, dtype=np.float64)
    if face.landmark_layout == "dlib5":
        return p[2:4].mean(0), p[0:2].mean(0)
    return p[0], p[1]  # arcface5, blazeface5: the person's right eye (image left) first


def mesh_points(mesher: Any, rgb: np.ndarray, face: Face, own: bool = True) -> np.ndarray | None:
    """A face's 468 mesh points (image pixels): its own (``own`` and the face has one), or
    ``mesher``'s (a :class:`deid.faces.facemesh_backend.FaceMeshDetector`) run on its box and
    eyes; None when the mesh is not found: not finite, or its face-presence score under the
    mesher's ``min_presence`` (0.5, as when the mesh detects faces itself). The mesh regresses
    468 points on any crop; with a low presence they lie on background or a part of a face (a
    stranger warped onto them would sit beside the face), so the face takes the method's fallback."""
    if own and face.mesh is not None:
        return np.asarray(face.mesh, dtype=np.float64)[:, :2]
    le, re = _eyes(face)
    kp = np.stack([le, re, le, re, le, re])
    pts, presence = mesher.mesh(rgb, np.asarray(face.box, dtype=np.float64), kp)
    if not np.isfinite(pts).all() or presence < getattr(mesher, "min_presence", 0.5):
        return None
    return pts[:, :2]


class StrangerMethod:
    """What ``synthetic-swap`` and ``attribute`` share: the params (validated by
    :attr:`params_class`), the face mesh, the generator of the strangers, a bank of them (crops
    and meshes) with the triangulation of its mean mesh, and each face's mesh."""

    name: str
    params_class: type[SwapParams] = SwapParams

    def _setup(self, params: Any, latent: Any, mesher: Any) -> Any:
        """Set ``params``, ``mesher`` (a new face mesh unless given) and ``generator``; returns the params."""
        self.params = params if isinstance(params, self.params_class) else \
            self.params_class.model_validate(params or {})
        if latent is None:
            raise ValueError(f"{self.name} needs a generator latent model (latent.backend: a generator)")
        from deid.faces.facemesh_backend import FaceMeshDetector

        self.mesher = mesher or FaceMeshDetector()
        self.generator = _generator(latent)
        return self.params

    def _use_bank(self, bank: Any) -> None:
        """``bank`` (``crops``, ``points``) and ``tris``, the Delaunay triangles of its mean mesh."""
        from deid.anonymize.swap_ops import delaunay

        self.bank = bank
        self.tris = delaunay(bank.points.mean(0))

    def mesh_fingerprint(self) -> str:
        """sha256 of the face mesh's model file (a part of the key of every bank built with it)."""
        return hashlib.sha256(Path(self.mesher.mesh_file).read_bytes()).hexdigest()

    def mask_face(self, rgb: np.ndarray, face: Face, rng) -> np.ndarray:
        """``rgb`` with ``face`` under the solid mask: what a face the method cannot take (no face
        mesh) gets, so that it is never released as it was."""
        if getattr(self, "_mask", None) is None:
            from deid.anonymize.registry import make_anonymizer

            self._mask = make_anonymizer("mask")
        return self._mask(rgb, [face], rng)[0]

    def mesh_of(self, rgb: np.ndarray, face: Face) -> np.ndarray | None:
        """The face's 468 mesh points (image pixels): its own, or the face mesh run on its box."""
        return mesh_points(self.mesher, rgb, face)


class SyntheticSwap(StrangerMethod):
    name = "synthetic-swap"
    dp_scope = "none"
    release = None
    #: the stage passes each face's subject key (``keys=``) when this is true
    wants_subject_keys = False

    def __init__(self, params: SwapParams | dict | None = None, latent: Any = None, mesher: Any = None):
        self._setup(params, latent, mesher)
        self.wants_subject_keys = self.params.stable == "keyed"
        self.latent = latent
        self._use_bank(self._bank())

    # ------------------------------------------------------------------ the bank
    def _bank(self):
        from deid.anonymize.strangers import StrangerBank, bank_key, build_bank, cache_dir

        p = self.params
        gen = self.generator
        mesh_fp = self.mesh_fingerprint()
        key = bank_key(gen.fingerprint, mesh_fp, p.bank_size, p.bank_crop, p.truncation)
        path = cache_dir(p.bank_dir) / f"bank-{key}.npz"
        with _BANKS_LOCK:
            if key in _BANKS:
                return _BANKS[key]
            bank = None
            if path.is_file():
                try:
                    bank = StrangerBank.load(path)
                except (OSError, ValueError, KeyError) as exc:
                    log.warning("%s: unreadable stranger bank (%s); building it again", path, exc)
            if bank is None or len(bank) != p.bank_size:
                bank = self._build(gen, key, path)
            _BANKS[key] = bank
            return bank

    def _build(self, gen, key: str, path):
        from tqdm import tqdm

        from deid.anonymize.strangers import build_bank

        p = self.params
        rng = np.random.default_rng()  # OS entropy: the bank's strangers come from random latents only
        with tqdm(total=p.bank_size, desc="stranger bank", unit="face", leave=False) as bar:
            bank = build_bank(gen.images(rng, p.truncation), p.bank_size, p.bank_crop, self.mesher,
                              fingerprint=key, progress=bar.update)
        bank.save(path)
        log.warning("built a bank of %d synthetic strangers: %s", len(bank), path)
        return bank

    # ------------------------------------------------------------------ one face
    def choose(self, points: np.ndarray, rng: np.random.Generator, key: str | None) -> int:
        from deid.anonymize.strangers import allowed_strangers

        p = self.params
        # with the whole oval replaced, the stranger's forehead goes into the photo: no fringe or cap
        among = None if p.keep_forehead else allowed_strangers(self.bank, p.min_forehead, at_least=p.candidates)
        if p.stable == "keyed" and key:
            pool = np.arange(len(self.bank)) if among is None else among
            return int(pool[_key_index(key, len(pool))])
        near = self.bank.nearest(points, p.candidates, among=among)
        return int(near[int(rng.integers(len(near)))])

    def __call__(self, rgb: np.ndarray, faces: list[Face], rng: np.random.Generator | None = None,
                 keys: list[str | None] | None = None) -> tuple[np.ndarray, list[FaceFacts]]:
        from deid.anonymize.swap_ops import composite, swap_face

        rng = rng if rng is not None else np.random.default_rng()
        p = self.params
        out = np.array(rgb, copy=True)
        facts = []
        for i, face in enumerate(faces):
            pts = self.mesh_of(rgb, face)
            res = None
            if pts is not None:
                j = self.choose(pts, rng, (keys or [None] * len(faces))[i])
                res = swap_face(rgb, pts, self.bank.crops[j], self.bank.points[j], self.tris,
                                keep_forehead=p.keep_forehead, feather=p.feather, poisson=p.blend == "poisson",
                                colour=p.colour_match, shape=p.shape, grow=p.grow,
                                key_points=p.key_points)
            if res is None:  # no mesh (or no warp): the face is masked, never left as it was
                out = self.mask_face(out, face, rng)
                facts.append(FaceFacts(method=self.name, extra={"swapped": False, "masked": True}))
                continue
            composite(out, res)
            facts.append(FaceFacts(method=self.name, extra={"stranger": p.stable, "swapped": True}))
        return out, facts


class _Generator:
    """What the bank needs from a generator latent model (:class:`deid.latent.generator.GeneratorModel`):
    its fingerprint, and images of strangers from random latents."""

    def __init__(self, model: Any):
        self.model = model
        self.fingerprint = model.fingerprint

    def images(self, rng: np.random.Generator, truncation: float, batch: int = 1):
        while True:
            yield from self.model.generate(batch, rng, psi=truncation)


def _generator(latent: Any) -> _Generator:
    from deid.latent.registry import load_latent_model

    model = latent if hasattr(latent, "generate") else load_latent_model(latent)
    if not hasattr(model, "generate"):
        raise ValueError(f"synthetic-swap needs a generator latent model; latent.backend "
                         f"{getattr(latent, 'backend', type(model).__name__)} is not one")
    return _Generator(model)


def _mesh_files(p: SwapParams):
    from deid.faces.facemesh_backend import FaceMeshParams, _files

    return _files(FaceMeshParams())


METHODS.register(Plugin(
    kind="method", name="synthetic-swap", params=SwapParams,
    summary="the face (jaw to brows) replaced by a random synthetic stranger of the generator, in the original's "
            "pose and expression (face mesh), colour-matched and blended; not DP",
    factory=lambda p, latent=None: SyntheticSwap(p, latent=latent),
    licence=Licence(code="Apache-2.0 (deid)", weights="face mesh: Apache-2.0 (the mediapipe wheel's .tflite files); "
                    "the strangers: the run's generator (latent.backend) and its licence"),
    needs=Needs(latent="generator"),
    model_files=_mesh_files,
    module=__name__,
))

"""``private-encoder``: the face encoded into the generator's w by an encoder fitted with an
identity regulariser ``beta``, decoded, and blended back (after private-encoder.txt).

Per face:

1. the face is aligned to the generator's frame (:meth:`GeneratorModel.align`, as the
   encoder's training crops were aligned: ``deid latent fit-encoder``);
2. the encoder (:mod:`deid.latent.encoder`, file ``encoder``) maps the crop to w+; the
   generator decodes it (OpenVINO on CPU, or the PyTorch port on CUDA);
3. the decoded face is placed back with synthetic-swap's region and blending
   (:func:`deid.anonymize.swap_ops.swap_face`, ``shape 1``: it lands exactly where the crop
   came from): the face oval from the face mesh (or jaw to brows with ``keep_forehead``),
   Lab colour match, a feathered or Poisson seam; every pixel outside the region is left
   untouched. A face whose mesh is not found is pasted through the generator's soft face oval
   instead (the latent methods' way; ``region: oval``).

``beta`` is the target cosine similarity, under the recognizer named in the encoder's card,
between a face and its reconstruction that the encoder was fine-tuned towards (eq. 3 of the
paper): 0 asks for a stranger's similarity, 1 for the same identity. It is a property of the
encoder file: ``beta`` in the manifest must equal the card's (pick the file fitted with the
beta you want); null takes the file's and the audit records it in the params.

Not DP (``dp_scope = none``): the output is a deterministic function of the face, so photos of
one person map to similar faces and stay linkable; what beta buys is measured, not
guaranteed (docs/privacy.md). The recognizer of the fine-tuning is not an independent
attacker of such a run (``deid evaluate`` labels it so).
"""

from __future__ import annotations

import threading
from pathlib import Path
from typing import Any, Literal

import numpy as np
from pydantic import BaseModel, ConfigDict, Field

from deid.anonymize.registry import METHODS
from deid.anonymize.swap import SwapParams
from deid.faces.types import Face
from deid.facts import FaceFacts
from deid.plugins import Licence, ModelFile, Needs, Plugin, path_field

NAME = "private-encoder"


class PrivateEncoderParams(BaseModel):
    model_config = ConfigDict(extra="forbid", frozen=True)

    encoder: str | None = path_field(
        None, description="encoder file of `deid latent fit-encoder` (any fsspec URI); null: $DEID_ENCODER, else "
        "models/encoder-mobilestylegan.pt (`make encoder`)")
    beta: float | None = Field(None, ge=0.0, le=1.0, description="the identity target the encoder was fitted with "
                               "(its card's beta; 0: a stranger's similarity, 1: the same identity); must equal the "
                               "card's; null: the file's")
    # the region and the seam: synthetic-swap's fields, as they are
    keep_forehead: bool = SwapParams.model_fields["keep_forehead"]
    blend: Literal["feather", "poisson"] = SwapParams.model_fields["blend"]
    feather: float = SwapParams.model_fields["feather"]
    colour_match: bool = SwapParams.model_fields["colour_match"]


_ENCODERS: dict[tuple[str, str], Any] = {}
_LOCK = threading.Lock()


def encoder_uri(p: PrivateEncoderParams) -> str:
    from deid.latent.encoder import default_location

    return p.encoder or default_location()


def load_checked(p: PrivateEncoderParams, device: str = "cpu"):
    """The params' encoder file, loaded once per process, its beta checked against ``p.beta``."""
    from deid.latent.encoder import load_encoder

    uri = encoder_uri(p)
    with _LOCK:
        enc = _ENCODERS.get((uri, device))
        if enc is None:
            enc = _ENCODERS[(uri, device)] = load_encoder(uri, device=device)
    if enc.beta is None:
        if p.beta is not None:
            raise ValueError(f"anonymize.params.beta {p.beta:g}: {uri} was fitted without the identity term (no "
                             "beta in its card); fit one with `deid latent fit-encoder --beta ... --finetune-steps "
                             "...`, or set beta to null")
    elif p.beta is not None and abs(enc.beta - p.beta) > 1e-9:
        raise ValueError(f"anonymize.params.beta {p.beta:g}: {uri} was fitted with beta {enc.beta:g}; name the "
                         f"encoder file fitted with beta {p.beta:g} (deid latent fit-encoder --beta {p.beta:g}), "
                         f"or set beta to {enc.beta:g}")
    return enc


class PrivateEncoder:
    name = NAME
    dp_scope = "none"
    release = None

    def __init__(self, params: PrivateEncoderParams | dict | None = None, latent: Any = None, mesher: Any = None):
        from deid.latent.registry import load_latent_model

        self.params = params if isinstance(params, PrivateEncoderParams) else \
            PrivateEncoderParams.model_validate(params or {})
        if latent is None:
            raise ValueError(f"{NAME} needs a generator latent model (latent.backend: a generator)")
        model = latent if hasattr(latent, "decode_ws") else load_latent_model(latent)
        if not hasattr(model, "decode_ws"):
            raise ValueError(f"{NAME} needs a generator latent model; latent.backend "
                             f"{getattr(latent, 'backend', type(model).__name__)} is not one")
        self.model = model
        dev = str(getattr(model, "device", "cpu"))
        self.encoder = load_checked(self.params, device=dev if dev.startswith("cuda") else "cpu")
        self.encoder.check_generator(model)
        from deid.faces.facemesh_backend import FaceMeshDetector

        self.mesher = mesher or FaceMeshDetector()
        self._oval = model.mask(0.06)

    def __call__(self, rgb: np.ndarray, faces: list[Face], rng: np.random.Generator | None = None):
        from deid.anonymize.swap import mesh_points
        from deid.anonymize.swap_ops import composite, delaunay, swap_face
        from deid.latent.base import paste_back

        out = np.array(rgb, copy=True)
        if not faces:
            return out, []
        p, m = self.params, self.model
        aligned = [m.align(rgb, f) for f in faces]
        decoded = m.decode_ws(self.encoder.encode(np.stack([c for c, _ in aligned])))
        facts = []
        for face, (_, mat), dec in zip(faces, aligned, decoded):
            pts = mesh_points(self.mesher, rgb, face)
            res = None
            if pts is not None:
                in_crop = pts @ mat[:, :2].T + mat[:, 2]    # the mesh in the decoded face's frame
                res = swap_face(rgb, pts, dec, in_crop, delaunay(in_crop), keep_forehead=p.keep_forehead,
                                feather=p.feather, poisson=p.blend == "poisson", colour=p.colour_match, shape=1.0)
            if res is not None:
                composite(out, res)
                region = "mesh"
            else:
                paste_back(out, dec, mat, self._oval, inplace=True)
                region = "oval"
            facts.append(FaceFacts(method=NAME, scope="none", extra={
                "encoder_sha256": self.encoder.fingerprint, "beta": self.encoder.beta, "region": region,
                "dp": "not DP"}))
        return out, facts


def _files(p: PrivateEncoderParams) -> list[ModelFile]:
    from deid.faces.facemesh_backend import FaceMeshParams, _files as mesh_files

    uri = encoder_uri(p)
    # a missing local file is left out here (deid plugins lists the method without it); a run
    # stops before its first record in fingerprint_entries, which says how to get one
    enc = [ModelFile(f"{NAME}:encoder", uri)] if "://" in uri or Path(uri).is_file() else []
    return enc + mesh_files(FaceMeshParams())


def fingerprint_entries(p: PrivateEncoderParams) -> list[dict]:
    """The audit's extra fingerprint: the recognizer the encoder was fine-tuned against (its
    card's ``identity_recognizer``), which is then not an independent attacker of the run. A
    missing or mismatched encoder file stops the run here, before any record, with the reason."""
    from deid.latent.encoder import HOW_TO_GET

    uri = encoder_uri(p)
    if "://" not in uri and not Path(uri).is_file():
        raise FileNotFoundError(f"anonymize.params.encoder {uri}: encoder file not found; {HOW_TO_GET}")
    rec = load_checked(p).card.get("identity_recognizer")
    return [{"name": f"{NAME}:identity-recognizer:{rec['name']}", "sha256": rec["sha256"]}] if rec else []


METHODS.register(Plugin(
    kind="method", name=NAME, params=PrivateEncoderParams,
    summary="the face encoded into the generator's w by an encoder fitted with an identity target beta "
            "(deid latent fit-encoder), decoded and blended in with synthetic-swap's region; not DP",
    factory=lambda p, latent=None: PrivateEncoder(p, latent=latent),
    licence=Licence(code="Apache-2.0 (deid)", weights="the encoder file: fitted through the run's generator and "
                    "under its weights' licence (MobileStyleGAN: NVIDIA Source Code License-NC, research only); "
                    "face mesh: Apache-2.0 (the mediapipe wheel's .tflite files)", non_commercial=True),
    needs=Needs(latent="generator"),
    model_files=_files,
    module=__name__,
))

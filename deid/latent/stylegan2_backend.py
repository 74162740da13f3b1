"""Latent plug-in ``stylegan2``: a StyleGAN2-family generator checkpoint the user brings, as a
``generator`` latent model (:class:`deid.latent.generator.GeneratorModel`).

Formats (:mod:`deid.latent.checkpoints`, read without executing pickled code): rosinality
``stylegan2-pytorch`` ``.pt``, NVIDIA ``stylegan2-ada-pytorch`` ``.pkl``, and the decoder of a pSp
/ e4e checkpoint; ``format: auto`` picks by content. The weights' licence is the user's to state
(``weights_licence``, required): deid cannot know it, and NVIDIA's FFHQ-trained weights and
files derived from them are non-commercial. A licence stated as non-commercial
(``weights_non_commercial: true``, or a licence text that says NC / non-commercial) must also be
acknowledged in ``licences.accept_non_commercial``, as for built-in plug-ins.
"""

from __future__ import annotations

import hashlib
import re
from typing import Literal

from pydantic import Field, model_validator

from deid.latent.registry import LATENT_MODELS, GeneratorParams
from deid.plugins import Licence, ModelFile, Needs, Plugin, path_field

NAME = "stylegan2"
_NC = re.compile(r"non[- ]?commercial|\bNC\b|research[- ]only", re.IGNORECASE)


class StyleGAN2Params(GeneratorParams):
    checkpoint: str = path_field(..., description="the checkpoint file (local path or fsspec URI): a rosinality .pt, "
                                 "an NVIDIA stylegan2-ada .pkl, or a pSp/e4e .pt (its decoder)")
    format: Literal["auto", "rosinality", "stylegan2-ada", "psp"] = Field(
        "auto", description="the checkpoint's format; auto: by content")
    weights_licence: str = Field(..., min_length=3, description="the licence of these weights, as you know it "
                                 "(e.g. 'NVIDIA Source Code License-NC' for FFHQ models): recorded in the model card "
                                 "and the audit's fingerprints")
    weights_non_commercial: bool | None = Field(
        None, description="the weights may not be used commercially (null: from weights_licence: NC, "
        "non-commercial or research-only in its text)")

    @model_validator(mode="after")
    def _nc(self) -> "StyleGAN2Params":
        if self.weights_non_commercial is None:
            object.__setattr__(self, "weights_non_commercial", bool(_NC.search(self.weights_licence)))
        return self


def load(p: StyleGAN2Params):
    from deid.latent import checkpoints as ck
    from deid.latent.generator import GeneratorModel
    from deid.latent.torchscript import pick_device

    opts = p.storage_options
    if p.format == "psp":
        _, g, meta = ck.load_psp_encoder(p.checkpoint, storage_options=opts)
    elif p.format == "rosinality":
        g, meta = ck.load_rosinality_pt(p.checkpoint, storage_options=opts)
    elif p.format == "stylegan2-ada":
        g, meta = ck.load_stylegan2_ada_pkl(p.checkpoint, storage_options=opts)
    else:
        g, meta = ck.load_generator(p.checkpoint, storage_options=opts)
    g = g.to(pick_device(p.device)).eval()
    card = {**{k: v for k, v in meta.items() if isinstance(v, (str, int, float, bool, type(None)))},
            "weights_licence": p.weights_licence, "weights_non_commercial": p.weights_non_commercial,
            "licence_in_file": meta.get("licence")}
    return GeneratorModel(g, name=f"{NAME}:{meta.get('format', p.format)}", backend=NAME,
                          weights_fingerprint=meta.get("sha256") or hashlib.sha256(p.checkpoint.encode()).hexdigest(),
                          card=card, crop_size=p.crop_size, align_scale=p.align_scale,
                          stats_samples=p.stats_samples, stats_seed=p.stats_seed, cache_dir=p.cache_dir,
                          batch_size=p.batch_size)


def _files(p: StyleGAN2Params) -> list[ModelFile]:
    return [ModelFile(f"{NAME}:checkpoint", p.checkpoint)]


LATENT_MODELS.register(Plugin(
    kind="latent", name=NAME, params=StyleGAN2Params, factory=load,
    summary="a StyleGAN2 generator checkpoint you bring (rosinality .pt, NVIDIA stylegan2-ada .pkl read without "
            "running pickled code, or a pSp/e4e decoder): z -> w (w+) -> FFHQ-aligned stranger; torch, CPU or CUDA",
    licence=Licence(code="Apache-2.0 (deid)", weights="as stated in latent.weights_licence (yours to state)"),
    needs=Needs(landmarks="ffhq", latent="generator", gpu=True),
    model_files=_files,
    module=__name__,
))

"""TorchScript latent models: a user's encoder and decoder files, with public bounds.

Contract:

* ``encoder`` and ``decoder`` are TorchScript files (``torch.jit.save`` of a scripted or
  traced module) at any fsspec URI (``s3://``, ``gs://``, ``file://``, ``memory://``, a local
  path). Each is read into memory once and loaded with ``torch.jit.load(BytesIO)``; nothing
  is unpickled outside TorchScript's own loader and nothing is downloaded from anywhere else.
* Tensor layout (both directions): ``float32`` ``NCHW`` RGB, values in ``[0, 1]``
  (``value_range="0,1"``, the default) or ``[-1, 1]`` (``value_range="-1,1"``, what most GAN
  encoders / generators use). The encoder takes ``[n, 3, crop_size, crop_size]`` and returns
  ``[n, dim]`` (any trailing shape is flattened to ``dim``); the decoder takes ``[n, dim]``
  ``float32`` and returns ``[n, 3, H, W]`` in the same value range. Conversion:
  ``uint8 / 255`` (then ``* 2 - 1``) in; out, the inverse, clamped to the range and rounded
  to uint8. A decoder whose ``H, W`` differ from ``crop_size`` is resized (bilinear,
  antialiased) to the crop size.
* Bounds are required and public: an ``.npz`` or ``.json`` file (any fsspec URI) or an
  inline mapping, with ``lower`` and ``upper`` (``dim`` numbers each, ``lower < upper``) and
  optionally ``mean``, ``std`` (the public code distribution) and ``card`` (a mapping: what
  they were fitted on; merged into the model card). Without ``mean``/``std`` they are
  derived from the bounds under a normal assumption matching 0.5%/99.5% quantile bounds
  (``mean = (lower + upper) / 2``, ``std = (upper - lower) / (2 * 2.5758)``) and the card
  says so (``stats: derived-from-bounds``). Fit bounds on a public reference set with
  :func:`deid.latent.base.bounds_from_codes`, never on the records being anonymized.
* Device: ``device="auto"`` runs on CUDA when torch sees a GPU and (inside a Ray worker)
  Ray assigned this actor a GPU; otherwise on CPU. ``"cpu"``/``"cuda"``/``"cuda:1"`` force it.
* At load the encoder and decoder are probed with one blank crop (``probe=True``): a model
  whose shapes do not match the bounds fails when the actor starts, not mid-run.
* ``fingerprint`` = sha256 over the sha256s of the encoder, decoder and bounds bytes (for
  inline bounds: their canonical JSON) and the conversion settings.
"""

from __future__ import annotations

import hashlib
import io
import json
from typing import Any, Literal, Mapping

import numpy as np
from pydantic import Field

from deid.latent.base import LatentModel, read_uri
from deid.latent.registry import LATENT_MODELS, LatentParams
from deid.plugins import Licence, Needs, Plugin, path_field

Z995 = 2.5758293035489004  # standard normal 99.5% quantile
VALUE_RANGES = ("0,1", "-1,1")


def pick_device(device: str = "auto"):
    """torch device for ``device`` (see module docstring)."""
    import torch

    if device != "auto":
        return torch.device(device)
    if not torch.cuda.is_available():
        return torch.device("cpu")
    try:  # inside a Ray worker, use the GPU only if Ray gave this actor one
        import ray

        if ray.is_initialized():
            from ray._private.worker import WORKER_MODE, global_worker

            if global_worker.mode == WORKER_MODE and not ray.get_gpu_ids():
                return torch.device("cpu")
    except Exception:  # pragma: no cover - ray internals moved; fall back to what torch sees
        pass
    return torch.device("cuda")


def _load_bounds(bounds: str | Mapping[str, Any], storage_options: dict | None) -> tuple[dict[str, Any], bytes]:
    if isinstance(bounds, Mapping):
        d = dict(bounds)
        raw = json.dumps({k: (np.asarray(v).tolist() if k != "card" else v) for k, v in d.items()},
                         sort_keys=True).encode("utf-8")
        return d, raw
    raw = read_uri(str(bounds), storage_options)
    if str(bounds).lower().endswith(".json"):
        return json.loads(raw.decode("utf-8")), raw
    with np.load(io.BytesIO(raw), allow_pickle=False) as z:
        d = {k: z[k] for k in z.files}
    if "card" in d:
        c = d["card"]
        d["card"] = json.loads(c.tobytes().decode("utf-8") if c.dtype == np.uint8 else str(c))
    return d, raw


class TorchScriptLatentModel(LatentModel):
    backend = "torchscript"

    def __init__(self, encoder: str, decoder: str, bounds: str | Mapping[str, Any], crop_size: int, *,
                 value_range: str = "0,1", layout: str = "dlib5", align_scale: float = 1.0, device: str = "auto",
                 batch_size: int = 32, name: str | None = None, probe: bool = True,
                 storage_options: dict | None = None):
        import torch

        if value_range not in VALUE_RANGES:
            raise ValueError(f"value_range must be one of {VALUE_RANGES}, got {value_range!r}")
        if bounds is None:
            raise ValueError("torchscript latent model: public bounds are required (bounds URI or mapping)")
        self.crop_size = int(crop_size)
        self.layout = layout
        self.align_scale = float(align_scale)
        self.value_range = value_range
        self.batch_size = max(1, int(batch_size))
        self.name = name or "torchscript"
        self.device = pick_device(device)
        enc_bytes = read_uri(encoder, storage_options)
        dec_bytes = read_uri(decoder, storage_options)
        self._enc = torch.jit.load(io.BytesIO(enc_bytes), map_location=self.device).eval()
        self._dec = torch.jit.load(io.BytesIO(dec_bytes), map_location=self.device).eval()
        b, b_raw = _load_bounds(bounds, storage_options)
        if "lower" not in b or "upper" not in b:
            raise ValueError("bounds need 'lower' and 'upper'")
        lower = np.asarray(b["lower"], dtype=np.float64).reshape(-1)
        upper = np.asarray(b["upper"], dtype=np.float64).reshape(-1)
        if lower.shape != upper.shape or not len(lower) or not np.all(np.isfinite(lower)) or not np.all(np.isfinite(upper)):
            raise ValueError("bounds: lower and upper must be finite and of the same length")
        if not np.all(lower < upper):
            raise ValueError("bounds: lower must be < upper in every dimension")
        if "mean" in b and "std" in b:
            mean = np.asarray(b["mean"], dtype=np.float64).reshape(-1)
            std = np.asarray(b["std"], dtype=np.float64).reshape(-1)
            stats = "public reference codes"
            if mean.shape != lower.shape or std.shape != lower.shape or not np.all(std > 0):
                raise ValueError("bounds: mean/std must match lower/upper in length and std must be > 0")
        else:
            mean, std = (lower + upper) / 2, (upper - lower) / (2 * Z995)
            stats = "derived-from-bounds"
        self._lower, self._upper, self._mean, self._std = lower, upper, mean, std
        shas = {k: hashlib.sha256(v).hexdigest() for k, v in (("encoder", enc_bytes), ("decoder", dec_bytes), ("bounds", b_raw))}
        h = hashlib.sha256()
        for k in ("encoder", "decoder", "bounds"):
            h.update(f"{k}={shas[k]}\n".encode())
        h.update(f"crop={self.crop_size} range={value_range} layout={layout} scale={self.align_scale:g}\n".encode())
        self._fp = h.hexdigest()
        self._card = {
            **(b.get("card") or {}),
            "name": self.name, "backend": "torchscript", "crop_size": self.crop_size, "dim": int(len(lower)),
            "layout": layout, "align_scale": self.align_scale, "value_range": value_range,
            "tensor_layout": "float32 NCHW RGB", "encoder": encoder, "decoder": decoder,
            "bounds": bounds if isinstance(bounds, str) else "inline",
            "encoder_sha256": shas["encoder"], "decoder_sha256": shas["decoder"], "bounds_sha256": shas["bounds"],
            "stats": stats, "device": str(self.device),
            "l1_sensitivity": float(np.sum(upper - lower)), "l2_sensitivity": float(np.linalg.norm(upper - lower)),
        }
        if probe:
            z = self.encode(np.zeros((1, self.crop_size, self.crop_size, 3), dtype=np.uint8))
            self.decode(z)

    @property
    def dim(self) -> int:
        return int(len(self._lower))

    @property
    def fingerprint(self) -> str:
        return self._fp

    @property
    def card(self) -> dict[str, Any]:
        return dict(self._card)

    # -- conversions (documented in the module docstring)
    def to_tensor(self, crops: np.ndarray):
        import torch

        t = torch.from_numpy(np.ascontiguousarray(crops)).to(self.device).permute(0, 3, 1, 2).float() / 255.0
        return t * 2.0 - 1.0 if self.value_range == "-1,1" else t

    def from_tensor(self, t) -> np.ndarray:
        import torch

        t = t.detach().float()
        if t.ndim != 4 or t.shape[1] != 3:
            raise ValueError(f"{self.name}: decoder must return [n, 3, H, W], got {list(t.shape)}")
        if self.value_range == "-1,1":
            t = (t + 1.0) / 2.0
        if tuple(t.shape[2:]) != (self.crop_size, self.crop_size):
            t = torch.nn.functional.interpolate(t, size=(self.crop_size, self.crop_size), mode="bilinear",
                                                align_corners=False, antialias=True)
        t = torch.round(t.clamp(0.0, 1.0) * 255.0).to(torch.uint8)
        return t.permute(0, 2, 3, 1).contiguous().cpu().numpy()

    def encode(self, crops: np.ndarray) -> np.ndarray:
        import torch

        crops = self.check_crops(crops)
        out = [np.zeros((0, self.dim))]
        with torch.inference_mode():
            for a in range(0, len(crops), self.batch_size):
                z = self._enc(self.to_tensor(crops[a:a + self.batch_size]))
                z = z.reshape(z.shape[0], -1).double().cpu().numpy()
                if z.shape[1] != self.dim:
                    raise ValueError(f"{self.name}: encoder returned {z.shape[1]} values per face, bounds have {self.dim}")
                out.append(z)
        return np.concatenate(out)

    def decode(self, z: np.ndarray) -> np.ndarray:
        import torch

        z = self.check_codes(z)
        out = [np.zeros((0, self.crop_size, self.crop_size, 3), dtype=np.uint8)]
        with torch.inference_mode():
            for a in range(0, len(z), self.batch_size):
                t = torch.from_numpy(z[a:a + self.batch_size].astype(np.float32)).to(self.device)
                out.append(self.from_tensor(self._dec(t)))
        return np.concatenate(out)


class TorchScriptParams(LatentParams):
    encoder: str = path_field(..., description="encoder file URI (TorchScript)")
    decoder: str = path_field(..., description="decoder file URI (TorchScript)")
    bounds: str | dict[str, Any] = path_field(..., description="public bounds/statistics file URI (.npz)")
    crop_size: int = Field(..., ge=4, description="aligned crop size")
    value_range: Literal["0,1", "-1,1"] = Field("0,1", description="pixel range the networks expect")
    layout: str = Field("dlib5", description="landmark layout the crops are aligned on")
    align_scale: float = Field(1.0, gt=0.0, description="alignment scale of the crop")
    device: str = Field("auto", description="auto | cpu | cuda")
    batch_size: int = Field(32, ge=1, description="faces per forward pass")
    name: str | None = Field(None, description="name in the audit's model fingerprints (default: torchscript)")
    probe: bool = Field(True, description="check the files against the bounds at load (one encode/decode)")


LATENT_MODELS.register(Plugin(
    kind="latent", name="torchscript", params=TorchScriptParams,
    summary="your TorchScript encoder and decoder files, with public bounds; CPU or CUDA",
    factory=lambda p: TorchScriptLatentModel(
        p.encoder, p.decoder, p.bounds, p.crop_size, value_range=p.value_range, layout=p.layout,
        align_scale=p.align_scale, device=p.device, batch_size=p.batch_size, name=p.name, probe=p.probe,
        storage_options=p.storage_options),
    licence=Licence(code="Apache-2.0 (deid)", weights="your files: state their licence in your model card"),
    needs=Needs(gpu=True),
    module=__name__,
))

"""An encoder from aligned face crops into a generator's w: the file, the network, loading.

Contract (other code is written against it; keep it):

* :func:`load_encoder` ``(uri, device="cpu") -> Encoder``: any fsspec URI (local path,
  ``s3://``, ``memory://``...). The file is ``torch.save`` of a plain dict of tensors and
  strings, read back with ``torch.load(weights_only=True)``: no pickled code runs.
  Keys: ``format`` (:data:`FORMAT`), ``card`` (a JSON string), ``state`` (the network's
  ``state_dict``: tensors only).
* :meth:`Encoder.encode` ``(crops uint8 [n, S, S, 3]) -> float32 [n, num_ws, w_dim]``: w+ (a
  plain-w encoder, which this one is, repeats its w on every layer). The crops are the
  generator model's own aligned crops (:meth:`deid.latent.generator.GeneratorModel.align`,
  any crop size ``S``: the encoder resizes to its input size with area interpolation).
* :attr:`Encoder.card` (dict: data, beta, recognizer, command, fingerprints, held-out
  numbers, licence), :attr:`Encoder.fingerprint` (sha256 of the file's bytes),
  :attr:`Encoder.generator_fingerprint` (the generator's *weights* fingerprint,
  :attr:`GeneratorModel.weights_fingerprint`); :meth:`Encoder.check_generator` refuses a
  generator model of other weights, or another alignment scale, with an error that names
  the file.
* The network (:class:`EncoderNet`): a small ResNet on ``input_size`` px (default 128) that
  predicts the leading ``components`` principal coordinates of w (the generator's public
  statistics, :class:`deid.latent.generator.WStats`), each divided by its standard
  deviation; ``w = mean + (c * std) @ components``. The mean, the axes and their stds are
  buffers of the file (public numbers: the generator's own statistics), so the file alone
  decodes. Fitting: ``deid latent fit-encoder`` (:mod:`deid.cli.fit_encoder`).
"""

from __future__ import annotations

import hashlib
import io
import json
from typing import Any

import numpy as np

FORMAT = "deid-encoder/1"
#: where ``make encoder`` writes the default encoder (relative to the working directory)
DEFAULT_PATH = "models/encoder-mobilestylegan.pt"
#: env var naming the default encoder file
ENV = "DEID_ENCODER"
HOW_TO_GET = "run `make encoder` (it fits the default encoder, models/encoder-mobilestylegan.pt) or fit one with " \
             "`deid latent fit-encoder` and name it in anonymize.params.encoder"


def default_location() -> str:
    import os

    return os.environ.get(ENV) or DEFAULT_PATH


def _torch_modules():
    import torch
    from torch import nn

    class Block(nn.Module):
        """A ResNet basic block (two 3x3 convs; a strided 1x1 shortcut when the shape changes)."""

        def __init__(self, cin: int, cout: int, stride: int):
            super().__init__()
            self.c1 = nn.Conv2d(cin, cout, 3, stride, 1, bias=False)
            self.b1 = nn.BatchNorm2d(cout)
            self.c2 = nn.Conv2d(cout, cout, 3, 1, 1, bias=False)
            self.b2 = nn.BatchNorm2d(cout)
            self.skip = (nn.Sequential(nn.Conv2d(cin, cout, 1, stride, bias=False), nn.BatchNorm2d(cout))
                         if stride != 1 or cin != cout else nn.Identity())

        def forward(self, x):
            y = torch.relu(self.b1(self.c1(x)))
            return torch.relu(self.b2(self.c2(y)) + self.skip(x))

    class EncoderNet(nn.Module):
        """``x`` float ``[N, 3, input_size, input_size]`` in [0, 1] -> standardised principal
        coordinates ``[N, components]``; :meth:`w` -> w ``[N, w_dim]``."""

        def __init__(self, input_size: int = 128, width: int = 32, components: int = 64, w_dim: int = 512):
            super().__init__()
            if input_size % 32:
                raise ValueError(f"encoder input_size must be a multiple of 32, got {input_size}")
            self.input_size, self.width, self.components, self.w_dim = input_size, width, components, w_dim
            chans = [width, 2 * width, 4 * width, 8 * width]
            self.stem = nn.Sequential(nn.Conv2d(3, width, 3, 2, 1, bias=False), nn.BatchNorm2d(width), nn.ReLU())
            blocks, cin = [], width
            for c in chans:
                blocks.append(Block(cin, c, 2))
                cin = c
            self.blocks = nn.Sequential(*blocks)
            side = input_size // 32
            self.head = nn.Linear(cin * side * side, components)
            nn.init.zeros_(self.head.weight)   # starts at the mean w
            nn.init.zeros_(self.head.bias)
            self.register_buffer("w_mean", torch.zeros(w_dim))
            self.register_buffer("w_axes", torch.eye(w_dim)[:components].clone())
            self.register_buffer("w_axis_std", torch.ones(components))
            self.register_buffer("pixel_mean", torch.tensor([0.5, 0.5, 0.5]).view(1, 3, 1, 1))

        def forward(self, x):
            y = self.blocks(self.stem(x - self.pixel_mean))
            return self.head(torch.flatten(y, 1))

        def w(self, coords):
            return self.w_mean + (coords * self.w_axis_std) @ self.w_axes

        def coords_of(self, w):
            """The standardised principal coordinates of w (the regression target)."""
            return ((w - self.w_mean) @ self.w_axes.T) / self.w_axis_std

        def config(self) -> dict:
            return {"input_size": self.input_size, "width": self.width, "components": self.components,
                    "w_dim": self.w_dim}

    return EncoderNet


def make_net(input_size: int = 128, width: int = 32, components: int = 64, w_dim: int = 512, stats=None):
    """A fresh :class:`EncoderNet` (its head at zero: it outputs the mean w); ``stats``
    (:class:`deid.latent.generator.WStats`) fills in the public mean, axes and stds."""
    import torch

    net = _torch_modules()(input_size=input_size, width=width, components=components, w_dim=w_dim)
    if stats is not None:
        if components > len(stats.components):
            raise ValueError(f"components={components} exceeds w's {len(stats.components)} dimensions")
        with torch.no_grad():
            net.w_mean.copy_(torch.as_tensor(stats.mean, dtype=torch.float32))
            net.w_axes.copy_(torch.as_tensor(stats.components[:components], dtype=torch.float32))
            net.w_axis_std.copy_(torch.as_tensor(stats.component_std[:components], dtype=torch.float32))
    return net


def to_input(crops: np.ndarray, size: int):
    """uint8 crops ``[n, S, S, 3]`` -> float tensor ``[n, 3, size, size]`` in [0, 1] (area resize)."""
    import cv2
    import torch

    crops = np.asarray(crops)
    if crops.ndim != 4 or crops.shape[-1] != 3 or crops.shape[1] != crops.shape[2]:
        raise ValueError(f"encoder: crops must be [n, S, S, 3], got {list(crops.shape)}")
    if crops.dtype != np.uint8:
        raise ValueError(f"encoder: crops must be uint8, got {crops.dtype}")
    if crops.shape[1] != size:
        interp = cv2.INTER_AREA if crops.shape[1] > size else cv2.INTER_LINEAR
        crops = np.stack([cv2.resize(c, (size, size), interpolation=interp) for c in crops]) if len(crops) else \
            np.zeros((0, size, size, 3), np.uint8)
    return torch.from_numpy(np.ascontiguousarray(crops)).permute(0, 3, 1, 2).float() / 255.0


def to_bytes(net, card: dict[str, Any]) -> bytes:
    """The encoder file's bytes: ``{format, card (JSON), state}``."""
    import torch

    card = dict(card, format=FORMAT, network=dict(net.config(), kind="resnet-w"))
    buf = io.BytesIO()
    torch.save({"format": FORMAT, "card": json.dumps(card, sort_keys=True),
                "state": {k: v.detach().cpu().contiguous() for k, v in net.state_dict().items()}}, buf)
    return buf.getvalue()


class Encoder:
    """A loaded encoder file (see the module docstring)."""

    def __init__(self, data: bytes, uri: str = "<bytes>", device: str = "cpu"):
        import torch

        self.uri = uri
        self.fingerprint = hashlib.sha256(data).hexdigest()
        try:
            blob = torch.load(io.BytesIO(data), map_location="cpu", weights_only=True)
        except Exception as exc:  # noqa: BLE001 - any unreadable file is one clear error
            why = str(exc).strip().splitlines()[0][:120] if str(exc).strip() else ""
            raise ValueError(f"{uri}: not a deid encoder file ({type(exc).__name__}{': ' + why if why else ''}); "
                             f"{HOW_TO_GET}") from None
        if not isinstance(blob, dict) or blob.get("format") != FORMAT or not isinstance(blob.get("card"), str) \
                or not isinstance(blob.get("state"), dict):
            raise ValueError(f"{uri}: not a {FORMAT} file (want a dict with format, card, state); {HOW_TO_GET}")
        self._card = json.loads(blob["card"])
        cfg = self._card.get("network") or {}
        try:
            self.net = make_net(int(cfg["input_size"]), int(cfg["width"]), int(cfg["components"]), int(cfg["w_dim"]))
            self.net.load_state_dict(blob["state"])
        except (KeyError, RuntimeError, ValueError) as exc:
            raise ValueError(f"{uri}: encoder network does not match its card ({exc})") from None
        self.net.eval().to(torch.device(device))
        for p in self.net.parameters():
            p.requires_grad_(False)
        self.device = str(device)
        self.input_size = int(cfg["input_size"])
        self.w_dim = int(cfg["w_dim"])
        self.num_ws = int(self._card["generator"]["num_ws"])
        self.generator_fingerprint = str(self._card["generator"]["weights_fingerprint"])
        self.align_scale = float(self._card["generator"].get("align_scale", 1.0))

    @property
    def card(self) -> dict[str, Any]:
        return json.loads(json.dumps(self._card))

    @property
    def beta(self) -> float | None:
        b = self._card.get("beta")
        return None if b is None else float(b)

    def check_generator(self, model) -> None:
        """Refuse a generator model this encoder was not fitted for (other weights, other
        alignment scale, other w size)."""
        wf = getattr(model, "weights_fingerprint", None)
        if wf != self.generator_fingerprint:
            raise ValueError(f"{self.uri}: this encoder was fitted for the generator with weights fingerprint "
                             f"{self.generator_fingerprint[:16]}..., not {getattr(model, 'name', 'the run')}'s "
                             f"({str(wf)[:16]}...); fit one for this generator with `deid latent fit-encoder`")
        if abs(float(getattr(model, "align_scale", 1.0)) - self.align_scale) > 1e-9:
            raise ValueError(f"{self.uri}: fitted on crops at align_scale {self.align_scale:g}, the latent model "
                             f"aligns at {model.align_scale:g}; set latent.align_scale to {self.align_scale:g}")
        if int(getattr(model, "w_dim", self.w_dim)) != self.w_dim or int(getattr(model, "num_ws", self.num_ws)) \
                != self.num_ws:
            raise ValueError(f"{self.uri}: encoder for w [{self.num_ws}, {self.w_dim}], the generator's is "
                             f"[{model.num_ws}, {model.w_dim}]")

    def encode_w(self, crops: np.ndarray, batch: int = 32) -> np.ndarray:
        """float32 w ``[n, w_dim]`` (one w per face)."""
        import torch

        x = to_input(crops, self.input_size)
        out = [np.zeros((0, self.w_dim), np.float32)]
        with torch.no_grad():
            for a in range(0, len(x), batch):
                c = self.net(x[a:a + batch].to(self.device))
                out.append(self.net.w(c).float().cpu().numpy())
        return np.concatenate(out)

    def encode(self, crops: np.ndarray) -> np.ndarray:
        """float32 w+ ``[n, num_ws, w_dim]`` of aligned crops (the same w on every layer)."""
        w = self.encode_w(crops)
        return np.ascontiguousarray(np.repeat(w[:, None, :], self.num_ws, axis=1))

    def __repr__(self) -> str:
        return (f"Encoder({self.uri!r}, input {self.input_size}, beta {self.beta}, "
                f"fingerprint {self.fingerprint[:12]})")


def read_bytes(uri: str, storage_options: dict | None = None) -> bytes:
    import fsspec

    try:
        with fsspec.open(uri, "rb", **(storage_options or {})) as f:
            return f.read()
    except FileNotFoundError:
        raise FileNotFoundError(f"{uri}: encoder file not found; {HOW_TO_GET}") from None


def load_encoder(uri: str, device: str = "cpu") -> Encoder:
    """The encoder file at ``uri`` (any fsspec URI), on ``device``."""
    return Encoder(read_bytes(str(uri)), uri=str(uri), device=device)

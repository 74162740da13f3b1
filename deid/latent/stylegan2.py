"""StyleGAN2 generators and pSp / e4e encoders in plain torch, with the checkpoint key layouts.

This module only holds architecture: nothing here reads a file. The loaders that build these
modules from user-brought checkpoints, with the safety rules (no pickled code ever runs), are
in :mod:`deid.latent.checkpoints`. No CUDA extension is needed: every op (up/down-sampling FIR
filters, modulated convolutions, biased activations) is written with standard torch ops, so
the modules run on CPU and on any GPU torch supports, always in float32.

Two generator layouts, each a :class:`torch.nn.Module` whose ``state_dict()`` **is** the
original's (same key names, shapes and buffers), so that a checkpoint's state dict loads with
``load_state_dict(strict=True)`` and a module's state dict saved in the original container is
that format:

* :class:`RosinalityGenerator`: rosinality's ``stylegan2-pytorch`` ``Generator`` (keys
  ``style.1.weight``, ``input.input``, ``conv1.conv.weight``, ``convs.0.conv.modulation.weight``,
  ``convs.0.conv.blur.kernel``, ``to_rgbs.0.upsample.kernel``, ``noises.noise_0`` ...). Also the
  decoder of pSp / e4e checkpoints.
* :class:`AdaGenerator`: NVIDIA ``stylegan2-ada-pytorch`` ``training.networks.Generator`` (keys
  ``mapping.fc0.weight``, ``mapping.w_avg``, ``synthesis.b4.const``,
  ``synthesis.b8.conv0.affine.weight``, ``synthesis.b8.conv0.noise_const``,
  ``synthesis.b8.torgb.weight``, ``synthesis.b8.resample_filter`` ...); architectures ``skip``
  (the StyleGAN2 default), ``orig`` and ``resnet``; conditional models (``c_dim > 0``) too.

Both take any resolution (a power of two >= 4), any channel widths per resolution (so tiny
test models work; :func:`rosinality_channels` and :func:`ada_channels` give the originals'
defaults) and any number of mapping layers.

The surface both generators share (duck-typed; the ``generator`` latent kind relies on it):

* attributes ``z_dim``, ``w_dim``, ``num_ws``, ``resolution`` (ints);
* ``G.w_avg``: ``Tensor[w_dim]`` (the checkpoint's average W: rosinality ``latent_avg``,
  NVIDIA ``mapping.w_avg``) or ``None`` when the checkpoint has none;
* ``G.mapping(z: Tensor[N, z_dim], truncation_psi=1.0) -> Tensor[N, w_dim]``; with
  ``truncation_psi != 1`` the result is ``w_avg + psi * (w - w_avg)`` (a ``ValueError`` when
  there is no ``w_avg``: see :meth:`mean_w`). A conditional NVIDIA model also takes ``c=``;
* ``G.synthesis(ws: Tensor[N, num_ws, w_dim], noise_mode="const", clamp=True) ->
  Tensor[N, 3, R, R]``: values in ``[-1, 1]`` (``clamp=False`` gives the raw output, which the
  originals do not clamp). ``noise_mode``: ``"const"`` (default: the noise stored in the
  checkpoint, so the output is a deterministic function of ``ws``), ``"random"`` (fresh noise,
  from ``generator=`` when given) or ``"none"``;
* ``G(z, truncation_psi=1.0, noise_mode="const")``: mapping, broadcast to ``num_ws``, synthesis;
* ``G.mean_w(n=10000, seed=0)``: the mean of ``mapping(z)`` over ``n`` seeded normal ``z``
  (what the originals' ``mean_latent`` compute, but reproducible).

Numerics follow the originals' reference (non-CUDA) code paths in float32 with fused modulated
convolutions; NVIDIA models trained with mixed precision run their fp16 blocks in float32 here
(as the originals' ``force_fp32=True``), with the same activation clamping (``conv_clamp``).

Encoders (:class:`PSPEncoder`, ``E(img: Tensor[N, 3, 256, 256] in [-1, 1]) -> ws
Tensor[N, n_styles, w_dim]``): pSp's ``GradualStyleEncoder`` and e4e's ``Encoder4Editing`` on an
IR / IR-SE backbone, state-dict layout ``encoder.input_layer.0.weight``, ``encoder.body.0...``,
``encoder.styles.0.convs.0.weight``, ``encoder.latlayer1.weight`` (the checkpoint's keys). Real
checkpoints use IR-SE50 (stage depths 3, 4, 14, 3; widths 64, 128, 256, 512; 512-d styles);
``units`` and ``widths`` are parameters so tests can build a few-block copy. Like the originals,
the encoder's codes get the checkpoint's ``latent_avg`` added when it was trained
``start_from_latent_avg``.
"""

from __future__ import annotations

import math
from collections.abc import Sequence

import torch
import torch.nn.functional as F
from torch import nn

SQRT2 = math.sqrt(2.0)
NOISE_MODES = ("const", "random", "none")

# ---------------------------------------------------------------------------------------------
# ops


def make_kernel(k: Sequence[float]) -> torch.Tensor:
    """2-D FIR filter from 1-D taps (outer product), normalised to sum 1."""
    t = torch.as_tensor(k, dtype=torch.float32)
    if t.ndim == 1:
        t = t[None, :] * t[:, None]
    return t / t.sum()


def upfirdn2d(x: torch.Tensor, f: torch.Tensor, up: int = 1, down: int = 1,
              pad: Sequence[int] = (0, 0, 0, 0), gain: float = 1.0) -> torch.Tensor:
    """Upsample (zero insertion), pad (negative = crop), convolve with the 2-D filter ``f``
    (true convolution: ``f`` flipped), downsample (drop samples); ``pad`` is
    ``(x0, x1, y0, y1)`` and ``gain`` scales the filter. Per channel, any ``[N, C, H, W]``."""
    n, c, h, w = x.shape
    px0, px1, py0, py1 = pad
    if up > 1:
        x = x.reshape(n, c, h, 1, w, 1)
        x = F.pad(x, [0, up - 1, 0, 0, 0, up - 1])
        x = x.reshape(n, c, h * up, w * up)
    x = F.pad(x, [max(px0, 0), max(px1, 0), max(py0, 0), max(py1, 0)])
    x = x[:, :, max(-py0, 0): x.shape[2] - max(-py1, 0), max(-px0, 0): x.shape[3] - max(-px1, 0)]
    k = f.to(x.dtype)
    if gain != 1:
        k = k * (gain ** (k.ndim / 2))
    k = k.flip([0, 1])[None, None].repeat(c, 1, 1, 1)
    x = F.conv2d(x, k, groups=c)
    if down > 1:
        x = x[:, :, ::down, ::down]
    return x


def _act(x: torch.Tensor, act: str, alpha: float = 0.2) -> torch.Tensor:
    if act == "linear":
        return x
    if act == "lrelu":
        return F.leaky_relu(x, alpha)
    if act == "relu":
        return F.relu(x)
    if act == "tanh":
        return torch.tanh(x)
    if act == "sigmoid":
        return torch.sigmoid(x)
    if act == "elu":
        return F.elu(x)
    if act == "selu":
        return F.selu(x)
    if act == "softplus":
        return F.softplus(x)
    if act == "swish":
        return torch.sigmoid(x) * x
    raise ValueError(f"unknown activation {act!r}")


#: NVIDIA's default gain per activation (``bias_act.activation_funcs[act].def_gain``)
ACT_GAIN = {"linear": 1.0, "relu": SQRT2, "lrelu": SQRT2, "tanh": 1.0, "sigmoid": 1.0, "elu": 1.0,
            "selu": 1.0, "softplus": 1.0, "swish": SQRT2}


def bias_act(x: torch.Tensor, b: torch.Tensor | None, act: str = "linear", gain: float | None = None,
             clamp: float | None = None) -> torch.Tensor:
    """x + b (along dim 1), activation, times ``gain`` (default: the activation's), clamp."""
    if b is not None:
        x = x + b.reshape([-1 if i == 1 else 1 for i in range(x.ndim)])
    x = _act(x, act)
    gain = ACT_GAIN[act] if gain is None else float(gain)
    if gain != 1:
        x = x * gain
    if clamp is not None and clamp >= 0:
        x = x.clamp(-clamp, clamp)
    return x


def _grouped_modconv(x: torch.Tensor, w: torch.Tensor, up: bool, padding: int) -> torch.Tensor:
    """Per-sample convolution: ``x [N, I, H, W]``, ``w [N, O, I, k, k]`` (already modulated);
    with ``up`` a stride-2 transposed convolution (no padding; the caller filters after)."""
    n, i, h, wd = x.shape
    _, o, _, k, _ = w.shape
    x = x.reshape(1, n * i, h, wd)
    if up:
        w = w.transpose(1, 2).reshape(n * i, o, k, k)
        out = F.conv_transpose2d(x, w, stride=2, padding=0, groups=n)
    else:
        out = F.conv2d(x, w.reshape(n * o, i, k, k), padding=padding, groups=n)
    return out.reshape(n, o, out.shape[2], out.shape[3])


def _randn(shape: list[int], generator: torch.Generator | None, device: torch.device) -> torch.Tensor:
    """Normal noise on ``device``, drawn from ``generator`` (on its own device) when given."""
    if generator is None:
        return torch.randn(shape, device=device)
    return torch.randn(shape, generator=generator, device=generator.device).to(device)


def _check_noise_mode(noise_mode: str) -> None:
    if noise_mode not in NOISE_MODES:
        raise ValueError(f"noise_mode must be one of {', '.join(NOISE_MODES)}, not {noise_mode!r}")


def _check_ws(ws: torch.Tensor, num_ws: int, w_dim: int) -> None:
    if ws.ndim != 3 or ws.shape[1] != num_ws or ws.shape[2] != w_dim:
        raise ValueError(f"synthesis takes ws of shape [N, {num_ws}, {w_dim}], got {list(ws.shape)}")


def _check_z(z: torch.Tensor, z_dim: int) -> None:
    if z.ndim != 2 or z.shape[1] != z_dim:
        raise ValueError(f"mapping takes z of shape [N, {z_dim}], got {list(z.shape)}")


class _GeneratorSurface(nn.Module):
    """What both generator layouts add on top of mapping / synthesis."""

    z_dim: int
    w_dim: int
    num_ws: int
    resolution: int

    def forward(self, z: torch.Tensor, truncation_psi: float = 1.0, noise_mode: str = "const",
                clamp: bool = True, **kw) -> torch.Tensor:
        w = self.mapping(z, truncation_psi=truncation_psi, **kw)
        return self.synthesis(w.unsqueeze(1).repeat(1, self.num_ws, 1), noise_mode=noise_mode, clamp=clamp)

    @torch.no_grad()
    def mean_w(self, n: int = 10000, seed: int = 0, batch: int = 1000, **kw) -> torch.Tensor:
        """Mean of ``mapping(z)`` over ``n`` normal ``z`` drawn from ``torch.Generator`` seeded
        ``seed`` (on CPU, so the same on every device): ``Tensor[w_dim]``."""
        g = torch.Generator().manual_seed(int(seed))
        dev = next(self.parameters()).device
        total = torch.zeros(self.w_dim, dtype=torch.float64, device=dev)
        done = 0
        while done < n:
            m = min(batch, n - done)
            z = torch.randn(m, self.z_dim, generator=g).to(dev)
            total += self.mapping(z, **kw).double().sum(0)
            done += m
        return (total / n).float()



# ---------------------------------------------------------------------------------------------
# rosinality / stylegan2-pytorch layout


def rosinality_channels(size: int, channel_multiplier: int = 2) -> dict[int, int]:
    """Channel widths of rosinality's Generator for ``size`` (4..1024)."""
    base = {4: 512, 8: 512, 16: 512, 32: 512, 64: 256 * channel_multiplier, 128: 128 * channel_multiplier,
            256: 64 * channel_multiplier, 512: 32 * channel_multiplier, 1024: 16 * channel_multiplier}
    return {r: base[r] for r in (2 ** i for i in range(2, int(math.log2(size)) + 1))}


class _PixelNorm(nn.Module):
    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return x * torch.rsqrt(torch.mean(x ** 2, dim=1, keepdim=True) + 1e-8)


class EqualLinear(nn.Module):
    """rosinality's equalised-lr linear layer (keys ``weight``, ``bias``); with
    ``activation`` a leaky ReLU (0.2) times sqrt(2) after the bias."""

    def __init__(self, in_dim: int, out_dim: int, bias: bool = True, bias_init: float = 0.0,
                 lr_mul: float = 1.0, activation: bool = False):
        super().__init__()
        self.weight = nn.Parameter(torch.randn(out_dim, in_dim).div_(lr_mul))
        self.bias = nn.Parameter(torch.full((out_dim,), float(bias_init))) if bias else None
        self.activation = activation
        self.scale = (1 / math.sqrt(in_dim)) * lr_mul
        self.lr_mul = lr_mul

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        if self.activation:
            out = F.linear(x, self.weight * self.scale)
            if self.bias is not None:
                out = out + (self.bias * self.lr_mul).view(1, -1)
            return F.leaky_relu(out, 0.2) * SQRT2
        return F.linear(x, self.weight * self.scale, bias=None if self.bias is None else self.bias * self.lr_mul)


class _Blur(nn.Module):
    """FIR filter with padding (buffer ``kernel``, stored pre-scaled as in the original)."""

    def __init__(self, kernel: Sequence[float], pad: tuple[int, int], upsample_factor: int = 1):
        super().__init__()
        self.register_buffer("kernel", make_kernel(kernel) * (upsample_factor ** 2))
        self.pad = pad

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        p0, p1 = self.pad
        return upfirdn2d(x, self.kernel, pad=(p0, p1, p0, p1))


class _Upsample(nn.Module):
    def __init__(self, kernel: Sequence[float], factor: int = 2):
        super().__init__()
        self.factor = factor
        k = make_kernel(kernel) * (factor ** 2)
        self.register_buffer("kernel", k)
        p = k.shape[0] - factor
        self.pad = ((p + 1) // 2 + factor - 1, p // 2)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        p0, p1 = self.pad
        return upfirdn2d(x, self.kernel, up=self.factor, pad=(p0, p1, p0, p1))


class ModulatedConv2d(nn.Module):
    """rosinality's modulated convolution (keys ``weight [1, O, I, k, k]``, ``modulation.*``,
    and ``blur.kernel`` when upsampling)."""

    def __init__(self, in_channel: int, out_channel: int, kernel_size: int, style_dim: int,
                 demodulate: bool = True, upsample: bool = False, blur_kernel: Sequence[float] = (1, 3, 3, 1)):
        super().__init__()
        self.kernel_size, self.in_channel, self.out_channel = kernel_size, in_channel, out_channel
        self.upsample = upsample
        if upsample:
            factor = 2
            p = (len(blur_kernel) - factor) - (kernel_size - 1)
            self.blur = _Blur(blur_kernel, pad=((p + 1) // 2 + factor - 1, p // 2 + 1), upsample_factor=factor)
        self.scale = 1 / math.sqrt(in_channel * kernel_size ** 2)
        self.padding = kernel_size // 2
        self.weight = nn.Parameter(torch.randn(1, out_channel, in_channel, kernel_size, kernel_size))
        self.modulation = EqualLinear(style_dim, in_channel, bias_init=1)
        self.demodulate = demodulate

    def forward(self, x: torch.Tensor, style: torch.Tensor) -> torch.Tensor:
        n = x.shape[0]
        style = self.modulation(style).view(n, 1, self.in_channel, 1, 1)
        weight = self.scale * self.weight * style
        if self.demodulate:
            demod = torch.rsqrt(weight.pow(2).sum([2, 3, 4]) + 1e-8)
            weight = weight * demod.view(n, self.out_channel, 1, 1, 1)
        out = _grouped_modconv(x, weight, self.upsample, self.padding)
        return self.blur(out) if self.upsample else out


class _NoiseInjection(nn.Module):
    def __init__(self):
        super().__init__()
        self.weight = nn.Parameter(torch.zeros(1))

    def forward(self, x: torch.Tensor, noise: torch.Tensor | None) -> torch.Tensor:
        return x if noise is None else x + self.weight * noise


class _BiasLeakyReLU(nn.Module):
    """rosinality's FusedLeakyReLU: ``leaky_relu(x + bias, 0.2) * sqrt(2)`` (key ``bias``)."""

    def __init__(self, channel: int):
        super().__init__()
        self.bias = nn.Parameter(torch.zeros(channel))

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return F.leaky_relu(x + self.bias.view(1, -1, 1, 1), 0.2) * SQRT2


class _StyledConv(nn.Module):
    def __init__(self, in_channel: int, out_channel: int, kernel_size: int, style_dim: int,
                 upsample: bool = False, blur_kernel: Sequence[float] = (1, 3, 3, 1)):
        super().__init__()
        self.conv = ModulatedConv2d(in_channel, out_channel, kernel_size, style_dim, upsample=upsample,
                                    blur_kernel=blur_kernel)
        self.noise = _NoiseInjection()
        self.activate = _BiasLeakyReLU(out_channel)

    def forward(self, x, style, noise=None):
        return self.activate(self.noise(self.conv(x, style), noise))


class _ConstantInput(nn.Module):
    def __init__(self, channel: int, size: int = 4):
        super().__init__()
        self.input = nn.Parameter(torch.randn(1, channel, size, size))


class _ToRGB(nn.Module):
    def __init__(self, in_channel: int, style_dim: int, upsample: bool = True,
                 blur_kernel: Sequence[float] = (1, 3, 3, 1)):
        super().__init__()
        if upsample:
            self.upsample = _Upsample(blur_kernel)
        self.conv = ModulatedConv2d(in_channel, 3, 1, style_dim, demodulate=False)
        self.bias = nn.Parameter(torch.zeros(1, 3, 1, 1))

    def forward(self, x, style, skip=None):
        out = self.conv(x, style) + self.bias
        if skip is not None:
            out = out + self.upsample(skip)
        return out


class RosinalityGenerator(_GeneratorSurface):
    """rosinality's ``stylegan2-pytorch`` Generator; ``state_dict()`` has its keys exactly.

    ``channels`` maps each resolution 4, 8, ..., ``size`` to its width (default: the original's
    for ``channel_multiplier``); ``lr_mlp`` is the mapping's learning-rate multiplier (0.01 in
    every released model; it is not stored in checkpoints). ``w_avg`` is a non-persistent
    buffer (``None`` until set): the checkpoint's ``latent_avg`` lives beside the state dict.
    """

    def __init__(self, size: int, style_dim: int, n_mlp: int, channel_multiplier: int = 2,
                 blur_kernel: Sequence[float] = (1, 3, 3, 1), lr_mlp: float = 0.01,
                 channels: dict[int, int] | None = None):
        super().__init__()
        log_size = int(math.log2(size))
        if size < 4 or 2 ** log_size != size:
            raise ValueError(f"size must be a power of two >= 4, not {size}")
        self.size = self.resolution = size
        self.style_dim = self.z_dim = self.w_dim = style_dim
        self.n_mlp, self.lr_mlp = n_mlp, lr_mlp
        self.channels = dict(channels) if channels is not None else rosinality_channels(size, channel_multiplier)
        missing = [r for r in (2 ** i for i in range(2, log_size + 1)) if r not in self.channels]
        if missing:
            raise ValueError(f"channels has no width for resolution(s) {missing}")
        blur_kernel = list(blur_kernel)
        self.style = nn.Sequential(_PixelNorm(), *[EqualLinear(style_dim, style_dim, lr_mul=lr_mlp, activation=True)
                                                   for _ in range(n_mlp)])
        c4 = self.channels[4]
        self.input = _ConstantInput(c4)
        self.conv1 = _StyledConv(c4, c4, 3, style_dim, blur_kernel=blur_kernel)
        self.to_rgb1 = _ToRGB(c4, style_dim, upsample=False)
        self.log_size = log_size
        self.num_layers = (log_size - 2) * 2 + 1
        self.convs = nn.ModuleList()
        self.to_rgbs = nn.ModuleList()
        self.noises = nn.Module()
        for i in range(self.num_layers):
            r = 2 ** ((i + 5) // 2)
            self.noises.register_buffer(f"noise_{i}", torch.randn(1, 1, r, r))
        cin = c4
        for i in range(3, log_size + 1):
            cout = self.channels[2 ** i]
            self.convs.append(_StyledConv(cin, cout, 3, style_dim, upsample=True, blur_kernel=blur_kernel))
            self.convs.append(_StyledConv(cout, cout, 3, style_dim, blur_kernel=blur_kernel))
            self.to_rgbs.append(_ToRGB(cout, style_dim, blur_kernel=blur_kernel))
            cin = cout
        self.n_latent = self.num_ws = log_size * 2 - 2
        self.register_buffer("w_avg", None, persistent=False)

    def mapping(self, z: torch.Tensor, truncation_psi: float = 1.0) -> torch.Tensor:
        _check_z(z, self.z_dim)
        w = self.style(z)
        if truncation_psi == 1:
            return w
        if self.w_avg is None:
            raise ValueError("truncation_psi != 1 needs w_avg, which this checkpoint does not have: "
                             "set G.w_avg = G.mean_w() first, or use truncation_psi=1")
        avg = self.w_avg.to(w.dtype)
        return avg + truncation_psi * (w - avg)  # the original's formula (bit-exact)

    def _noise(self, noise_mode: str, generator: torch.Generator | None, n: int) -> list:
        if noise_mode == "none":
            return [None] * self.num_layers
        if noise_mode == "const":
            return [getattr(self.noises, f"noise_{i}") for i in range(self.num_layers)]
        dev = self.input.input.device
        return [_randn([n, 1, 2 ** ((i + 5) // 2), 2 ** ((i + 5) // 2)], generator, dev) for i in range(self.num_layers)]

    def synthesis(self, ws: torch.Tensor, noise_mode: str = "const", clamp: bool = True,
                  generator: torch.Generator | None = None) -> torch.Tensor:
        _check_noise_mode(noise_mode)
        _check_ws(ws, self.num_ws, self.w_dim)
        noise = self._noise(noise_mode, generator, ws.shape[0])
        out = self.input.input.repeat(ws.shape[0], 1, 1, 1)
        out = self.conv1(out, ws[:, 0], noise=noise[0])
        skip = self.to_rgb1(out, ws[:, 1])
        i = 1
        for c1, c2, n1, n2, to_rgb in zip(self.convs[::2], self.convs[1::2], noise[1::2], noise[2::2], self.to_rgbs):
            out = c1(out, ws[:, i], noise=n1)
            out = c2(out, ws[:, i + 1], noise=n2)
            skip = to_rgb(out, ws[:, i + 2], skip)
            i += 2
        return skip.clamp(-1, 1) if clamp else skip


# ---------------------------------------------------------------------------------------------
# NVIDIA stylegan2-ada-pytorch layout


def ada_channels(resolution: int, channel_base: int = 32768, channel_max: int = 512) -> dict[int, int]:
    """Channel widths of stylegan2-ada's SynthesisNetwork (``min(channel_base // res, channel_max)``)."""
    return {r: min(channel_base // r, channel_max) for r in (2 ** i for i in range(2, int(math.log2(resolution)) + 1))}


class FullyConnectedLayer(nn.Module):
    """stylegan2-ada's FullyConnectedLayer (keys ``weight``, ``bias``)."""

    def __init__(self, in_features: int, out_features: int, bias: bool = True, activation: str = "linear",
                 lr_multiplier: float = 1.0, bias_init: float = 0.0):
        super().__init__()
        self.activation = activation
        self.weight = nn.Parameter(torch.randn([out_features, in_features]) / lr_multiplier)
        self.bias = nn.Parameter(torch.full([out_features], float(bias_init))) if bias else None
        self.weight_gain = lr_multiplier / math.sqrt(in_features)
        self.bias_gain = lr_multiplier

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        w = self.weight.to(x.dtype) * self.weight_gain
        b = self.bias
        if b is not None:
            b = b.to(x.dtype)
            if self.bias_gain != 1:
                b = b * self.bias_gain
        if self.activation == "linear" and b is not None:
            return torch.addmm(b.unsqueeze(0), x, w.t())
        return bias_act(x.matmul(w.t()), b, act=self.activation)


def _normalize_2nd_moment(x: torch.Tensor, eps: float = 1e-8) -> torch.Tensor:
    return x * (x.square().mean(dim=1, keepdim=True) + eps).rsqrt()


class MappingNetwork(nn.Module):
    """stylegan2-ada's MappingNetwork (``fc0`` ... ``fc{n-1}``, ``embed`` when conditional,
    buffer ``w_avg``). ``features`` lists the layer widths ``[z_dim + embed, ..., w_dim]``.
    ``forward`` returns ``[N, w_dim]`` (not broadcast: the caller repeats it ``num_ws`` times)."""

    def __init__(self, z_dim: int, c_dim: int, w_dim: int, num_ws: int, num_layers: int = 8,
                 embed_features: int | None = None, layer_features: int | None = None,
                 activation: str = "lrelu", lr_multiplier: float = 0.01, w_avg_beta: float | None = 0.995):
        super().__init__()
        self.z_dim, self.c_dim, self.w_dim, self.num_ws = z_dim, c_dim, w_dim, num_ws
        self.num_layers, self.w_avg_beta = num_layers, w_avg_beta
        if embed_features is None:
            embed_features = w_dim
        if c_dim == 0:
            embed_features = 0
        if layer_features is None:
            layer_features = w_dim
        feats = [z_dim + embed_features] + [layer_features] * (num_layers - 1) + [w_dim]
        if c_dim > 0:
            self.embed = FullyConnectedLayer(c_dim, embed_features)
        for i in range(num_layers):
            setattr(self, f"fc{i}", FullyConnectedLayer(feats[i], feats[i + 1], activation=activation,
                                                        lr_multiplier=lr_multiplier))
        if w_avg_beta is not None:
            self.register_buffer("w_avg", torch.zeros([w_dim]))
        else:  # no average in the checkpoint; G.w_avg = G.mean_w() sets one (not saved)
            self.register_buffer("w_avg", None, persistent=False)

    def forward(self, z: torch.Tensor, truncation_psi: float = 1.0, c: torch.Tensor | None = None) -> torch.Tensor:
        x = None
        if self.z_dim > 0:
            _check_z(z, self.z_dim)
            x = _normalize_2nd_moment(z.to(torch.float32))
        if self.c_dim > 0:
            if c is None or c.ndim != 2 or c.shape[1] != self.c_dim:
                raise ValueError(f"this generator is conditional: pass c= of shape [N, {self.c_dim}]")
            y = _normalize_2nd_moment(self.embed(c.to(torch.float32)))
            x = torch.cat([x, y], dim=1) if x is not None else y
        for i in range(self.num_layers):
            x = getattr(self, f"fc{i}")(x)
        if truncation_psi != 1:
            if self.w_avg is None:
                raise ValueError("truncation_psi != 1 needs w_avg, which this checkpoint does not have: "
                                 "set G.w_avg = G.mean_w() first, or use truncation_psi=1")
            x = self.w_avg.lerp(x, truncation_psi)
        return x


def _ada_modconv(x, weight, styles, *, demodulate=True, up=1, padding=0, resample_filter=None, noise=None):
    """stylegan2-ada's fused ``modulated_conv2d`` (reference path, float32)."""
    n = x.shape[0]
    w = weight.unsqueeze(0) * styles.reshape(n, 1, -1, 1, 1)
    if demodulate:
        dcoefs = (w.square().sum(dim=[2, 3, 4]) + 1e-8).rsqrt()
        w = w * dcoefs.reshape(n, -1, 1, 1, 1)
    k = weight.shape[-1]
    if up > 1:
        fw = resample_filter.shape[-1]
        # conv2d_resample's padding for up=2, then the transposed convolution's share of it
        px0 = padding + (fw + up - 1) // 2 - (k - 1)
        px1 = padding + (fw - up) // 2 - (k - up)
        pxt = max(min(-px0, -px1), 0)
        xr = x.reshape(1, -1, *x.shape[2:])
        wt = w.transpose(1, 2).reshape(n * weight.shape[1], weight.shape[0], k, k)
        out = F.conv_transpose2d(xr, wt, stride=up, padding=[pxt, pxt], groups=n)
        out = upfirdn2d(out, resample_filter, pad=(px0 + pxt, px1 + pxt, px0 + pxt, px1 + pxt), gain=up ** 2)
        out = out.reshape(n, -1, *out.shape[2:])
    else:
        out = _grouped_modconv(x, w, False, padding)
    if noise is not None:
        out = out + noise
    return out


class SynthesisLayer(nn.Module):
    """stylegan2-ada's SynthesisLayer (``affine``, ``weight``, ``bias``, ``noise_const``,
    ``noise_strength``, ``resample_filter``)."""

    def __init__(self, in_channels: int, out_channels: int, w_dim: int, resolution: int, kernel_size: int = 3,
                 up: int = 1, use_noise: bool = True, activation: str = "lrelu",
                 resample_filter: Sequence[float] = (1, 3, 3, 1), conv_clamp: float | None = None):
        super().__init__()
        self.resolution, self.up, self.use_noise = resolution, up, use_noise
        self.activation, self.conv_clamp = activation, conv_clamp
        self.register_buffer("resample_filter", make_kernel(resample_filter))
        self.padding = kernel_size // 2
        self.act_gain = ACT_GAIN[activation]
        self.affine = FullyConnectedLayer(w_dim, in_channels, bias_init=1)
        self.weight = nn.Parameter(torch.randn([out_channels, in_channels, kernel_size, kernel_size]))
        if use_noise:
            self.register_buffer("noise_const", torch.randn([resolution, resolution]))
            self.noise_strength = nn.Parameter(torch.zeros([]))
        self.bias = nn.Parameter(torch.zeros([out_channels]))

    def forward(self, x, w, noise_mode="const", gain=1.0, generator=None):
        styles = self.affine(w)
        noise = None
        if self.use_noise and noise_mode == "random":
            noise = _randn([x.shape[0], 1, self.resolution, self.resolution], generator, x.device) * self.noise_strength
        if self.use_noise and noise_mode == "const":
            noise = self.noise_const * self.noise_strength
        x = _ada_modconv(x, self.weight, styles, up=self.up, padding=self.padding,
                         resample_filter=self.resample_filter, noise=noise)
        clamp = self.conv_clamp * gain if self.conv_clamp is not None else None
        return bias_act(x, self.bias, act=self.activation, gain=self.act_gain * gain, clamp=clamp)


class ToRGBLayer(nn.Module):
    """stylegan2-ada's ToRGBLayer (``affine``, ``weight``, ``bias``)."""

    def __init__(self, in_channels: int, out_channels: int, w_dim: int, kernel_size: int = 1,
                 conv_clamp: float | None = None):
        super().__init__()
        self.conv_clamp = conv_clamp
        self.affine = FullyConnectedLayer(w_dim, in_channels, bias_init=1)
        self.weight = nn.Parameter(torch.randn([out_channels, in_channels, kernel_size, kernel_size]))
        self.bias = nn.Parameter(torch.zeros([out_channels]))
        self.weight_gain = 1 / math.sqrt(in_channels * (kernel_size ** 2))

    def forward(self, x, w):
        styles = self.affine(w) * self.weight_gain
        x = _ada_modconv(x, self.weight, styles, demodulate=False, padding=0)
        return bias_act(x, self.bias, clamp=self.conv_clamp)


class Conv2dLayer(nn.Module):
    """stylegan2-ada's Conv2dLayer, as the ``resnet`` architecture's 1x1 upsampling ``skip``."""

    def __init__(self, in_channels: int, out_channels: int, kernel_size: int, bias: bool = True,
                 activation: str = "linear", up: int = 1, resample_filter: Sequence[float] = (1, 3, 3, 1),
                 conv_clamp: float | None = None):
        super().__init__()
        if kernel_size != 1 or up not in (1, 2):
            raise ValueError("only the 1x1 (optionally upsampling) Conv2dLayer of the resnet skip is supported")
        self.activation, self.up, self.conv_clamp = activation, up, conv_clamp
        self.register_buffer("resample_filter", make_kernel(resample_filter))
        self.padding = kernel_size // 2
        self.weight_gain = 1 / math.sqrt(in_channels * (kernel_size ** 2))
        self.act_gain = ACT_GAIN[activation]
        self.weight = nn.Parameter(torch.randn([out_channels, in_channels, kernel_size, kernel_size]))
        self.bias = nn.Parameter(torch.zeros([out_channels])) if bias else None

    def forward(self, x, gain=1.0):
        x = F.conv2d(x, self.weight * self.weight_gain)
        if self.up > 1:
            fw = self.resample_filter.shape[-1]
            p0, p1 = (fw + self.up - 1) // 2, (fw - self.up) // 2
            x = upfirdn2d(x, self.resample_filter, up=self.up, pad=(p0, p1, p0, p1), gain=self.up ** 2)
        clamp = self.conv_clamp * gain if self.conv_clamp is not None else None
        return bias_act(x, self.bias, act=self.activation, gain=self.act_gain * gain, clamp=clamp)


class SynthesisBlock(nn.Module):
    """stylegan2-ada's SynthesisBlock (``const`` or ``conv0``; ``conv1``; ``torgb``; ``skip``)."""

    def __init__(self, in_channels: int, out_channels: int, w_dim: int, resolution: int, img_channels: int,
                 is_last: bool, architecture: str = "skip", resample_filter: Sequence[float] = (1, 3, 3, 1),
                 conv_clamp: float | None = None, **layer_kwargs):
        super().__init__()
        if architecture not in ("orig", "skip", "resnet"):
            raise ValueError(f"unknown architecture {architecture!r}")
        self.in_channels, self.w_dim, self.resolution = in_channels, w_dim, resolution
        self.img_channels, self.is_last, self.architecture = img_channels, is_last, architecture
        self.register_buffer("resample_filter", make_kernel(resample_filter))
        self.num_conv = self.num_torgb = 0
        if in_channels == 0:
            self.const = nn.Parameter(torch.randn([out_channels, resolution, resolution]))
        else:
            self.conv0 = SynthesisLayer(in_channels, out_channels, w_dim=w_dim, resolution=resolution, up=2,
                                        resample_filter=resample_filter, conv_clamp=conv_clamp, **layer_kwargs)
            self.num_conv += 1
        self.conv1 = SynthesisLayer(out_channels, out_channels, w_dim=w_dim, resolution=resolution,
                                    conv_clamp=conv_clamp, **layer_kwargs)
        self.num_conv += 1
        if is_last or architecture == "skip":
            self.torgb = ToRGBLayer(out_channels, img_channels, w_dim=w_dim, conv_clamp=conv_clamp)
            self.num_torgb += 1
        if in_channels != 0 and architecture == "resnet":
            self.skip = Conv2dLayer(in_channels, out_channels, kernel_size=1, bias=False, up=2,
                                    resample_filter=resample_filter)

    def forward(self, x, img, ws, noise_mode="const", generator=None):
        w_iter = iter(ws.unbind(dim=1))
        kw = {"noise_mode": noise_mode, "generator": generator}
        if self.in_channels == 0:
            x = self.const.unsqueeze(0).repeat([ws.shape[0], 1, 1, 1])
            x = self.conv1(x, next(w_iter), **kw)
        elif self.architecture == "resnet":
            y = self.skip(x, gain=math.sqrt(0.5))
            x = self.conv0(x, next(w_iter), **kw)
            x = self.conv1(x, next(w_iter), gain=math.sqrt(0.5), **kw)
            x = y + x
        else:
            x = self.conv0(x, next(w_iter), **kw)
            x = self.conv1(x, next(w_iter), **kw)
        if img is not None:
            fw = self.resample_filter.shape[-1]
            p0, p1 = (fw + 1) // 2, (fw - 2) // 2
            img = upfirdn2d(img, self.resample_filter, up=2, pad=(p0, p1, p0, p1), gain=4)
        if self.is_last or self.architecture == "skip":
            y = self.torgb(x, next(w_iter)).to(torch.float32)
            img = img + y if img is not None else y
        return x, img


class SynthesisNetwork(nn.Module):
    """stylegan2-ada's SynthesisNetwork (``b4`` ... ``b{resolution}``); ``channels`` maps each
    resolution to its width (default :func:`ada_channels`)."""

    def __init__(self, w_dim: int, img_resolution: int, img_channels: int = 3, channel_base: int = 32768,
                 channel_max: int = 512, channels: dict[int, int] | None = None, **block_kwargs):
        super().__init__()
        log2 = int(math.log2(img_resolution))
        if img_resolution < 4 or 2 ** log2 != img_resolution:
            raise ValueError(f"img_resolution must be a power of two >= 4, not {img_resolution}")
        self.w_dim, self.img_resolution, self.img_channels = w_dim, img_resolution, img_channels
        self.block_resolutions = [2 ** i for i in range(2, log2 + 1)]
        ch = dict(channels) if channels is not None else ada_channels(img_resolution, channel_base, channel_max)
        self.num_ws = 0
        for res in self.block_resolutions:
            block = SynthesisBlock(ch[res // 2] if res > 4 else 0, ch[res], w_dim=w_dim, resolution=res,
                                   img_channels=img_channels, is_last=res == img_resolution, **block_kwargs)
            self.num_ws += block.num_conv + (block.num_torgb if res == img_resolution else 0)
            setattr(self, f"b{res}", block)

    def forward(self, ws: torch.Tensor, noise_mode: str = "const", clamp: bool = True,
                generator: torch.Generator | None = None) -> torch.Tensor:
        _check_noise_mode(noise_mode)
        _check_ws(ws, self.num_ws, self.w_dim)
        ws = ws.to(torch.float32)
        x = img = None
        w_idx = 0
        for res in self.block_resolutions:
            block = getattr(self, f"b{res}")
            cur = ws.narrow(1, w_idx, block.num_conv + block.num_torgb)
            w_idx += block.num_conv
            x, img = block(x, img, cur, noise_mode=noise_mode, generator=generator)
        return img.clamp(-1, 1) if clamp else img


class AdaGenerator(_GeneratorSurface):
    """NVIDIA stylegan2-ada-pytorch's Generator; ``state_dict()`` has its keys exactly.

    ``mapping_kwargs`` go to :class:`MappingNetwork` (``num_layers``, ``layer_features``,
    ``embed_features``, ``activation``, ``lr_multiplier``, ``w_avg_beta``), ``synthesis_kwargs`` to
    :class:`SynthesisNetwork` (``channel_base``, ``channel_max`` or ``channels``, ``architecture``,
    ``conv_clamp``, ``resample_filter``, ``use_noise``, ``activation``); ``num_fp16_res`` and other
    precision-only keys are ignored (everything runs in float32)."""

    _PRECISION_ONLY = ("num_fp16_res", "fp16_channels_last", "use_fp16", "channels_last")

    def __init__(self, z_dim: int, c_dim: int, w_dim: int, img_resolution: int, img_channels: int = 3,
                 mapping_kwargs: dict | None = None, synthesis_kwargs: dict | None = None):
        super().__init__()
        self.z_dim, self.c_dim, self.w_dim = z_dim, c_dim, w_dim
        self.img_resolution = self.resolution = img_resolution
        self.img_channels = img_channels
        sk = {k: v for k, v in (synthesis_kwargs or {}).items() if k not in self._PRECISION_ONLY}
        self.synthesis = SynthesisNetwork(w_dim=w_dim, img_resolution=img_resolution, img_channels=img_channels, **sk)
        self.num_ws = self.synthesis.num_ws
        self.mapping = MappingNetwork(z_dim=z_dim, c_dim=c_dim, w_dim=w_dim, num_ws=self.num_ws,
                                      **(mapping_kwargs or {}))

    @property
    def w_avg(self) -> torch.Tensor | None:
        return self.mapping.w_avg

    @w_avg.setter
    def w_avg(self, value: torch.Tensor | None) -> None:
        self.mapping.w_avg = value


# ---------------------------------------------------------------------------------------------
# pSp / e4e encoders (IR / IR-SE backbone)

#: the stages of IR-SE50, the backbone of every released pSp / e4e checkpoint
IR50_UNITS = (3, 4, 14, 3)
IR_WIDTHS = (64, 128, 256, 512)


class _SEModule(nn.Module):
    def __init__(self, channels: int, reduction: int = 16):
        super().__init__()
        self.fc1 = nn.Conv2d(channels, channels // reduction, kernel_size=1, padding=0, bias=False)
        self.fc2 = nn.Conv2d(channels // reduction, channels, kernel_size=1, padding=0, bias=False)

    def forward(self, x):
        s = F.adaptive_avg_pool2d(x, 1)
        s = torch.sigmoid(self.fc2(F.relu(self.fc1(s))))
        return x * s


class _BottleneckIR(nn.Module):
    """``bottleneck_IR`` / ``bottleneck_IR_SE`` (keys ``shortcut_layer.*``, ``res_layer.*``)."""

    def __init__(self, in_channel: int, depth: int, stride: int, se: bool = True):
        super().__init__()
        self.stride = stride
        if in_channel == depth:
            self.shortcut_layer = nn.MaxPool2d(1, stride)
        else:
            self.shortcut_layer = nn.Sequential(nn.Conv2d(in_channel, depth, (1, 1), stride, bias=False),
                                                nn.BatchNorm2d(depth))
        layers = [nn.BatchNorm2d(in_channel), nn.Conv2d(in_channel, depth, (3, 3), (1, 1), 1, bias=False),
                  nn.PReLU(depth), nn.Conv2d(depth, depth, (3, 3), stride, 1, bias=False), nn.BatchNorm2d(depth)]
        if se:
            layers.append(_SEModule(depth, 16))
        self.res_layer = nn.Sequential(*layers)

    def forward(self, x):
        return self.res_layer(x) + self.shortcut_layer(x)


class _GradualStyleBlock(nn.Module):
    def __init__(self, in_c: int, out_c: int, spatial: int):
        super().__init__()
        self.out_c = out_c
        pools = int(math.log2(spatial))
        mods: list[nn.Module] = [nn.Conv2d(in_c, out_c, kernel_size=3, stride=2, padding=1), nn.LeakyReLU()]
        for _ in range(pools - 1):
            mods += [nn.Conv2d(out_c, out_c, kernel_size=3, stride=2, padding=1), nn.LeakyReLU()]
        self.convs = nn.Sequential(*mods)
        self.linear = EqualLinear(out_c, out_c, lr_mul=1)

    def forward(self, x):
        return self.linear(self.convs(x).view(-1, self.out_c))


def _upsample_add(x, y):
    return F.interpolate(x, size=y.shape[2:], mode="bilinear", align_corners=True) + y


ENCODER_TYPES = ("GradualStyleEncoder", "Encoder4Editing")


class _IREncoder(nn.Module):
    """pSp's GradualStyleEncoder / e4e's Encoder4Editing (the module under ``encoder.``)."""

    coarse_ind, middle_ind = 3, 7

    def __init__(self, encoder_type: str, n_styles: int, w_dim: int = 512, units: Sequence[int] = IR50_UNITS,
                 widths: Sequence[int] = IR_WIDTHS, input_nc: int = 3, se: bool = True,
                 style_spatial: Sequence[int] | None = None):
        super().__init__()
        if encoder_type not in ENCODER_TYPES:
            raise ValueError(f"encoder_type must be one of {', '.join(ENCODER_TYPES)}, not {encoder_type!r}")
        if len(units) != 4 or len(widths) != 4:
            raise ValueError("the IR backbone has 4 stages: units and widths need 4 numbers each")
        self.encoder_type, self.style_count, self.w_dim = encoder_type, n_styles, w_dim
        self.input_layer = nn.Sequential(nn.Conv2d(input_nc, widths[0], (3, 3), 1, 1, bias=False),
                                         nn.BatchNorm2d(widths[0]), nn.PReLU(widths[0]))
        blocks, cin = [], widths[0]
        ends = []
        for u, d in zip(units, widths):
            for j in range(u):
                blocks.append(_BottleneckIR(cin, d, 2 if j == 0 else 1, se=se))
                cin = d
            ends.append(len(blocks) - 1)
        self.body = nn.Sequential(*blocks)
        self._taps = (ends[1], ends[2], ends[3])  # c1, c2, c3: 6, 20, 23 in IR-50
        if style_spatial is None:
            style_spatial = [16 if i < self.coarse_ind else 32 if i < self.middle_ind else 64 for i in range(n_styles)]
        self.styles = nn.ModuleList([_GradualStyleBlock(widths[3], w_dim, s) for s in style_spatial])
        self.latlayer1 = nn.Conv2d(widths[2], widths[3], kernel_size=1, stride=1, padding=0)
        self.latlayer2 = nn.Conv2d(widths[1], widths[3], kernel_size=1, stride=1, padding=0)

    def _features(self, x):
        x = self.input_layer(x)
        c1 = c2 = c3 = None
        for i, layer in enumerate(self.body):
            x = layer(x)
            if i == self._taps[0]:
                c1 = x
            elif i == self._taps[1]:
                c2 = x
            elif i == self._taps[2]:
                c3 = x
        return c1, c2, c3

    def forward(self, x):
        c1, c2, c3 = self._features(x)
        if self.encoder_type == "GradualStyleEncoder":
            lat = [self.styles[j](c3) for j in range(self.coarse_ind)]
            p2 = _upsample_add(c3, self.latlayer1(c2))
            lat += [self.styles[j](p2) for j in range(self.coarse_ind, self.middle_ind)]
            p1 = _upsample_add(p2, self.latlayer2(c1))
            lat += [self.styles[j](p1) for j in range(self.middle_ind, self.style_count)]
            return torch.stack(lat, dim=1)
        # Encoder4Editing at its inference stage (18): w0 for every style plus all the deltas
        w0 = self.styles[0](c3)
        w = w0.repeat(self.style_count, 1, 1).permute(1, 0, 2)
        features = c3
        p2 = None
        for i in range(1, min(18 + 1, self.style_count)):
            if i == self.coarse_ind:
                p2 = _upsample_add(c3, self.latlayer1(c2))
                features = p2
            elif i == self.middle_ind:
                features = _upsample_add(p2, self.latlayer2(c1))
            w[:, i] += self.styles[i](features)
        return w


class PSPEncoder(nn.Module):
    """``E(img [N, 3, 256, 256] in [-1, 1]) -> ws [N, n_styles, w_dim]``: the pSp / e4e
    encoder under ``encoder.`` (so ``state_dict()`` holds the checkpoint's ``encoder.*`` keys)
    plus, when ``start_from_latent_avg``, the checkpoint's ``latent_avg`` (a non-persistent
    buffer, ``[w_dim]`` or ``[n_styles, w_dim]``) added to the codes, as the originals do."""

    input_size = 256

    def __init__(self, encoder_type: str, n_styles: int, w_dim: int = 512, units: Sequence[int] = IR50_UNITS,
                 widths: Sequence[int] = IR_WIDTHS, se: bool = True, start_from_latent_avg: bool = True,
                 latent_avg: torch.Tensor | None = None, style_spatial: Sequence[int] | None = None):
        super().__init__()
        self.encoder = _IREncoder(encoder_type, n_styles, w_dim, units, widths, se=se, style_spatial=style_spatial)
        self.encoder_type, self.num_ws, self.w_dim = encoder_type, n_styles, w_dim
        self.start_from_latent_avg = bool(start_from_latent_avg)
        self.register_buffer("latent_avg", None if latent_avg is None else latent_avg.detach().float().clone(),
                             persistent=False)
        if self.start_from_latent_avg and latent_avg is None:
            raise ValueError("start_from_latent_avg needs latent_avg")

    def forward(self, img: torch.Tensor) -> torch.Tensor:
        if img.ndim != 4 or img.shape[1] != 3 or img.shape[2:] != (self.input_size, self.input_size):
            raise ValueError(f"the encoder takes images of shape [N, 3, 256, 256] in [-1, 1], got {list(img.shape)}")
        codes = self.encoder(img.to(torch.float32))
        if self.start_from_latent_avg:
            avg = self.latent_avg
            codes = codes + (avg.reshape(1, -1, self.w_dim) if avg.ndim >= 2 else avg.reshape(1, 1, -1))
        return codes



"""Latent search: the w+ of a generator that draws a given face (papers/deepblur.txt, sec. 3.2).

DeepBlur's first step, and the encoder of ``dp-image`` over a generator: find the w+ whose
image is closest to the face's aligned crop (the generator's own FFHQ crop,
:meth:`deid.latent.generator.GeneratorModel.align`), by gradient descent through the
generator's differentiable port (:meth:`GeneratorModel.differentiable`).

Contract:

* ``invert(model, crops, steps=...)``: uint8 crops ``[n, S, S, 3]`` -> :class:`SearchResult`
  with ``ws`` float32 ``[n, num_ws, w_dim]``. The start is the public mean w on every layer
  (the generator's "average face", as in the paper), or ``init`` (an encoder's w+: the search
  then refines it).
* The loss is the masked pixel loss: mean squared error in [-1, 1] inside the generator's soft
  face oval (:meth:`LatentModel.mask`), on both images area-downsampled to ``loss_size``
  pixels, plus ``reg`` x the mean square of the standardised offset from the public mean
  (keeps the code where the generator was trained). No identity loss: the evaluation's
  attacker (MobileFaceNet) would then have shaped the code it is asked to recognise.
* Bounded cost: ``steps`` is the number of forward+backward passes per face, exactly
  (``adam``: one per step; ``lbfgs``: PyTorch's L-BFGS with a strong-Wolfe line search and
  its own budget checks; the pass after the last is refused, and the point returned is the
  lowest-loss one evaluated). Faces are searched one at a time with ``lbfgs`` (its line search
  would couple a batch) and ``batch`` at a time with ``adam`` (the loss is a sum over faces, so
  each face's gradient is its own): either way face i's result depends on face i only.
* Bounds: the optimised w+ is clipped to the public per-dimension bounds of w
  (``model.lower`` / ``model.upper``) after every Adam step and at the end.
* ``device``: ``auto`` is CUDA when there is one (and the Ray actor holds it), else the CPU;
  :func:`default_steps` is the step count a method uses when its params name none (CPU: few,
  a forward+backward pass is ~3.5 s per face there; CUDA: many).
* Nothing of the search is logged but counts and timings.
"""

from __future__ import annotations

import logging
import time
from dataclasses import dataclass
from typing import Any, Callable

import numpy as np

log = logging.getLogger(__name__)

#: steps of a search whose params name none, by device type (see the module docstring)
DEFAULT_STEPS = {"cpu": 4, "cuda": 100}
#: initial step of each optimiser, in units of the public std of w
DEFAULT_LR = {"adam": 0.1, "lbfgs": 1.0}
OPTIMIZERS = ("lbfgs", "adam")


def search_device(device: str = "auto"):
    """The torch device a search runs on (``auto``: CUDA when this process may use one)."""
    from deid.latent.torchscript import pick_device

    return pick_device(device)


def default_steps(device) -> int:
    return DEFAULT_STEPS["cuda" if str(device).startswith("cuda") else "cpu"]


@dataclass(frozen=True)
class SearchResult:
    ws: np.ndarray             # float32 [n, num_ws, w_dim]
    loss_start: np.ndarray     # float64 [n]: the masked pixel loss at the start
    loss_end: np.ndarray       # float64 [n]: at the returned point (the lowest evaluated)
    evaluations: np.ndarray    # int [n]: forward+backward passes spent on each face
    device: str
    seconds: float


def _targets(model, crops: np.ndarray, size: int, feather: float):
    """``(target [n, 3, s, s] in [-1, 1], mask [1, 1, s, s])`` as float32 tensors."""
    import cv2
    import torch

    from deid.latent.base import face_mask

    crops = model.check_crops(crops)
    small = np.stack([c if c.shape[0] == size else cv2.resize(c, (size, size), interpolation=cv2.INTER_AREA)
                      for c in crops]) if len(crops) else np.zeros((0, size, size, 3), np.uint8)
    t = torch.from_numpy(small.astype(np.float32) / 127.5 - 1.0).permute(0, 3, 1, 2).contiguous()
    m = face_mask(size, model.layout, model.align_scale, feather)
    return t, torch.from_numpy(m)[None, None]


def _downsample(img, size: int):
    import torch.nn.functional as F

    r = img.shape[-1]
    if r == size:
        return img
    if r % size == 0:
        return F.avg_pool2d(img, r // size)
    return F.interpolate(img, size=(size, size), mode="area")


class _Spent(Exception):
    """The search's budget of passes is spent."""


def invert(model, crops: np.ndarray, *, steps: int, optimizer: str = "lbfgs", lr: float | None = None,
           init: np.ndarray | None = None, loss_size: int = 256, feather: float = 0.06, reg: float = 1e-3,
           first_step: float = 0.03,
           device: Any = "auto", batch: int = 4,
           progress: Callable[[int], Any] | None = None) -> SearchResult:
    """Search the w+ of each crop (see the module docstring)."""
    import torch

    if optimizer not in OPTIMIZERS:
        raise ValueError(f"latent search: optimizer must be one of {', '.join(OPTIMIZERS)}, got {optimizer!r}")
    steps = int(steps)
    if steps < 0:
        raise ValueError("latent search: steps must be >= 0")
    dev = search_device(device) if isinstance(device, str) else torch.device(device)
    n, L, D = len(crops), model.num_ws, model.w_dim
    t0 = time.perf_counter()
    if init is None:
        start = np.broadcast_to(model.mean, (n, L, D)).astype(np.float32)
    else:
        start = np.asarray(init, dtype=np.float32)
        if start.shape != (n, L, D):
            raise ValueError(f"latent search: init must be [{n}, {L}, {D}], got {list(start.shape)}")
    if n == 0 or steps == 0:
        zeros = np.zeros(n)
        return SearchResult(np.clip(start, model.lower, model.upper).astype(np.float32), zeros, zeros,
                            np.zeros(n, int), str(dev), time.perf_counter() - t0)
    gen = model.differentiable(dev)
    target, mask = _targets(model, crops, int(loss_size), feather)
    target, mask = target.to(dev), mask.to(dev)
    mean = torch.as_tensor(model.mean, dtype=torch.float32, device=dev)
    std = torch.as_tensor(model.std, dtype=torch.float32, device=dev)
    lo = torch.as_tensor((model.lower - model.mean) / model.std, dtype=torch.float32, device=dev)
    hi = torch.as_tensor((model.upper - model.mean) / model.std, dtype=torch.float32, device=dev)
    msum = mask.sum()
    lr = float(DEFAULT_LR[optimizer] if lr is None else lr)

    def losses(u, tgt):
        img = gen.synthesis(mean + std * u)
        pix = (((_downsample(img, tgt.shape[-1]) - tgt) ** 2) * mask).sum(dim=(1, 2, 3)) / (3 * msum)
        return pix + reg * (u ** 2).mean(dim=(1, 2))

    out = np.empty((n, L, D), np.float32)
    first, last, evals = np.zeros(n), np.zeros(n), np.zeros(n, int)
    group = 1 if optimizer == "lbfgs" else max(1, int(batch))
    for a in range(0, n, group):
        sl = slice(a, min(n, a + group))
        u0 = (torch.from_numpy(start[sl]).to(dev) - mean) / std
        # a flat leaf: the interpreted graph hands back non-contiguous gradients, which L-BFGS cannot view
        flat = u0.clamp(lo, hi).reshape(-1).clone().requires_grad_(True)
        u = flat.view(u0.shape)
        tgt = target[sl].to(dev)
        count = [0]
        best: list = [None, None]  # the lowest total loss evaluated, and its point

        memo: list = [None, None, None]  # the last point evaluated, its total loss and gradient

        def closure():
            if memo[0] is not None and torch.equal(memo[0], flat.detach()):
                flat.grad = memo[2].clone()  # the same point again (a new L-BFGS call re-reads it): free
                return memo[1]
            if count[0] >= steps:  # the budget is exact: no pass beyond it (the line search stops here)
                raise _Spent
            opt.zero_grad(set_to_none=True)
            per = losses(u, tgt)
            per.sum().backward()
            memo[0], memo[1], memo[2] = flat.detach().clone(), per.sum().detach(), flat.grad.detach().clone()
            count[0] += 1
            vals = per.detach().double().cpu().numpy()
            log.debug("latent search: pass %d, loss %s", count[0], vals)
            if count[0] == 1:
                first[sl] = vals
            if best[0] is None or vals.sum() < best[0].sum():
                best[0], best[1] = vals, u.detach().clone()
            if progress is not None:
                progress(per.shape[0])
            return per.sum()

        try:
            if optimizer == "lbfgs":
                # PyTorch's first L-BFGS step is lr / |g|_1 along -g: over ~12k coordinates a
                # negligible move that wastes a few-pass budget. The first iteration gets
                # lr = first_step x (coordinates), about first_step public stds per coordinate (the
                # line search corrects it); then lr as given, with the history kept.
                opt = torch.optim.LBFGS([flat], lr=first_step * flat.numel(), max_iter=1, max_eval=steps + 1,
                                        history_size=10, line_search_fn="strong_wolfe", tolerance_grad=1e-9,
                                        tolerance_change=1e-12)
                opt.step(closure)
                opt.param_groups[0].update(lr=lr, max_iter=steps)
                opt.step(closure)
            else:
                opt = torch.optim.Adam([flat], lr=lr)
                for _ in range(steps):
                    opt.step(closure)
                    with torch.no_grad():
                        flat.copy_(torch.maximum(torch.minimum(u, hi), lo).reshape(-1))
        except _Spent:
            pass
        with torch.no_grad():
            # the best point evaluated (a line search may end on a worse trial), within the bounds
            u_best = torch.maximum(torch.minimum(best[1], hi), lo)
            out[sl] = (mean + std * u_best).cpu().numpy()
        last[sl], evals[sl] = best[0], count[0]
    secs = time.perf_counter() - t0
    log.info("latent search: %d face(s), %d pass(es) each on %s, %.1f s", n, steps, dev, secs)
    return SearchResult(out, first, last, evals, str(dev), secs)

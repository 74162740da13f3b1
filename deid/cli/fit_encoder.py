"""Fitting an encoder into a generator's w (``deid latent fit-encoder``); the file is
:mod:`deid.latent.encoder`'s.

Data: public or synthetic only.

1. Synthetic pairs (phase ``w``): ``z ~ N(0, I)`` (a fixed seed: a fit), ``w = mean + psi (map(z)
   - mean)`` with ``psi`` uniform in [``psi_min``, 1], the face ``decode(w)``; the face is then
   detected with the run's detector and aligned with :meth:`GeneratorModel.align`, exactly as
   a run aligns a real face, so the encoder sees the crop layout it will be given. Loss: the
   squared error of the standardised principal coordinates of w, weighted by each axis'
   variance (the fraction of w's variance the encoder misses): no generator backprop. Pairs
   are cached (``<cache>/encoder-pairs``), keyed by the generator's weights, the detector, the
   seed and the input size; a resumed fit reads them back.
2. Fine-tuning (phase ``public``, optional, ``finetune_steps``): aligned crops of a public
   reference folder (lfw-public-ref), loss ``pixel_weight * mean((x_hat - x)^2 inside the
   face oval) + id_weight * |beta - cos(R(x), R(x_hat))|`` (private-encoder.txt, eq. 3) +
   ``w_reg * mean(c^2)``, through the PyTorch generator and a differentiable recognizer R
   (:class:`deid.evaluate.recognizers.MobileFaceNetTorch`, the only one here): the card names
   it and its sha256, and ``deid evaluate`` then labels that recognizer's attack "not
   independent" (dlib-resnet128 is the independent attacker of such a run).

Held-out numbers (the card's ``heldout``): public faces not used in fitting, reconstructed
through the encoder and, as the baseline, the average latent (the public mean w): RMSE inside
the face oval (0-255), and the recognizer's cosine between the crop and its reconstruction.
"""

from __future__ import annotations

import hashlib
import io
import json
import math
import time
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, Callable

import numpy as np

PAIRS_FORMAT = "deid-encoder-pairs/2"
CKPT_FORMAT = "deid-encoder-checkpoint/1"
#: crop size the fit aligns and compares at (the encoder resizes its input; the generator's
#: output is area-resized to this)
FIT_CROP = 256
LICENCE = ("the encoder is fitted through the generator and inherits its weights' licence: for MobileStyleGAN, "
           "the NVIDIA Source Code License-NC (non-commercial research and evaluation only)")


@dataclass
class FitOptions:
    out: str
    latent: dict = field(default_factory=lambda: {"backend": "mobilestylegan"})
    detector: str = "centerface"
    pairs: int = 400
    steps: int = 1500
    batch: int = 32
    lr: float = 1e-3
    psi_min: float = 0.5
    input_size: int = 64
    width: int = 16
    components: int = 64
    public: str | None = None
    public_limit: int = 200
    holdout: int = 16
    beta: float | None = None
    finetune_steps: int = 0
    finetune_batch: int = 2
    finetune_lr: float = 1e-4
    pixel_weight: float = 1.0
    id_weight: float = 1.0
    w_reg: float = 0.01
    seed: int = 0
    device: str = "cpu"
    threads: int = 0
    max_minutes: float | None = None
    checkpoint_every: int = 200
    checkpoint: str | None = None
    resume: bool = False
    cache_dir: str | None = None
    command: str = ""
    progress: bool = True

    def key(self) -> str:
        """What a checkpoint must agree on to be resumed (everything but time, progress, paths)."""
        d = {k: v for k, v in self.__dict__.items()
             if k not in ("max_minutes", "checkpoint", "resume", "command", "progress", "out", "checkpoint_every",
                          "device", "cache_dir", "threads")}
        return hashlib.sha256(json.dumps(d, sort_keys=True, default=str).encode()).hexdigest()


class TimeUp(Exception):
    pass


# ------------------------------------------------------------------------ geometry
def arc_matrix(size: int, scale: float = 1.0) -> np.ndarray:
    """2x3: the generator's FFHQ crop (``size`` px) -> the 112 px ArcFace crop, by the mean
    ArcFace points of the FFHQ layout (:data:`deid.faces.align.FFHQ_TEMPLATES`)."""
    from deid.faces.align import FFHQ_TEMPLATES, TEMPLATES, _similarity

    src = ((FFHQ_TEMPLATES["arcface5"] - 0.5) * scale + 0.5) * size
    return _similarity(src, TEMPLATES["arcface5"] * 112.0)


def arc_crops(crops: np.ndarray, scale: float = 1.0) -> np.ndarray:
    """uint8 112 px ArcFace crops of generator-frame crops ``[n, S, S, 3]``."""
    import cv2

    m = arc_matrix(crops.shape[1], scale)
    return np.stack([cv2.warpAffine(c, m, (112, 112), flags=cv2.INTER_LINEAR, borderMode=cv2.BORDER_REFLECT)
                     for c in crops]) if len(crops) else np.zeros((0, 112, 112, 3), np.uint8)


def arc_theta(size: int, scale: float = 1.0):
    """The ``affine_grid`` theta (output 112 px -> input ``size`` px, normalised, align_corners
    False) of :func:`arc_matrix`."""
    import torch

    m = np.vstack([arc_matrix(size, scale), [0, 0, 1]])
    minv = np.linalg.inv(m)
    a_out_inv = np.array([[56.0, 0, 55.5], [0, 56.0, 55.5], [0, 0, 1]])      # normalised -> 112 px
    a_in = np.array([[2.0 / size, 0, 1.0 / size - 1], [0, 2.0 / size, 1.0 / size - 1], [0, 0, 1]])
    return torch.tensor((a_in @ minv @ a_out_inv)[:2], dtype=torch.float32)


def arc_crop_tensor(x, theta):
    """``x`` ``[N, 3, S, S]`` -> ``[N, 3, 112, 112]`` (bilinear, differentiable)."""
    import torch.nn.functional as F

    grid = F.affine_grid(theta.to(x.device).expand(len(x), 2, 3), [len(x), 3, 112, 112], align_corners=False)
    return F.grid_sample(x, grid, mode="bilinear", padding_mode="border", align_corners=False)


# ------------------------------------------------------------------------ data
def largest(faces):
    return max(faces, key=lambda f: f.width * f.height) if faces else None


def align_largest(gen, detector, rgb: np.ndarray) -> np.ndarray | None:
    f = largest(detector.detect(rgb))
    if f is None:
        return None
    crop, _ = gen.align(rgb, f)
    return crop


def _resize(crops: np.ndarray, size: int) -> np.ndarray:
    import cv2

    if not len(crops) or crops.shape[1] == size:
        return crops
    return np.stack([cv2.resize(c, (size, size), interpolation=cv2.INTER_AREA) for c in crops])


def pairs_path(cache_root: Path, gen, detector: str, seed: int, psi_min: float, size: int) -> Path:
    key = hashlib.sha256(f"{gen.weights_fingerprint}|{gen.align_scale:g}|{detector}|{seed}|{psi_min:g}|{size}"
                         .encode()).hexdigest()[:24]
    return cache_root / "encoder-pairs" / f"pairs-{key}.npz"


def _save_pairs(path: Path, crops, ws, tried: int, meta: dict) -> None:
    from deid.io.write import atomic_write
    import fsspec

    buf = io.BytesIO()
    np.savez(buf, crops=crops, w=ws, tried=np.int64(tried),
             meta=np.frombuffer(json.dumps(dict(meta, format=PAIRS_FORMAT), sort_keys=True).encode(), np.uint8))
    atomic_write(fsspec.filesystem("file"), str(path), buf.getvalue())


def _load_pairs(path: Path, meta: dict):
    if not path.is_file():
        return None
    try:
        with np.load(path, allow_pickle=False) as z:
            m = json.loads(z["meta"].tobytes().decode())
            if m.get("format") != PAIRS_FORMAT or any(m.get(k) != v for k, v in meta.items()):
                return None
            return z["crops"], z["w"], int(z["tried"])
    except (OSError, ValueError, KeyError):
        return None


def synthetic_pairs(gen, detector, detector_name: str, n: int, *, seed: int, psi_min: float, size: int,
                    cache_root: Path, deadline: float | None = None, progress: bool = True):
    """``(crops uint8 [m, size, size, 3], w float32 [m, w_dim], tried)``: the first ``n``
    generated faces the detector finds (``tried`` draws), aligned as a run aligns."""
    from tqdm import tqdm

    meta = {"generator": gen.weights_fingerprint, "align_scale": gen.align_scale, "detector": detector_name,
            "seed": seed, "psi_min": psi_min, "size": size}
    path = pairs_path(cache_root, gen, detector_name, seed, psi_min, size)
    got = _load_pairs(path, meta)
    crops, ws, tried = (list(got[0]), list(got[1]), got[2]) if got else ([], [], 0)
    if len(crops) >= n:
        return np.stack(crops[:n]), np.stack(ws[:n]).astype(np.float32), tried
    # draw i comes from its own stream (seed, i): the pairs do not depend on n or on a resume
    need = 4 * n + 64

    def draw(i: int):
        r = np.random.default_rng([seed, i])
        return r.standard_normal((1, gen.z_dim)).astype(np.float32), psi_min + (1.0 - psi_min) * r.random()
    last_save = len(crops)
    with tqdm(total=n, initial=len(crops), desc="synthetic pairs", unit="face", disable=not progress) as bar:
        while len(crops) < n:
            if tried >= need:
                raise ValueError(f"the detector found a face in only {len(crops)} of {tried} generated images")
            if deadline is not None and time.monotonic() > deadline:
                _save_pairs(path, np.stack(crops) if crops else np.zeros((0, size, size, 3), np.uint8),
                            np.stack(ws) if ws else np.zeros((0, gen.w_dim), np.float32), tried, meta)
                raise TimeUp(f"{len(crops)} of {n} synthetic pairs")
            z, psi = draw(tried)
            w = gen.mean + psi * (gen.map(z) - gen.mean)
            tried += 1
            img = gen.decode(w)[0]
            crop = align_largest(gen, detector, img)
            if crop is None:
                continue
            crops.append(_resize(crop[None], size)[0])
            ws.append(w[0].astype(np.float32))
            bar.update(1)
            if len(crops) - last_save >= 25 or len(crops) == n:
                _save_pairs(path, np.stack(crops), np.stack(ws), tried, meta)
                last_save = len(crops)
    return np.stack(crops), np.stack(ws).astype(np.float32), tried


def public_files(folder: str) -> list[str]:
    """The image files of a public folder, sorted by name."""
    exts = {".jpg", ".jpeg", ".png", ".webp", ".bmp", ".pgm", ".tif", ".tiff"}
    root = Path(folder)
    if not root.is_dir():
        raise FileNotFoundError(f"--public {folder}: not a folder")
    return sorted(str(p) for p in root.rglob("*") if p.suffix.lower() in exts)


def split_public(files: list[str], limit: int, holdout: int) -> tuple[list[str], list[str]]:
    """``(fit, held_out)``: the held-out files are the last ``holdout`` of the sorted list, the
    fit files the first ``limit`` of the rest (disjoint by construction)."""
    held = files[len(files) - holdout:] if holdout else []
    rest = files[:len(files) - holdout] if holdout else files
    return rest[:limit], held


def public_crops(files: list[str], gen, detector, size: int = FIT_CROP, progress: bool = True,
                 desc: str = "public faces"):
    """``(crops [m, size, size, 3], used files, set fingerprint)``: the largest face of each
    file aligned to the generator's frame; the fingerprint is the sha256 over the used files'
    names and contents."""
    from PIL import Image
    from tqdm import tqdm

    crops, used = [], []
    h = hashlib.sha256()
    for p in tqdm(files, desc=desc, unit="img", disable=not progress):
        data = Path(p).read_bytes()
        rgb = np.asarray(Image.open(io.BytesIO(data)).convert("RGB"))
        crop = align_largest(gen, detector, rgb)
        if crop is None:
            continue
        crops.append(_resize(crop[None], size)[0])
        used.append(p)
        h.update(f"{Path(p).name}={hashlib.sha256(data).hexdigest()}\n".encode())
    arr = np.stack(crops) if crops else np.zeros((0, size, size, 3), np.uint8)
    return arr, used, h.hexdigest()


# ------------------------------------------------------------------------ numbers
def masked_rmse(a: np.ndarray, b: np.ndarray, mask: np.ndarray) -> np.ndarray:
    """Per-face RMSE (0-255) inside the soft mask."""
    d = (a.astype(np.float64) - b.astype(np.float64)) ** 2
    m = mask.astype(np.float64)[None, :, :, None]
    return np.sqrt((d * m).sum(axis=(1, 2, 3)) / (3 * m.sum()))


def reconstruction(encoder, gen, crops: np.ndarray, recognizer=None) -> dict:
    """Held-out numbers of ``encoder`` on aligned ``crops`` (generator frame, any size): per
    face, the RMSE inside the face oval and the recognizer's cosine, for the encoder's
    reconstruction and for the average latent (the public mean w)."""
    s = crops.shape[1]
    rec = _resize(gen.decode_ws(encoder.encode(crops)), s)
    avg = np.repeat(_resize(gen.decode(gen.mean[None]), s), len(crops), axis=0)
    from deid.latent.base import face_mask

    mask = face_mask(s, "ffhq", gen.align_scale, 0.0)
    out = {"n": int(len(crops)), "rmse_encoder": masked_rmse(crops, rec, mask).tolist(),
           "rmse_mean_w": masked_rmse(crops, avg, mask).tolist()}
    if recognizer is not None:
        e0 = recognizer.embed_crops(arc_crops(crops, gen.align_scale))
        out["id_cos_encoder"] = np.sum(e0 * recognizer.embed_crops(arc_crops(rec, gen.align_scale)), 1).tolist()
        out["id_cos_mean_w"] = np.sum(e0 * recognizer.embed_crops(arc_crops(avg, gen.align_scale)), 1).tolist()
    return out


def summary(rep: dict) -> dict:
    return {k: (round(float(np.mean(v)), 4) if isinstance(v, list) else v) for k, v in rep.items()}


# ------------------------------------------------------------------------ training
def _lr(step: int, total: int, base: float) -> float:
    return base * 0.5 * (1 + math.cos(math.pi * min(step, total) / max(total, 1)))


def regression_loss(net, x, w, weights):
    c = net(x)
    t = net.coords_of(w)
    return (((c - t) ** 2) * weights).sum(1).mean()


def w_phase(net, crops, ws, opts: FitOptions, start: int, opt, save: Callable[[int], None], deadline, progress):
    """Phase 1: regression of the standardised principal coordinates; returns the steps done."""
    import torch
    from tqdm import tqdm

    dev = next(net.parameters()).device
    x_all = torch.from_numpy(np.ascontiguousarray(crops)).permute(0, 3, 1, 2)
    w_all = torch.from_numpy(ws)
    var = net.w_axis_std ** 2
    weights = (var / var.sum()).to(dev)
    net.train()
    step = start
    with tqdm(total=opts.steps, initial=start, desc="fit w", unit="step", disable=not progress) as bar:
        while step < opts.steps:
            if deadline is not None and time.monotonic() > deadline:
                save(step)
                raise TimeUp(f"{step} of {opts.steps} w steps")
            g = torch.Generator().manual_seed(opts.seed * 1_000_003 + step)
            idx = torch.randint(len(x_all), (min(opts.batch, len(x_all)),), generator=g)
            x = x_all[idx].float().div(255.0).to(dev)
            for pg in opt.param_groups:
                pg["lr"] = _lr(step, opts.steps, opts.lr)
            loss = regression_loss(net, x, w_all[idx].to(dev), weights)
            opt.zero_grad()
            loss.backward()
            opt.step()
            step += 1
            bar.update(1)
            bar.set_postfix(loss=f"{loss.item():.3f}")
            if step % opts.checkpoint_every == 0 or step == opts.steps:
                save(step)
    net.eval()
    return step


def unexplained(net, crops, ws) -> float:
    """The fraction of w's variance (along the encoder's axes) the encoder misses on ``crops``."""
    import torch

    net.eval()
    var = net.w_axis_std ** 2
    weights = var / var.sum()
    with torch.no_grad():
        x = torch.from_numpy(np.ascontiguousarray(crops)).permute(0, 3, 1, 2).float().div(255.0)
        loss = regression_loss(net, x.to(weights.device), torch.from_numpy(ws).to(weights.device), weights)
    return float(loss)


def finetune_loss(net, generator, recognizer, x_crops, beta: float, opts: FitOptions, mask, theta):
    """The private-encoder loss of a batch of public crops (``uint8 [b, S, S, 3]``, S = FIT_CROP):
    ``(total, pixel, identity term, cos)``."""
    import torch
    import torch.nn.functional as F

    from deid.latent.encoder import to_input

    dev = next(net.parameters()).device
    x_in = to_input(x_crops, net.input_size).to(dev)
    c = net(x_in)
    ws = net.w(c)[:, None, :].expand(-1, generator.num_ws, -1)
    img = generator.synthesis(ws)
    img = F.interpolate(img, size=(x_crops.shape[1], x_crops.shape[1]), mode="area")
    rec = (img.clamp(-1, 1) + 1.0) * 127.5
    x = torch.from_numpy(np.ascontiguousarray(x_crops)).permute(0, 3, 1, 2).float().to(dev)
    m = mask.to(dev)
    pixel = ((((rec - x) / 255.0) ** 2) * m).sum((1, 2, 3)) / (3 * m.sum())
    with torch.no_grad():
        e_x = recognizer.embed_tensor(arc_crop_tensor(x, theta))
    e_r = recognizer.embed_tensor(arc_crop_tensor(rec, theta))
    cos = (e_x * e_r).sum(1)
    ident = (beta - cos).abs()
    total = opts.pixel_weight * pixel.mean() + opts.id_weight * ident.mean() + opts.w_reg * (c ** 2).mean()
    return total, pixel.mean(), ident.mean(), cos.detach()


def public_phase(net, generator, recognizer, crops, opts: FitOptions, start: int, opt, save, deadline, progress,
                 align_scale: float):
    import torch
    from tqdm import tqdm

    from deid.latent.base import face_mask

    s = crops.shape[1]
    mask = torch.from_numpy(face_mask(s, "ffhq", align_scale, 0.03))[None, None]
    theta = arc_theta(s, align_scale)
    net.eval()   # batch norm on its fitted statistics: batches of two faces would not estimate them
    step = start
    beta = float(opts.beta if opts.beta is not None else 1.0)
    with tqdm(total=opts.finetune_steps, initial=start, desc=f"fine-tune beta {beta:g}", unit="step",
              disable=not progress) as bar:
        while step < opts.finetune_steps:
            if deadline is not None and time.monotonic() > deadline:
                save(step)
                raise TimeUp(f"{step} of {opts.finetune_steps} fine-tuning steps")
            rng = np.random.default_rng(opts.seed * 1_000_003 + 7 + step)
            idx = rng.choice(len(crops), size=min(opts.finetune_batch, len(crops)), replace=False)
            for pg in opt.param_groups:
                pg["lr"] = opts.finetune_lr
            loss, pix, ident, cos = finetune_loss(net, generator, recognizer, crops[np.sort(idx)], beta, opts,
                                                  mask, theta)
            opt.zero_grad()
            loss.backward()
            opt.step()
            step += 1
            bar.update(1)
            bar.set_postfix(pixel=f"{pix.item():.4f}", cos=f"{cos.mean().item():.3f}")
            save(step)
    return step


# ------------------------------------------------------------------------ checkpoints
def _write(uri: str, data: bytes) -> None:
    import fsspec

    from deid.io.write import atomic_write

    fs, path = fsspec.core.url_to_fs(uri)
    atomic_write(fs, path, data)


def _ckpt_bytes(net, opt, phase: str, step: int, opts: FitOptions, extra: dict) -> bytes:
    import torch

    buf = io.BytesIO()
    torch.save({"format": CKPT_FORMAT, "key": opts.key(), "phase": phase, "step": int(step),
                "state": {k: v.detach().cpu() for k, v in net.state_dict().items()},
                "opt": opt.state_dict(), "extra": json.dumps(extra, sort_keys=True)}, buf)
    return buf.getvalue()


def _read_ckpt(uri: str, opts: FitOptions):
    import fsspec
    import torch

    try:
        with fsspec.open(uri, "rb") as f:
            blob = torch.load(io.BytesIO(f.read()), map_location="cpu", weights_only=True)
    except FileNotFoundError:
        return None
    if blob.get("format") != CKPT_FORMAT:
        raise ValueError(f"{uri}: not a {CKPT_FORMAT} file")
    if blob.get("key") != opts.key():
        raise ValueError(f"{uri}: checkpoint of a fit with other options; rerun with the same options, or without "
                         "--resume to start over")
    return blob


# ------------------------------------------------------------------------ the fit
def fit_encoder(opts: FitOptions, log: Callable[[str], None] = print) -> dict:
    """Fit and write an encoder (see the module docstring); returns its card. Stops at
    ``max_minutes`` with a checkpoint (and raises :class:`TimeUp`); ``resume`` continues one.
    ``threads`` sets torch's CPU threads for the fit only (restored after)."""
    import torch

    before = torch.get_num_threads()
    try:
        return _fit(opts, log)
    finally:
        torch.set_num_threads(before)


def _fit(opts: FitOptions, log: Callable[[str], None]) -> dict:
    import torch

    from deid.evaluate.recognizers import MobileFaceNetTorch
    from deid.faces.registry import make_detector
    from deid.latent.encoder import Encoder, make_net, to_bytes
    from deid.latent.generator import cache_root
    from deid.latent.registry import load_latent_model

    t0 = time.monotonic()
    deadline = t0 + 60 * opts.max_minutes if opts.max_minutes else None
    torch.manual_seed(opts.seed)
    if opts.threads:
        torch.set_num_threads(opts.threads)
    if opts.beta is not None and not 0.0 <= opts.beta <= 1.0:
        raise ValueError("--beta must be in [0, 1] (the target cosine similarity)")
    if opts.finetune_steps and not opts.public:
        raise ValueError("--finetune-steps needs --public (a folder of PUBLIC reference photos)")
    if opts.finetune_steps and opts.beta is None:
        raise ValueError("--finetune-steps needs --beta (the target identity similarity)")
    dev = torch.device(opts.device)
    spec = dict(opts.latent)
    spec.setdefault("crop_size", FIT_CROP)
    gen = load_latent_model(spec, device=opts.device)
    if not hasattr(gen, "weights_fingerprint"):
        raise ValueError(f"latent backend {spec.get('backend')}: not a generator (fit-encoder fits an encoder into "
                         "a generator's w)")
    detector = make_detector({"backend": opts.detector})
    croot = Path(opts.cache_dir).expanduser() if opts.cache_dir else cache_root()
    ckpt_uri = opts.checkpoint or f"{opts.out}.ckpt"

    net = make_net(opts.input_size, opts.width, opts.components, gen.w_dim, stats=gen.stats).to(dev)
    opt = torch.optim.AdamW(net.parameters(), lr=opts.lr, weight_decay=1e-4)
    phase, start, extra = "w", 0, {}
    if opts.resume:
        blob = _read_ckpt(ckpt_uri, opts)
        if blob is not None:
            net.load_state_dict(blob["state"])
            phase, start, extra = blob["phase"], int(blob["step"]), json.loads(blob["extra"])
            if phase == "public":
                opt = torch.optim.Adam(net.parameters(), lr=opts.finetune_lr)
            opt.load_state_dict(blob["opt"])
            log(f"resuming {ckpt_uri}: phase {phase}, step {start}")

    def saver(ph):
        def save(step):
            _write(ckpt_uri, _ckpt_bytes(net, opt, ph, step, opts, extra))
        return save

    # phase 1
    crops, ws, tried = synthetic_pairs(gen, detector, opts.detector, opts.pairs, seed=opts.seed,
                                       psi_min=opts.psi_min, size=opts.input_size, cache_root=croot,
                                       deadline=deadline, progress=opts.progress)
    n_val = max(1, len(crops) // 10)
    tr_c, tr_w, va_c, va_w = crops[n_val:], ws[n_val:], crops[:n_val], ws[:n_val]
    if phase == "w":
        w_phase(net, tr_c, tr_w, opts, start, opt, saver("w"), deadline, opts.progress)
        phase, start = "public", 0
        opt = torch.optim.Adam(net.parameters(), lr=opts.finetune_lr)
    net.eval()
    extra["synthetic_val_unexplained"] = round(unexplained(net, va_c, va_w), 4)
    extra["synthetic_train_unexplained"] = round(unexplained(net, tr_c[:256], tr_w[:256]), 4)

    # public data
    recognizer = None
    public: dict[str, Any] | None = None
    held = np.zeros((0, FIT_CROP, FIT_CROP, 3), np.uint8)
    if opts.public:
        fit_files, held_files = split_public(public_files(opts.public), opts.public_limit, opts.holdout)
        recognizer = MobileFaceNetTorch(device=opts.device)
        fit_crops, fit_used, fit_fp = (public_crops(fit_files, gen, detector, progress=opts.progress)
                                       if opts.finetune_steps else (None, [], None))
        held, held_used, held_fp = public_crops(held_files, gen, detector, progress=opts.progress,
                                                desc="held-out faces")
        public = {"folder": str(opts.public), "fit_files": len(fit_files), "fit_faces": len(fit_used),
                  "fit_set_sha256": fit_fp, "heldout_files": len(held_files), "heldout_faces": len(held_used),
                  "heldout_set_sha256": held_fp,
                  "split": "sorted by name; held out: the last --holdout files; fit: the first --public-limit "
                           "of the rest"}
        if opts.finetune_steps:
            if not len(fit_crops):
                raise ValueError(f"--public {opts.public}: no face found in the fit files")
            tgen = _torch_generator(spec, opts.device)
            for p in tgen.parameters():
                p.requires_grad_(False)
            public_phase(net, tgen, recognizer, fit_crops, opts, start if phase == "public" else 0, opt,
                         saver("public"), deadline, opts.progress, gen.align_scale)
    net.eval()

    card: dict[str, Any] = {
        "name": f"encoder-{gen.name}-{opts.input_size}",
        "kind": "plain w (repeated on all w+ layers)",
        "generator": {"name": gen.name, "backend": gen.backend, "weights_fingerprint": gen.weights_fingerprint,
                      "w_dim": gen.w_dim, "num_ws": gen.num_ws, "align_scale": gen.align_scale,
                      "layout": gen.layout, "w_stats": {"samples": gen.stats.samples, "seed": gen.stats.seed}},
        "data": {"synthetic": {"pairs": int(len(crops)), "drawn": int(tried), "seed": opts.seed,
                               "psi": [opts.psi_min, 1.0], "detector": opts.detector,
                               "validation_pairs": int(n_val),
                               "validation_unexplained_w_variance": extra["synthetic_val_unexplained"],
                               "train_unexplained_w_variance": extra["synthetic_train_unexplained"]},
                 "public": public},
        "beta": opts.beta if opts.finetune_steps else None,
        "identity_recognizer": ({"name": recognizer.name, "sha256": recognizer.fingerprint,
                                 "role": "the identity term of the fine-tuning: not an independent attacker of "
                                         "runs with this encoder"} if (recognizer and opts.finetune_steps) else None),
        "loss": {"w": "variance-weighted squared error of the standardised principal coordinates of w",
                 "public": (f"{opts.pixel_weight:g} * masked pixel MSE + {opts.id_weight:g} * |beta - cos| + "
                            f"{opts.w_reg:g} * mean(c^2)") if opts.finetune_steps else None},
        "steps": {"w": opts.steps, "public": opts.finetune_steps, "batch": opts.batch,
                  "finetune_batch": opts.finetune_batch, "lr": opts.lr, "finetune_lr": opts.finetune_lr},
        "command": opts.command,
        "seed": opts.seed,
        "device": opts.device,
        "threads": torch.get_num_threads(),
        "torch": torch.__version__,
        "licence": LICENCE,
        "not_dp": "an encoder is not a privacy mechanism: nothing about it is differentially private",
    }
    if len(held):
        data = to_bytes(net, card)
        rep = reconstruction(Encoder(data, "<fitted>"), gen, held, recognizer)
        card["heldout"] = summary(rep)
    card["fit_seconds"] = round(time.monotonic() - t0, 1)
    data = to_bytes(net, card)
    _write(opts.out, data)
    try:
        import fsspec

        fs, path = fsspec.core.url_to_fs(ckpt_uri)
        if fs.exists(path):
            fs.rm_file(path)
    except OSError:
        pass
    card["fingerprint"] = hashlib.sha256(data).hexdigest()
    return card


def _torch_generator(spec: dict, device: str):
    """A differentiable generator for the fine-tuning (the backend's PyTorch runtime)."""
    from deid.latent.registry import load_latent_model

    s = dict(spec)
    s["runtime"] = "torch"
    model = load_latent_model(s, device=device)
    g = model.torch_generator()
    if not getattr(g, "differentiable", False):
        raise ValueError(f"latent backend {spec.get('backend')}: no differentiable runtime for the fine-tuning")
    return g

"""GPU actors vs CPU actors: deid's Ray pipeline with a TorchScript latent model.

    .venv/bin/python bench/gpu.py                          # N = 600 photos, configs for this machine
    .venv/bin/python bench/gpu.py --n 60 --crop 128        # a quick look (CPU machine: config (a) only)
    python3 bench/gpu.py --configs cpu:16:0,gpu:1:1,frac:4:0.25

What it does, all in ONE process (one embedded Ray, started once):

1. Makes a TorchScript encoder/decoder pair of realistic size: a convolutional
   autoencoder on ``--crop`` px aligned crops (default 256) with a ``--dim``-D latent
   (default 512), six stride-2 convolutions down to 4x4 and six transposed
   convolutions back up (the script prints its size: 22.4 M parameters, 90 MB of .pt
   and 1.27 GMAC per face through encoder and decoder at crop 256, dim 512).
   **The weights are random**: this measures throughput, not anonymization quality; the
   decoded faces are noise. Bounds (``.npz``) are the 0.5%/99.5% quantiles of its codes
   on random crops of the bundled photos (deid.latent.bounds_from_codes).
2. Makes an input folder of ``--n`` distinct photos from the bundled real faces in
   manifests/samples (lfw/ and group/): each copy is a random crop (88-100% of each
   side) of one source, mirrored every other time, longer side capped at
   ``--max-side`` (default 1024), saved as JPEG q92. The file cache is warmed.
3. Runs ``deid.pipeline.run.run_job(manifest, engine="ray")`` once per config, method
   ``deepblur`` (not DP: no ledger), ``latent.backend: torchscript, device: auto``,
   ``checks.enabled: false``, dlib HOG detection (CPU), ``run.batch_size`` ``--batch-size``.
   A config is ``name:actors:gpus_per_actor``; defaults: (a) ``cpu``: as many CPU actors
   as Ray CPUs, (a4) 4 CPU actors, (b) ``gpu``: 1 actor holding 1 GPU, (c) ``frac``:
   4 actors holding 0.25 GPU each, (d) as many actors as Ray CPUs sharing 1 GPU. GPU
   configs are skipped, with a line saying so, when torch sees no CUDA GPU or Ray has none.

What the numbers are:

* ``img/s`` = images / run_job wall (plan, actor start, model load in every actor,
  processing, audit). ``steady`` = (records - 1) / (last - first record's worker-side
  ``processed_at``): warm-up left out.
* ``detect_ms`` / ``anon_ms``: medians over records of the audit's ``timings``
  (anonymize = align + encode + edit + decode + paste back, for all faces of the photo);
  ``anon/face`` = median of anonymize_ms / n_faces over records with faces.
* ``device``: what the latent model in each actor used, as each actor reported it after
  loading (``model.device``, ``torch.cuda.is_available()``, ``ray.get_gpu_ids()``); the
  stage is deid's own ProcessRecords, subclassed here only to write that report.
* ``gpu util``: mean / max of nvidia-smi's utilization.gpu sampled every 0.5 s during the
  run (when nvidia-smi is there).
* ratios: each GPU config's img/s over the CPU configs' img/s, all from this one run.
"""

from __future__ import annotations

import argparse
import json
import logging
import os
import platform
import random
import shutil
import statistics
import subprocess
import sys
import tempfile
import threading
import time
from pathlib import Path

os.environ.setdefault("RAY_USAGE_STATS_ENABLED", "0")
os.environ.setdefault("RAY_AUTH_MODE", "disabled")

REPO = Path(__file__).resolve().parents[1]
if str(REPO) not in sys.path:
    sys.path.insert(0, str(REPO))

import numpy as np  # noqa: E402

import deid.pipeline.engine as deid_engine  # noqa: E402
import deid.pipeline.run as deid_run  # noqa: E402
from deid.config import manifest_from_dict  # noqa: E402
from deid.pipeline.stages import ProcessRecords  # noqa: E402

SAMPLES = REPO / "manifests" / "samples"
IMAGE_EXT = {".jpg", ".jpeg", ".png"}


# ----------------------------------------------------------------------------- model
def build_model(crop: int, dim: int):
    """Random-weight conv autoencoder: [n,3,crop,crop] in [0,1] -> [n,dim] -> [n,3,crop,crop]."""
    import torch
    from torch import nn

    chans = [3, 32, 64, 128, 256, 512, 512]
    side = crop // 2 ** (len(chans) - 1)
    if side < 1 or crop % 2 ** (len(chans) - 1):
        raise SystemExit(f"--crop must be a multiple of {2 ** (len(chans) - 1)}")

    class Encoder(nn.Module):
        def __init__(self):
            super().__init__()
            layers = []
            for a, b in zip(chans[:-1], chans[1:]):
                layers += [nn.Conv2d(a, b, 4, stride=2, padding=1), nn.LeakyReLU(0.2)]
            self.conv = nn.Sequential(*layers)
            self.fc = nn.Linear(chans[-1] * side * side, dim)

        def forward(self, x: torch.Tensor) -> torch.Tensor:
            return self.fc(torch.flatten(self.conv(x), 1))

    class Decoder(nn.Module):
        def __init__(self):
            super().__init__()
            self.fc = nn.Linear(dim, chans[-1] * side * side)
            layers = []
            rev = chans[::-1]
            for i, (a, b) in enumerate(zip(rev[:-1], rev[1:])):
                layers.append(nn.ConvTranspose2d(a, b, 4, stride=2, padding=1))
                layers.append(nn.Sigmoid() if i == len(rev) - 2 else nn.LeakyReLU(0.2))
            self.deconv = nn.Sequential(*layers)
            self.c = chans[-1]
            self.side = side

        def forward(self, z: torch.Tensor) -> torch.Tensor:
            return self.deconv(self.fc(z).reshape(z.shape[0], self.c, self.side, self.side))

    torch.manual_seed(0)
    enc, dec = Encoder().eval(), Decoder().eval()
    macs = 0
    s = crop
    for a, b in zip(chans[:-1], chans[1:]):
        s //= 2
        macs += s * s * b * a * 16
    macs = 2 * (macs + chans[-1] * side * side * dim)  # decoder mirrors the encoder
    params = sum(p.numel() for p in enc.parameters()) + sum(p.numel() for p in dec.parameters())
    return enc, dec, macs, params


def write_model(tmp: Path, crop: int, dim: int, photos: list[Path]) -> dict:
    import torch

    from deid.latent import bounds_from_codes

    enc, dec, macs, params = build_model(crop, dim)
    enc_s, dec_s = torch.jit.script(enc), torch.jit.script(dec)
    enc_s.save(str(tmp / "encoder.pt"))
    dec_s.save(str(tmp / "decoder.pt"))
    # bounds from codes of random crops of the bundled photos (public, not the records' faces)
    from PIL import Image

    rng = random.Random(1)
    crops = []
    for i in range(256):
        im = Image.open(photos[i % len(photos)]).convert("RGB")
        w, h = im.size
        s = rng.randint(min(w, h) // 3, min(w, h))
        x, y = rng.randint(0, w - s), rng.randint(0, h - s)
        crops.append(np.asarray(im.crop((x, y, x + s, y + s)).resize((crop, crop)), dtype=np.float32) / 255.0)
    with torch.inference_mode():
        x = torch.from_numpy(np.stack(crops)).permute(0, 3, 1, 2).contiguous()
        z = torch.cat([enc(x[a:a + 32]) for a in range(0, len(x), 32)]).double().numpy()
    b = bounds_from_codes(z, 0.005)
    lower, upper = np.asarray(b["lower"], float), np.asarray(b["upper"], float)
    upper = np.maximum(upper, lower + 1e-6)
    card = {"fitted_on": "bench/gpu.py: RANDOM weights, bounds from 256 random crops of manifests/samples; "
                         "throughput benchmark only, not an anonymizer"}
    np.savez(tmp / "bounds.npz", lower=lower, upper=upper,
             card=np.frombuffer(json.dumps(card).encode(), dtype=np.uint8))
    mb = sum((tmp / f).stat().st_size for f in ("encoder.pt", "decoder.pt")) / 1e6
    return {"encoder": str(tmp / "encoder.pt"), "decoder": str(tmp / "decoder.pt"), "bounds": str(tmp / "bounds.npz"),
            "crop_size": crop, "dim": dim, "gmac_per_face": macs / 1e9, "params_m": params / 1e6, "files_mb": mb}


# ----------------------------------------------------------------------------- inputs
def source_photos() -> list[Path]:
    out = []
    for sub in ("lfw", "group"):
        out += sorted(p for p in (SAMPLES / sub).rglob("*") if p.suffix.lower() in IMAGE_EXT)
    return out


def make_inputs(dst: Path, n: int, max_side: int, photos: list[Path]) -> tuple[int, int]:
    from PIL import Image, ImageOps

    dst.mkdir(parents=True, exist_ok=True)
    rng = random.Random(0)
    total = 0
    for i in range(n):
        src = photos[i % len(photos)]
        im = ImageOps.exif_transpose(Image.open(src)).convert("RGB")
        w, h = im.size
        cw, ch = int(w * rng.uniform(0.88, 1.0)), int(h * rng.uniform(0.88, 1.0))
        x, y = rng.randint(0, w - cw), rng.randint(0, h - ch)
        im = im.crop((x, y, x + cw, y + ch))
        if (i // len(photos)) % 2:
            im = ImageOps.mirror(im)
        if max(im.size) > max_side:
            f = max_side / max(im.size)
            im = im.resize((max(1, round(im.size[0] * f)), max(1, round(im.size[1] * f))), Image.LANCZOS)
        p = dst / f"{i:05d}_{src.stem}.jpg"
        im.save(p, quality=92)
        total += p.stat().st_size
    for p in dst.iterdir():  # warm the file cache
        p.read_bytes()
    return n, total


# ----------------------------------------------------------------------------- probe
class ProbedProcessRecords(ProcessRecords):
    """deid's stage, plus one report per actor of the device its latent model uses."""

    probe_dir = ""

    def __init__(self, manifest, ctx, budget=None, **kwargs):  # stop, workers: as the engine passes them
        t = time.perf_counter()
        super().__init__(manifest, ctx, budget, **kwargs)
        info = {"pid": os.getpid(), "init_s": round(time.perf_counter() - t, 3),
                "cuda_visible_devices": os.environ.get("CUDA_VISIBLE_DEVICES")}
        try:
            import torch

            model = self.anonymizer.model
            info.update(device=str(model.device), torch_cuda_available=torch.cuda.is_available(),
                        torch_threads=torch.get_num_threads())
            if model.device.type == "cuda":
                info["cuda_mem_reserved_mb"] = round(torch.cuda.memory_reserved(model.device) / 2**20, 1)
                info["gpu_name"] = torch.cuda.get_device_name(model.device)
        except Exception as exc:  # noqa: BLE001 - a report, not the benchmark
            info["error"] = repr(exc)
        try:
            import ray

            info["ray_gpu_ids"] = [str(g) for g in ray.get_gpu_ids()]
        except Exception as exc:  # noqa: BLE001
            info["ray_error"] = repr(exc)
        if self.probe_dir:
            Path(self.probe_dir, f"{os.getpid()}.json").write_text(json.dumps(info))


class GpuSampler:
    """nvidia-smi utilization.gpu / memory.used every ``period`` s, in a thread."""

    def __init__(self, period: float = 0.5):
        self.period = period
        self.samples: list[tuple[float, float]] = []
        self.ok = shutil.which("nvidia-smi") is not None
        self._stop = threading.Event()
        self._t = None

    def __enter__(self):
        if self.ok:
            self._t = threading.Thread(target=self._run, daemon=True)
            self._t.start()
        return self

    def _run(self):
        while not self._stop.is_set():
            try:
                out = subprocess.run(["nvidia-smi", "--query-gpu=utilization.gpu,memory.used",
                                      "--format=csv,noheader,nounits"], capture_output=True, text=True, timeout=5)
                u, m = out.stdout.strip().splitlines()[0].split(",")
                self.samples.append((float(u), float(m)))
            except Exception:  # noqa: BLE001
                pass
            self._stop.wait(self.period)

    def __exit__(self, *exc):
        self._stop.set()
        if self._t:
            self._t.join(timeout=10)

    def summary(self) -> dict:
        if not self.samples:
            return {}
        u = [s[0] for s in self.samples]
        m = [s[1] for s in self.samples]
        return {"util_mean": statistics.mean(u), "util_max": max(u), "mem_max_mb": max(m), "n": len(u)}


# ----------------------------------------------------------------------------- runs
def make_manifest(input_dir: Path, out: Path, model: dict, *, cpus: int, actors: int, gpus: float, batch_size: int,
                  upsample: int):
    return manifest_from_dict({
        "input": {"uri": str(input_dir)},
        "output": {"uri": str(out / "release"), "quarantine_uri": str(out / "quarantine"),
                   "naming_key_file": str(out.parent / "naming.key")},
        "audit": {"uri": str(out / "audit")},
        "detect": {"backend": "dlib-hog", "upsample": upsample},
        "anonymize": {"method": "deepblur"},
        "latent": {"backend": "torchscript", "encoder": model["encoder"], "decoder": model["decoder"],
                   "bounds": model["bounds"], "crop_size": model["crop_size"], "device": "auto"},
        "checks": {"enabled": False},
        "run": {"batch_size": batch_size, "actors": actors, "cpus": cpus, "gpus_per_actor": gpus, "progress": False},
    })


def run_config(name: str, actors: int, gpus: float, input_dir: Path, tmp: Path, model: dict, *, cpus: int,
               batch_size: int, upsample: int) -> dict:
    out = tmp / f"run-{name}"
    probe = tmp / f"probe-{name}"
    probe.mkdir(parents=True)
    ProbedProcessRecords.probe_dir = str(probe)
    m = make_manifest(input_dir, out, model, cpus=cpus, actors=actors, gpus=gpus, batch_size=batch_size,
                      upsample=upsample)
    rows: list[dict] = []

    def on_batch(t):
        rows.extend(t.select(["status", "n_faces", "timings", "processed_at"]).to_pylist())

    with GpuSampler() as smi:
        t0 = time.perf_counter()
        res = deid_run.run_job(m, engine="ray", progress=False, on_batch=on_batch, resume=False)
        wall = time.perf_counter() - t0
    reports = [json.loads(p.read_text()) for p in sorted(probe.glob("*.json"))]
    done = sorted(r["processed_at"].timestamp() for r in rows if r["processed_at"] is not None)
    steady = (len(done) - 1) / (done[-1] - done[0]) if len(done) > 2 and done[-1] > done[0] else float("nan")

    def med(key):
        v = [(r["timings"] or {}).get(key) for r in rows]
        v = [x for x in v if x is not None]
        return statistics.median(v) if v else float("nan")

    per_face = [(r["timings"] or {}).get("anonymize_ms") / r["n_faces"] for r in rows
                if r["n_faces"] and (r["timings"] or {}).get("anonymize_ms") is not None]
    anon_faces = [(r["timings"] or {}).get("anonymize_ms") for r in rows if r["n_faces"]]
    shutil.rmtree(out, ignore_errors=True)
    devices = sorted({r.get("device", "?") for r in reports})
    return {
        "name": name, "actors": actors, "gpus_per_actor": gpus, "images": res.summary["inputs"],
        "counts": {k: v for k, v in res.summary["counts"].items() if v}, "faces": res.summary["faces"],
        "wall_s": wall, "img_s": res.summary["inputs"] / wall, "steady_img_s": steady,
        "detect_ms": med("detect_ms"), "anonymize_ms": med("anonymize_ms"),
        "anonymize_ms_faces": statistics.median(anon_faces) if anon_faces else float("nan"),
        "anon_per_face_ms": statistics.median(per_face) if per_face else float("nan"),
        "decode_ms": med("decode_ms"), "write_ms": med("write_ms"),
        "stage_sum_s": {k: sum((r["timings"] or {}).get(k) or 0.0 for r in rows) / 1000
                        for k in ("read_ms", "decode_ms", "detect_ms", "anonymize_ms", "write_ms")},
        "devices": devices, "actor_reports": reports, "gpu": smi.summary(), "aborted": res.summary["aborted"],
    }


def parse_configs(spec: str) -> list[tuple[str, int, float]]:
    out = []
    for item in spec.split(","):
        name, actors, gpus = item.split(":")
        out.append((name, int(actors), float(gpus)))
    return out


def main(argv: list[str] | None = None) -> int:
    ap = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    ap.add_argument("--n", type=int, default=600, help="photos to make and process")
    ap.add_argument("--crop", type=int, default=256, help="aligned crop size of the latent model")
    ap.add_argument("--dim", type=int, default=512, help="latent dimension")
    ap.add_argument("--max-side", type=int, default=1024, help="longer side cap of the made photos")
    ap.add_argument("--upsample", type=int, default=1, help="detect.upsample (dlib HOG)")
    ap.add_argument("--cpus", type=int, default=os.cpu_count() or 1, help="CPUs of the embedded Ray")
    ap.add_argument("--batch-size", type=int, default=8, help="run.batch_size")
    ap.add_argument("--configs", default=None,
                    help="name:actors:gpus_per_actor,... (default: cpu:CPUS:0,gpu:1:1,frac:4:0.25,"
                         "fracN:CPUS:1/CPUS,cpu4:4:0 when CPUS > 4)")
    ap.add_argument("--budget-s", type=float, default=None,
                    help="start no further config once this many seconds have passed (the table shows what ran)")
    ap.add_argument("--json", default=None, help="also write the results here")
    ap.add_argument("--keep", default=None, help="make inputs and model here and keep them (default: a temp dir)")
    args = ap.parse_args(argv)
    logging.basicConfig(level=logging.WARNING)

    t_start = time.perf_counter()
    import torch

    cuda = torch.cuda.is_available()
    cpus = args.cpus
    if args.configs:
        configs = parse_configs(args.configs)
    else:
        configs = [("cpu", cpus, 0.0), ("gpu", 1, 1.0), ("frac", 4, 0.25), (f"frac{cpus}", cpus, round(1.0 / cpus, 6))]
        if cpus > 4:
            configs.append(("cpu4", 4, 0.0))
    tmp = Path(args.keep) if args.keep else Path(tempfile.mkdtemp(prefix="deid-gpu-bench-"))
    tmp.mkdir(parents=True, exist_ok=True)
    results: list[dict] = []
    skipped: list[str] = []
    try:
        photos = source_photos()
        t = time.perf_counter()
        model = write_model(tmp, args.crop, args.dim, photos)
        n, nbytes = make_inputs(tmp / "input", args.n, args.max_side, photos)
        print(f"inputs: {n} photos from {len(photos)} bundled sources (manifests/samples lfw/ + group/), "
              f"{nbytes / 1e6:.1f} MB, longer side <= {args.max_side}; made in {time.perf_counter() - t:.1f} s")
        print(f"latent model: TorchScript conv autoencoder, RANDOM weights (throughput only), crop {args.crop}, "
              f"dim {args.dim}, {model['params_m']:.1f} M params, {model['gmac_per_face']:.2f} GMAC/face, "
              f"{model['files_mb']:.0f} MB of .pt")
        gpu_name = torch.cuda.get_device_name(0) if cuda else "none"
        print(f"machine: {platform.machine()}, {os.cpu_count()} CPU cores, python {platform.python_version()}, "
              f"torch {torch.__version__}, cuda available: {cuda}, GPU: {gpu_name}")

        deid_engine.ProcessRecords = ProbedProcessRecords  # the same stage, plus the device report
        m0 = make_manifest(tmp / "input", tmp / "init", model, cpus=cpus, actors=1, gpus=0.0,
                           batch_size=args.batch_size, upsample=args.upsample)
        t = time.perf_counter()
        ray = deid_engine.init_ray(m0)
        import ray.data  # noqa: F401

        res = ray.cluster_resources()
        ray_gpus = res.get("GPU", 0)
        print(f"ray {ray.__version__}: ray.init {time.perf_counter() - t:.2f} s, cluster CPU {res.get('CPU')}, "
              f"GPU {ray_gpus}; method deepblur, checks off, dlib-hog upsample {args.upsample}, "
              f"batch_size {args.batch_size}", flush=True)

        # warm-up: one small run (first Ray Data run of a session pays extra set-up); not reported
        t = time.perf_counter()
        warm_in = tmp / "warm-input"
        warm_in.mkdir(exist_ok=True)
        for p in sorted((tmp / "input").iterdir())[: min(16, n)]:
            shutil.copyfile(p, warm_in / p.name)
        run_config("warmup", 1, 0.0, warm_in, tmp, model, cpus=cpus, batch_size=args.batch_size,
                   upsample=args.upsample)
        print(f"warm-up run (16 photos, 1 CPU actor, not reported): {time.perf_counter() - t:.1f} s", flush=True)

        for name, actors, gpus in configs:
            if args.budget_s is not None and time.perf_counter() - t_start > args.budget_s:
                line = (f"SKIPPED {name} (actors {actors}, gpus_per_actor {gpus}): "
                        f"--budget-s {args.budget_s:g} s used up")
                print(line, flush=True)
                skipped.append(line)
                continue
            if gpus > 0 and (not cuda or ray_gpus <= 0):
                line = (f"SKIPPED {name} (actors {actors}, gpus_per_actor {gpus}): no CUDA GPU here "
                        f"(torch.cuda.is_available() = {cuda}, Ray GPU = {ray_gpus})")
                print(line, flush=True)
                skipped.append(line)
                continue
            if gpus > 0 and actors * gpus > ray_gpus + 1e-9:
                line = f"SKIPPED {name}: {actors} x {gpus} GPU exceeds Ray's {ray_gpus} GPU"
                print(line, flush=True)
                skipped.append(line)
                continue
            if actors > cpus:
                line = f"SKIPPED {name}: {actors} actors > {cpus} Ray CPUs"
                print(line, flush=True)
                skipped.append(line)
                continue
            r = run_config(name, actors, gpus, tmp / "input", tmp, model, cpus=cpus, batch_size=args.batch_size,
                           upsample=args.upsample)
            results.append(r)
            print(f"  .. {name}: {r['images']} photos in {r['wall_s']:.1f} s ({r['img_s']:.2f} img/s, steady "
                  f"{r['steady_img_s']:.2f}), devices {r['devices']}, counts {r['counts']}, gpu {r['gpu']}",
                  flush=True)
        ray.shutdown()
    finally:
        if not args.keep:
            shutil.rmtree(tmp, ignore_errors=True)

    print()
    hdr = (f"{'config':<8} {'actors':>6} {'gpu/act':>7} {'images':>6} {'faces':>5} {'wall s':>7} {'img/s':>7} "
           f"{'steady':>7} {'detect_ms':>9} {'anon_ms':>8} {'anon/face':>9} {'gpu util':>9}  device")
    print(hdr)
    for r in results:
        g = r["gpu"]
        util = f"{g['util_mean']:.0f}/{g['util_max']:.0f}%" if g and r["gpus_per_actor"] > 0 else "-"
        print(f"{r['name']:<8} {r['actors']:>6} {r['gpus_per_actor']:>7g} {r['images']:>6} {r['faces']:>5} "
              f"{r['wall_s']:7.1f} {r['img_s']:7.2f} {r['steady_img_s']:7.2f} {r['detect_ms']:9.1f} "
              f"{r['anonymize_ms_faces']:8.1f} {r['anon_per_face_ms']:9.1f} {util:>9}  {','.join(r['devices'])}")
    print("  img/s = images / run_job wall; steady = warm-up excluded; detect_ms = median over all photos;")
    print("  anon_ms = median anonymize_ms over photos with faces; anon/face = median anonymize_ms / n_faces;")
    print("  gpu util = nvidia-smi utilization.gpu mean/max during the run;")
    print("  device = what each actor's latent model used")
    cpu_rows = [r for r in results if r["gpus_per_actor"] == 0]
    gpu_rows = [r for r in results if r["gpus_per_actor"] > 0]
    if gpu_rows and cpu_rows:
        print()
        print("ratio GPU/CPU (img/s, this run):")
        for g in gpu_rows:
            print(f"  {g['name']:<8} " + "  ".join(
                f"/ {c['name']}: {g['img_s'] / c['img_s']:.2f} (steady {g['steady_img_s'] / c['steady_img_s']:.2f}, "
                f"anon/face {c['anon_per_face_ms'] / g['anon_per_face_ms']:.1f}x faster)" for c in cpu_rows))
    print()
    print("per-stage time summed over records (s):")
    for r in results:
        print(f"  {r['name']:<8} " + "  ".join(f"{k[:-3]} {v:.1f}" for k, v in r["stage_sum_s"].items()))
    print("actor reports (first of each config):")
    for r in results:
        if r["actor_reports"]:
            print(f"  {r['name']:<8} {len(r['actor_reports'])} actors; {json.dumps(r['actor_reports'][0])}")
    for line in skipped:
        print(line)
    if args.json:
        Path(args.json).write_text(json.dumps({"model": model, "results": results, "skipped": skipped,
                                               "machine": {"cpus": os.cpu_count(), "gpu": gpu_name}},
                                              indent=1, default=str))
    print(f"\n{time.strftime('%Y-%m-%d %H:%M:%S %Z')}")
    return 0


if __name__ == "__main__":
    raise SystemExit(main())

"""MobileStyleGAN runtimes: speed on this machine and agreement of the PyTorch port with OpenVINO.

    PYTHONPATH=. .venv/bin/python bench/generator.py               # ~1 min on 2 cores
    PYTHONPATH=. .venv/bin/python bench/generator.py --images 8 --reference

For ``--images`` seeds: w = mapping(z) (OpenVINO), then the 1024 px image of that w on every
layer by OpenVINO (the w+ graph) and by the PyTorch port (float32, CPU, no gradient); the
max and mean absolute difference on the [-1, 1] image. Timings: seconds per image, after one
warm-up image, each runtime alone on the machine's cores (torch: ``torch.get_num_threads()``);
``torch backward``: forward with autograd plus the backward of a scalar loss on the image.
``--reference`` also evaluates one w with the PyTorch port in float64 and reports how far each
float32 engine is from it (max abs on the image).
"""

from __future__ import annotations

import argparse
import os
import time

import numpy as np


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--images", type=int, default=4)
    ap.add_argument("--reference", action="store_true")
    args = ap.parse_args()

    import torch

    from deid.latent import load_latent_model
    from deid.latent import mobilestylegan as msg

    t = time.perf_counter()
    model = load_latent_model({"backend": "mobilestylegan", "runtime": "openvino"})
    model.synthesize(model.broadcast(model.map(np.zeros((1, 512), np.float32))))  # compile + warm-up
    t_ov_load = time.perf_counter() - t
    t = time.perf_counter()
    gen = msg.torch_generator(msg.model_paths(), "cpu")
    t_torch_load = time.perf_counter() - t

    z = np.random.default_rng(0).standard_normal((args.images, 512)).astype(np.float32)
    t = time.perf_counter()
    w = model.map(z)
    t_map = (time.perf_counter() - t) / len(z)
    ws = model.broadcast(w).astype(np.float32)
    with torch.no_grad():
        gen.synthesis(torch.from_numpy(ws[:1]))  # warm-up
    ov_s, t_s, diffs = [], [], []
    for i in range(len(ws)):
        t = time.perf_counter()
        a = model.synthesize(ws[i:i + 1])
        ov_s.append(time.perf_counter() - t)
        t = time.perf_counter()
        with torch.no_grad():
            b = gen.synthesis(torch.from_numpy(ws[i:i + 1])).numpy()
        t_s.append(time.perf_counter() - t)
        d = np.abs(a - b)
        diffs.append((d.max(), d.mean()))
    wt = torch.from_numpy(ws[:1]).requires_grad_(True)
    t = time.perf_counter()
    gen.synthesis(wt).mean().backward()
    t_bw = time.perf_counter() - t

    load = ", ".join(f"{v:.1f}" for v in os.getloadavg())
    print(f"{os.cpu_count()} CPUs, load average {load}; torch {torch.__version__} ({torch.get_num_threads()} threads), "
          f"openvino {__import__('openvino').__version__}")
    print(f"load: openvino {t_ov_load:.1f} s (read, compile, w statistics from the cache), "
          f"torch port {t_torch_load:.1f} s; mapping {t_map * 1e3:.2f} ms/z (openvino, batch {len(z)})\n")
    print("| runtime | s/image (1024 px) | images/s |")
    print("|---|---|---|")
    for name, s in (("openvino (CPU, f32)", ov_s), ("torch port (CPU, f32)", t_s)):
        print(f"| {name} | {np.median(s):.2f} | {1 / np.median(s):.2f} |")
    print(f"| torch port, forward + backward | {t_bw:.2f} | {1 / t_bw:.2f} |")
    mx = [d[0] for d in diffs]
    print(f"\ntorch vs openvino on the same w ({len(diffs)} seeds): max abs {min(mx):.2e} .. {max(mx):.2e}, "
          f"mean abs {np.mean([d[1] for d in diffs]):.1e}")
    if args.reference:
        g64 = msg.torch_generator(msg.model_paths(), "cpu").double()
        with torch.no_grad():
            ref = g64.synthesis(torch.from_numpy(ws[:1]).double()).numpy()
            t32 = gen.synthesis(torch.from_numpy(ws[:1])).numpy()
        o32 = model.synthesize(ws[:1])
        print(f"vs a float64 evaluation of the graph (seed 0): openvino {np.abs(o32 - ref).max():.2e}, "
              f"torch float32 {np.abs(t32 - ref).max():.2e}")


if __name__ == "__main__":
    main()

"""private-encoder's encoder: seconds per face on ONE CPU core, against the OpenVINO decode of
the same faces (also on one core) in the same run.

    PYTHONPATH=. .venv/bin/python bench/encoder.py                     # ~1 min
    PYTHONPATH=. .venv/bin/python bench/encoder.py --encoder models/encoder-mobilestylegan.pt

Faces: the bundled LFW samples (CenterFace, the largest face), aligned to the generator's
frame (1024 px, as a run aligns them). Timed per face, after one warm-up face, median of
``--repeat`` passes: ``align`` (the warp to the generator's crop), ``encode`` (the resize to
the encoder's input and the network, ``torch.set_num_threads(1)``), ``decode`` (the OpenVINO
w+ synthesis at 1024 px, compiled with ``INFERENCE_NUM_THREADS 1``). Networks: the encoder
file given, and untrained networks of other sizes (time does not depend on the weights).
"""

from __future__ import annotations

import argparse
import statistics
import time
from pathlib import Path

import numpy as np

REPO = Path(__file__).resolve().parents[1]


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--encoder", default=None, help="an encoder file (default: models/encoder-mobilestylegan.pt "
                    "when present)")
    ap.add_argument("--faces", type=int, default=6)
    ap.add_argument("--repeat", type=int, default=3)
    args = ap.parse_args()

    import torch
    from PIL import Image

    torch.set_num_threads(1)
    from deid.faces.registry import make_detector
    from deid.latent import load_latent_model
    from deid.latent import mobilestylegan as msg
    from deid.latent.encoder import Encoder, load_encoder, make_net, to_bytes

    gen = load_latent_model({"backend": "mobilestylegan", "runtime": "openvino"})
    g = gen.generator
    g._synthesis = g._core.compile_model(g._synthesis_model, "CPU", {**msg.OV_CONFIG, "INFERENCE_NUM_THREADS": 1})
    det = make_detector({"backend": "centerface"})
    crops = []
    for p in sorted((REPO / "manifests" / "samples" / "lfw").glob("*/*.jpg"))[:args.faces]:
        rgb = np.asarray(Image.open(p).convert("RGB"))
        faces = det.detect(rgb)
        f = max(faces, key=lambda f: f.width * f.height)
        t = time.perf_counter()
        crops.append((gen.align(rgb, f)[0], time.perf_counter() - t))
    t_align = statistics.median(t for _, t in crops)
    crops = np.stack([c for c, _ in crops])

    encoders = []
    path = args.encoder or (REPO / "models" / "encoder-mobilestylegan.pt")
    if Path(path).is_file():
        e = load_encoder(str(path))
        encoders.append((f"{Path(path).name} (input {e.input_size}, width {e.card['network']['width']})", e))
    card = {"generator": {"num_ws": gen.num_ws, "weights_fingerprint": gen.weights_fingerprint}}
    for size, width in ((64, 16), (128, 32)):
        net = make_net(size, width, 64, gen.w_dim, stats=gen.stats)
        encoders.append((f"untrained (input {size}, width {width})", Encoder(to_bytes(net, card))))

    def per_face(fn) -> float:
        fn(crops[:1])  # warm-up
        runs = []
        for _ in range(args.repeat):
            for c in crops:
                t = time.perf_counter()
                fn(c[None])
                runs.append(time.perf_counter() - t)
        return statistics.median(runs)

    rows = []
    ws = encoders[0][1].encode(crops)
    t_dec = per_face(lambda c: gen.decode_ws(ws[:len(c)]))
    for name, e in encoders:
        params = sum(p.numel() for p in e.net.parameters())
        rows.append((name, params, per_face(e.encode)))
    print(f"\n{len(crops)} faces, {args.repeat} passes, one core (torch threads {torch.get_num_threads()}, "
          f"OpenVINO INFERENCE_NUM_THREADS 1)\n")
    print("| step | parameters | ms per face | x the decode |")
    print("|---|---:|---:|---:|")
    print(f"| align (warp to the 1024 px crop) | - | {1000 * t_align:.1f} | {t_align / t_dec:.3f} |")
    for name, params, t in rows:
        print(f"| encode: {name} | {params / 1e6:.2f} M | {1000 * t:.1f} | {t / t_dec:.3f} |")
    print(f"| decode: OpenVINO w+ synthesis, 1024 px (baseline) | - | {1000 * t_dec:.0f} | 1 |")


if __name__ == "__main__":
    main()

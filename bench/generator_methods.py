"""Per-face cost of deepblur / dp-image over the generator, against the OpenVINO decode.

    python bench/generator_methods.py [--faces 2] [--steps 4] [--out bench-generator-methods.json]

Measures, in one run on the same faces (LFW photos of manifests/samples, one face each):

* ``decode``: the OpenVINO decode of one w+ (the baseline: what synthetic-swap's bank and the
  methods' last step cost);
* ``search pass``: one forward+backward pass of the latent search (the PyTorch port), per face,
  on the CPU, and on CUDA when there is one;
* ``search``: the latent search at ``--steps`` passes (the CPU default: 4), per face;
* ``dp-image``: the whole generator dp-image method per face (align, search at ``--steps``,
  clip, noise, post-process, decode, mesh, blend), and ``deepblur`` likewise.

Prints a markdown table with each time's ratio to the decode; ``--out`` writes the numbers as
JSON. Timings are medians over the faces; the machine's other load is printed with them (the
search is CPU-bound: shared cores slow it several fold).
"""

from __future__ import annotations

import argparse
import json
import os
import sys
import time
from pathlib import Path

import numpy as np

ROOT = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(ROOT))
sys.path.insert(0, str(ROOT / "bench"))

from common import one_face_photos  # noqa: E402


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--faces", type=int, default=2)
    ap.add_argument("--steps", type=int, default=4)
    ap.add_argument("--out", default=None)
    a = ap.parse_args()

    import torch

    from deid.anonymize import make_anonymizer
    from deid.latent.registry import load_latent_model
    from deid.latent.search import invert

    model = load_latent_model({"backend": "mobilestylegan", "runtime": "openvino"})
    photos = one_face_photos(ROOT / "manifests" / "samples" / "lfw", a.faces)
    crops = [model.align(rgb, f[0])[0] for rgb, f in photos]
    rows: dict[str, list[float]] = {}

    def timed(name, fn):
        t = time.perf_counter()
        out = fn()
        rows.setdefault(name, []).append(time.perf_counter() - t)
        return out

    ws = model.broadcast(model.mean[None])
    model.decode_ws(ws)  # compile
    for _ in crops:
        timed("decode (OpenVINO, CPU)", lambda: model.decode_ws(ws))
    devices = ["cpu"] + (["cuda"] if torch.cuda.is_available() else [])
    for dev in devices:
        invert(model, crops[0][None], steps=1, device=dev)  # build the port on this device
        for c in crops:
            timed(f"search pass ({dev})", lambda: invert(model, c[None], steps=1, device=dev))
            timed(f"search, {a.steps} passes ({dev})", lambda: invert(model, c[None], steps=a.steps, device=dev))
    for meth, params in (("dp-image", {"epsilon": 1.0}), ("deepblur", {})):
        m = make_anonymizer(meth, {**params, "search_steps": a.steps, "search_device": "cpu"}, model)
        for rgb, faces in photos:
            timed(f"{meth} (generator), {a.steps} passes, per face (CPU)", lambda: m(rgb, faces))
    base = float(np.median(rows["decode (OpenVINO, CPU)"]))
    load = os.getloadavg()[0]
    print(f"\n{len(crops)} face(s); load average {load:.1f} on {os.cpu_count()} CPU(s); torch threads "
          f"{torch.get_num_threads()}\n")
    print("| step | s per face (median) | x the decode |\n|---|---|---|")
    for k, v in rows.items():
        med = float(np.median(v))
        print(f"| {k} | {med:.2f} | {med / base:.1f} |")
    if a.out:
        Path(a.out).write_text(json.dumps({"faces": len(crops), "steps": a.steps, "load_average": load,
                                           "cpus": os.cpu_count(),
                                           "seconds": {k: float(np.median(v)) for k, v in rows.items()}}, indent=2))


if __name__ == "__main__":
    main()

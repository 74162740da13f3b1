"""deid blur (checks off) vs the `deface` CLI (PyPI package): images/s on the same folder,
and face recall of both detectors on the hand-labelled dlib example boxes.

    python3 -m venv /tmp/deface-venv && /tmp/deface-venv/bin/pip install deface onnxruntime onnx   # its own venv
    .venv/bin/python bench/deface_compare.py --deface /tmp/deface-venv/bin/deface
    .venv/bin/python bench/deface_compare.py --folder DIR --count 1000,6000 --repeat 2

Throughput (same folder, same machine, one run, rounds interleaved, medians): both tools
as a user runs them, each a fresh process timed from start to exit:

  deid    `python -m deid.cli.app run manifest.yaml --no-progress`: embedded Ray,
          anonymize.method blur, checks.enabled false, detect.backend one of
          --deid-detectors (default: dlib-hog, deid's default, and centerface, deface's
          detector), everything else default (run.actors = one per core)
  deface  `deface <folder>` with its defaults (CenterFace, threshold 0.2, blur; the
          ONNX backend it picks: onnxruntime if installed in its venv, else OpenCV DNN)

Each tool gets its own flat folder of N images (deface writes its outputs next to its
inputs and does not descend into sub-folders). N may exceed the source folder: the source
photos are then used again under other names (a big folder of the same kind of photos;
the file cache is warmed for both tools). With two counts the script also prints the marginal
rate (images added / seconds added), in which each tool's fixed start-up cost (Ray
start and actor model loading for deid; interpreter, imports and ONNX session for
deface) cancels out. Targets in the issues: deid >= 2x deface's images/s (issue 4), and with the
default detector and gate >= 1.5x at 1,000 photos (the recall issue). ``--deid-config
NAME=JSON`` runs deid with a detect section and checks/run fields of its own (e.g. an
ensemble and its gate), as row ``deid:NAME``.

Recall: testing.xml and training.xml in --xml-dir (dlib's examples/faces, PASCAL VOC
photos with hand-drawn boxes). deid's detectors are deid.faces.make_detector with the
manifest defaults of each backend; deface's is deface.centerface.CenterFace (default in_shape, i.e. full
resolution) called with the CLI's default threshold 0.2, run in deface's venv. A labelled
box is found if a detection overlaps it with IoU >= the threshold (one detection per box,
greedy by IoU); reported at IoU 0.3 and 0.5. CenterFace boxes include forehead and chin
and are larger than dlib's labelling convention, so IoU 0.5 is harsh on deface; 0.3 is
the fairer number for "was the face found". Unmatched detections are listed as "extra".
"""

from __future__ import annotations

import argparse
import json
import os
import platform
import shutil
import statistics
import subprocess
import sys
import tempfile
import time
import xml.etree.ElementTree as ET
from pathlib import Path

REPO = Path(__file__).resolve().parents[1]
if str(REPO) not in sys.path:
    sys.path.insert(0, str(REPO))
sys.path.insert(0, str(REPO / "bench"))

from throughput import cpu_snapshot, image_files, others_cores  # noqa: E402

DEFACE_DETECT = r"""
import json, sys
import imageio.v3 as iio
from deface.centerface import CenterFace
cf = CenterFace()
out = {}
for path in sys.argv[2:]:
    dets, _ = cf(iio.imread(path), threshold=float(sys.argv[1]))
    out[path] = [[float(v) for v in d[:5]] for d in dets]
print("JSON" + json.dumps(out))
"""


# ----------------------------------------------------------------------------- recall
def read_boxes(xml: Path) -> dict[Path, list[tuple[float, float, float, float]]]:
    root = ET.parse(xml).getroot()
    out = {}
    for im in root.iter("image"):
        boxes = []
        for b in im.iter("box"):
            if b.get("ignore") == "1":
                continue
            x, y, w, h = (float(b.get(k)) for k in ("left", "top", "width", "height"))
            boxes.append((x, y, x + w, y + h))
        out[xml.parent / im.get("file")] = boxes
    return out


def iou(a, b) -> float:
    ix = max(0.0, min(a[2], b[2]) - max(a[0], b[0]))
    iy = max(0.0, min(a[3], b[3]) - max(a[1], b[1]))
    inter = ix * iy
    union = (a[2] - a[0]) * (a[3] - a[1]) + (b[2] - b[0]) * (b[3] - b[1]) - inter
    return inter / union if union > 0 else 0.0


def match(gt: list, det: list, thr: float) -> tuple[int, int]:
    """(labelled boxes found, detections left over), greedy one-to-one by IoU."""
    pairs = sorted(((iou(g, d), i, j) for i, g in enumerate(gt) for j, d in enumerate(det)), reverse=True)
    used_g, used_d = set(), set()
    for v, i, j in pairs:
        if v < thr:
            break
        if i in used_g or j in used_d:
            continue
        used_g.add(i)
        used_d.add(j)
    return len(used_g), len(det) - len(used_d)


def deid_detections(paths: list[Path], backend: str) -> dict[Path, list]:
    import numpy as np
    from PIL import Image

    from deid.config.schema import detect_section
    from deid.faces import make_detector

    det = make_detector(detect_section(backend=backend))
    return {p: [f.box for f in det.detect(np.asarray(Image.open(p).convert("RGB")))] for p in paths}


def deface_detections(python: Path, paths: list[Path], thresh: float) -> dict[Path, list]:
    res = subprocess.run([str(python), "-c", DEFACE_DETECT, str(thresh)] + [str(p) for p in paths],
                         capture_output=True, text=True, check=True)
    data = json.loads(res.stdout[res.stdout.index("JSON") + 4:])
    return {Path(k): [d[:4] for d in v] for k, v in data.items()}


# ----------------------------------------------------------------------------- throughput
def timed(cmd: list[str], env: dict | None = None, cwd: Path | None = None) -> tuple[float, float, str]:
    c0 = cpu_snapshot()
    t = time.perf_counter()
    res = subprocess.run(cmd, capture_output=True, text=True, env=env, cwd=cwd)
    wall = time.perf_counter() - t
    if res.returncode != 0:
        raise SystemExit(f"{' '.join(cmd[:3])}... failed ({res.returncode}):\n{res.stdout[-2000:]}\n{res.stderr[-3000:]}")
    # others_cores leaves out this process's descendants, i.e. the tool being timed
    return wall, others_cores(c0, cpu_snapshot(), wall), res.stdout


def main(argv: list[str] | None = None) -> int:
    ap = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    ap.add_argument("--deface", default="/tmp/deface-venv/bin/deface", help="deface executable (its venv's python is used for recall)")
    ap.add_argument("--folder", default=str(REPO.parent / "shared" / "data" / "lfw-public-ref"))
    ap.add_argument("--deid-detectors", default="dlib-hog,centerface", help="deid detect.backend values to run")
    ap.add_argument("--deid-config", action="append", default=[], metavar='NAME={"detect": {...}, "checks": {...}}',
                    help="also run deid with this detect section and these checks (and run) fields, e.g. the "
                         "residual-face gate's; its row is deid:NAME, its recall is not measured (repeatable)")
    ap.add_argument("--count", default="1000,6000",
                    help="images per throughput run; two or more comma-separated counts also give the marginal rate")
    ap.add_argument("--repeat", type=int, default=2)
    ap.add_argument("--xml-dir", default=str(REPO.parent / "shared" / "data" / "group" / "dlib_examples_faces"))
    ap.add_argument("--thresh", type=float, default=0.2, help="deface threshold (its CLI default: 0.2)")
    ap.add_argument("--skip-throughput", action="store_true")
    args = ap.parse_args(argv)

    deface = Path(args.deface)
    dpy = deface.parent / "python"
    ver = subprocess.run([str(deface), "--version"], capture_output=True, text=True).stdout.strip()
    ort = subprocess.run([str(dpy), "-c", "import onnxruntime, onnx; print(onnxruntime.__version__)"],
                         capture_output=True, text=True)
    backend = f"onnxruntime {ort.stdout.strip()}" if ort.returncode == 0 else "OpenCV DNN (no onnxruntime in its venv)"
    print(f"deface {ver} ({deface}), backend: {backend}")
    print(f"machine: {platform.machine()}, {os.cpu_count()} cores, python {platform.python_version()}")

    # ------------------------------------------------------------------ recall
    print()
    detectors = [d for d in args.deid_detectors.split(",") if d]
    deid_tools = [f"deid:{d}" for d in detectors]
    configs = {d: {"detect": {"backend": d}} for d in detectors}
    for item in args.deid_config:
        name, _, value = item.partition("=")
        configs[name] = json.loads(value)
        deid_tools.append(f"deid:{name}")
    print(f"recall on hand-labelled boxes ({args.xml_dir}); deid: {', '.join(detectors)} (their defaults); "
          f"deface: CenterFace, threshold {args.thresh}")
    print(f"{'set':<12} {'images':>6} {'boxes':>5} {'tool':<16} {'found@0.3':>9} {'recall@0.3':>10} "
          f"{'found@0.5':>9} {'recall@0.5':>10} {'extra@0.3':>9} {'det s':>6}")
    for xml_name in ("testing.xml", "training.xml"):
        gt = read_boxes(Path(args.xml_dir) / xml_name)
        paths = sorted(gt)
        nbox = sum(len(v) for v in gt.values())
        for tool in [f"deid:{d}" for d in detectors] + ["deface"]:
            t = time.perf_counter()
            dets = (deid_detections(paths, tool.split(":", 1)[1]) if tool.startswith("deid")
                    else deface_detections(dpy, paths, args.thresh))
            secs = time.perf_counter() - t
            f3 = sum(match(gt[p], dets[p], 0.3)[0] for p in paths)
            f5 = sum(match(gt[p], dets[p], 0.5)[0] for p in paths)
            extra = sum(match(gt[p], dets[p], 0.3)[1] for p in paths)
            print(f"{xml_name:<12} {len(paths):6d} {nbox:5d} {tool:<16} {f3:9d} {f3 / nbox:10.1%} {f5:9d} "
                  f"{f5 / nbox:10.1%} {extra:9d} {secs:6.1f}")
    print("  (det s for deface includes its interpreter start and model load; deid's includes model load)")

    if args.skip_throughput:
        return 0
    # ------------------------------------------------------------------ throughput
    src = Path(args.folder)
    counts = [int(c) for c in str(args.count).split(",")]
    all_files = image_files(src)
    tmp = Path(tempfile.mkdtemp(prefix="deid-vs-deface-"))
    walls: dict[tuple[str, int], list[float]] = {}
    others: dict[tuple[str, int], list[float]] = {}
    try:
        tools = deid_tools + ["deface"]
        for r in range(args.repeat):
            for n in counts:
                files = [(all_files[i % len(all_files)], f"{i // len(all_files)}-{all_files[i % len(all_files)].name}")
                         for i in range(n)]
                for tool in (tools if r % 2 == 0 else tools[::-1]):
                    run_dir = tmp / f"{tool.replace(':', '-')}{r}-{n}"
                    inp = run_dir / "in"
                    inp.mkdir(parents=True)
                    for p, name in files:
                        shutil.copyfile(p, inp / name)
                        (inp / name).read_bytes()
                    if tool.startswith("deid"):
                        import yaml

                        (run_dir / "m.yaml").write_text(yaml.safe_dump({
                            "input": {"uri": str(inp)},
                            "output": {"uri": str(run_dir / "release"), "quarantine_uri": str(run_dir / "quarantine"),
                                       "naming_key_file": str(tmp / "naming.key")},
                            "audit": {"uri": str(run_dir / "audit")},
                            "detect": configs[tool.split(":", 1)[1]]["detect"],
                            "anonymize": {"method": "blur"},
                            "checks": {"enabled": False, **configs[tool.split(":", 1)[1]].get("checks", {})},
                            "run": {"progress": False, **configs[tool.split(":", 1)[1]].get("run", {})},
                        }))
                        env = dict(os.environ, PYTHONPATH=str(REPO), RAY_USAGE_STATS_ENABLED="0")
                        wall, oth, out = timed([sys.executable, "-m", "deid.cli.app", "run", str(run_dir / "m.yaml"),
                                                "--no-progress"], env=env, cwd=run_dir)
                        done = sum(1 for _ in (run_dir / "release").rglob("*.jpg")) + \
                            sum(1 for _ in (run_dir / "quarantine").rglob("*.jpg"))
                    else:
                        wall, oth, out = timed([str(deface), str(inp)], cwd=run_dir)
                        done = sum(1 for _ in inp.glob("*_anonymized*"))
                    walls.setdefault((tool, n), []).append(wall)
                    others.setdefault((tool, n), []).append(oth)
                    print(f"  .. {tool} round {r + 1}: {n} images in {wall:.2f} s, {done} outputs "
                          f"(others {oth:.2f} cores)", file=sys.stderr, flush=True)
                    shutil.rmtree(run_dir, ignore_errors=True)
        print()
        print(f"throughput on the first N images of {src} (medians of {args.repeat} rounds; each tool a fresh "
              f"process, wall from start to exit):")
        print(f"{'tool':<16} {'images':>6} {'seconds':>8} {'images/s':>9} {'others':>6}")
        rate: dict[tuple[str, int], float] = {}
        sec: dict[tuple[str, int], float] = {}
        for n in counts:
            for tool in tools:
                sec[tool, n] = statistics.median(walls[tool, n])
                rate[tool, n] = n / sec[tool, n]
                print(f"{tool:<16} {n:6d} {sec[tool, n]:8.2f} {rate[tool, n]:9.2f} "
                      f"{statistics.median(others[tool, n]):6.2f}")
        for tool in deid_tools:
            for n in counts:
                print(f"ratio {tool} / deface images/s at {n} images = {rate[tool, n] / rate['deface', n]:.2f}")
        if len(counts) > 1:
            lo, hi = counts[0], counts[-1]
            marg = {t: (hi - lo) / (sec[t, hi] - sec[t, lo]) if sec[t, hi] > sec[t, lo] else float("nan")
                    for t in tools}
            print(f"marginal images/s between {lo} and {hi} images (start-up and model loading cancel out): "
                  + ", ".join(f"{t} {marg[t]:.2f}" for t in tools) + "; ratio to deface: "
                  + ", ".join(f"{t} {marg[t] / marg['deface']:.2f}" for t in deid_tools))
        print("per round s: " + "; ".join(f"{t} {n}: " + ", ".join(f"{w:.2f}" for w in v) for (t, n), v in walls.items()))
    finally:
        shutil.rmtree(tmp, ignore_errors=True)
    print(f"\n{time.strftime('%Y-%m-%d %H:%M %Z')}")
    return 0


if __name__ == "__main__":
    raise SystemExit(main())

"""Peak memory of `deid run` over many large photos (issue 4, item 7).

    .venv/bin/python bench/memory.py --count 2000                 # the issue's run
    .venv/bin/python bench/memory.py --count 40,120               # two counts: is the peak bounded?
    .venv/bin/python bench/memory.py --count 200 --size 4000x3000 --batch-size 8 --actors 2

For each count N, in one process, one after the other:

1. N large JPEGs (default 4000x3000, quality 90) are made by tiling real photos (the
   bundled group photos and LFW faces, plus --folder if given) 4 x 3, each image a
   different arrangement; they are written once under a temp dir and the first N are
   hard-linked into the run's input folder (deleted at the end unless --keep).
2. `deid run manifest.yaml --no-progress --json` runs under `/usr/bin/time -v` in a
   fresh process with its own RAY_TMPDIR (embedded Ray, the manifest's defaults except
   those stated in the table header).
3. Meanwhile a sampler (psutil, every --interval s) sums the RSS of the whole process
   tree: the deid driver, Ray's GCS/raylet/agents and every Ray worker. Shared pages
   (the plasma object store, libraries) are counted once per process that maps them,
   so the sum over-states physical use; it is the conservative number.
4. Afterwards, Ray's logs and temp dir are searched for object spilling (raylet
   "Spilled" lines, files in spill directories).

"time -v max RSS" is GNU time's "Maximum resident set size": the largest single process
among deid and the descendants it waited for, not a sum.
"""

from __future__ import annotations

import argparse
import json
import os
import platform
import re
import shutil
import subprocess
import sys
import tempfile
import threading
import time
from pathlib import Path

REPO = Path(__file__).resolve().parents[1]
SAMPLES = REPO / "manifests" / "samples"
IMAGE_EXT = {".jpg", ".jpeg", ".png"}


# ----------------------------------------------------------------------------- corpus
def tile_sources(extra: Path | None) -> list[Path]:
    roots = [SAMPLES / "group", SAMPLES / "lfw"] + ([extra] if extra else [])
    out = []
    for r in roots:
        out += sorted(p for p in r.rglob("*") if p.suffix.lower() in IMAGE_EXT)
    return out


def make_tiles(sources: list[Path], tile: tuple[int, int]) -> list:
    """Every source photo resized to cover ``tile`` and centre-cropped (faces keep their
    natural proportions; group photos keep several faces per tile)."""
    from PIL import Image, ImageOps

    tiles = []
    for p in sources:
        im = Image.open(p).convert("RGB")
        tiles.append(ImageOps.fit(im, tile, method=Image.Resampling.LANCZOS))
    return tiles


def make_corpus(folder: Path, count: int, size: tuple[int, int], sources: list[Path], quality: int) -> float:
    """Write photo_00000.jpg ... (skips files that exist), on every core. Returns seconds spent."""
    from concurrent.futures import ProcessPoolExecutor

    t = time.perf_counter()
    folder.mkdir(parents=True, exist_ok=True)
    n = max(1, min(os.cpu_count() or 1, count // 50))
    if n == 1:
        _make_range(folder, range(count), size, sources, quality)
    else:
        with ProcessPoolExecutor(n) as pool:
            list(pool.map(_make_range, [folder] * n, [range(k, count, n) for k in range(n)], [size] * n,
                          [sources] * n, [quality] * n))
    return time.perf_counter() - t


def _make_range(folder: Path, indices, size: tuple[int, int], sources: list[Path], quality: int) -> None:
    from PIL import Image, ImageOps

    cols, rows = 4, 3
    tw, th = size[0] // cols, size[1] // rows
    tiles = None
    for i in indices:
        path = folder / f"photo_{i:05d}.jpg"
        if path.exists():
            continue
        if tiles is None:
            tiles = make_tiles(sources, (tw, th))
        canvas = Image.new("RGB", size, (128, 128, 128))
        for k in range(cols * rows):
            j = (i * 7 + k * 5) % len(tiles)
            tile = tiles[j] if (i + k) % 2 == 0 else ImageOps.mirror(tiles[j])
            canvas.paste(tile, ((k % cols) * tw, (k // cols) * th))
        canvas.save(path, "JPEG", quality=quality)


# ----------------------------------------------------------------------------- measuring
class TreeSampler(threading.Thread):
    """Peak of the summed RSS of a process and all its descendants, sampled with psutil."""

    def __init__(self, pid: int, interval: float, progress=None, every: float = 60.0):
        super().__init__(daemon=True)
        self.progress = progress  # callable -> str, printed with the running peak every `every` s
        self.every = every
        import psutil

        self.psutil = psutil
        self.root = psutil.Process(pid)
        self.interval = interval
        self.stop = threading.Event()
        self.peak_sum = 0
        self.peak_workers = 0  # sum over Ray worker processes (ray::... titles)
        self.peak_single = (0, "")
        self.peak_driver = 0
        self.max_procs = 0
        self.samples = 0

    def run(self) -> None:
        ps = self.psutil
        t0 = last = time.monotonic()
        while not self.stop.is_set():
            if self.progress is not None and time.monotonic() - last >= self.every:
                last = time.monotonic()
                print(f"  .. {last - t0:6.0f} s: running peak tree RSS {self.peak_sum / 2**20:.0f} MiB, "
                      f"largest proc {self.peak_single[0] / 2**20:.0f} MiB; {self.progress()}",
                      file=sys.stderr, flush=True)
            try:
                procs = [self.root] + self.root.children(recursive=True)
            except ps.Error:
                break
            total = workers = 0
            for p in procs:
                try:
                    rss = p.memory_info().rss
                    name = " ".join(p.cmdline()[:1]) or p.name()
                except ps.Error:
                    continue
                total += rss
                if name.startswith("ray::") or "default_worker.py" in " ".join(p.cmdline()[:3]):
                    workers += rss
                if rss > self.peak_single[0]:
                    self.peak_single = (rss, name[:60])
                if p.pid == self.root.pid or (p.ppid() == self.root.pid and "deid" in " ".join(p.cmdline())):
                    self.peak_driver = max(self.peak_driver, rss)
            self.peak_sum = max(self.peak_sum, total)
            self.peak_workers = max(self.peak_workers, workers)
            self.max_procs = max(self.max_procs, len(procs))
            self.samples += 1
            self.stop.wait(self.interval)


def spill_report(ray_tmp: Path) -> tuple[int, str]:
    """(spilled MiB reported by the raylet, summary) for the Ray session(s) under ray_tmp:
    the raylet logs "Spilled N MiB, M objects" whenever it spills; spill files land in
    a ``*spill*`` directory of the session."""
    mib = 0.0
    lines = 0
    files = 0
    for log in ray_tmp.rglob("raylet*.out"):
        for line in log.read_text(errors="replace").splitlines():
            m = re.search(r"Spilled ([0-9.]+) MiB", line)
            if m:
                lines += 1
                mib = max(mib, float(m.group(1)))
    for d in ray_tmp.rglob("*spill*"):
        if d.is_dir():
            files += sum(1 for f in d.rglob("*") if f.is_file())
    return int(mib), f"{lines} 'Spilled ... MiB' log lines, {files} spill files"


def parse_time_v(text: str) -> dict:
    out = {}
    m = re.search(r"Maximum resident set size \(kbytes\): (\d+)", text)
    out["maxrss_kb"] = int(m.group(1)) if m else None
    m = re.search(r"Elapsed \(wall clock\) time \(h:mm:ss or m:ss\): ([0-9:.]+)", text)
    if m:
        parts = [float(x) for x in m.group(1).split(":")]
        out["wall"] = sum(v * 60 ** i for i, v in enumerate(reversed(parts)))
    return out


def run_once(inp: Path, work: Path, args, count: int) -> dict:
    import yaml

    out = work / "out"
    manifest = {
        "input": {"uri": str(inp)},
        "output": {"uri": str(out / "release"), "quarantine_uri": str(out / "quarantine"),
                   "naming_key_file": str(work / "naming.key")},
        "audit": {"uri": str(out / "audit")},
        "anonymize": {"method": "blur"},
        "checks": {"enabled": args.checks},
        "run": {"progress": False},
    }
    for key, val in (("batch_size", args.batch_size), ("actors", args.actors), ("cpus", args.cpus)):
        if val is not None:
            manifest["run"][key] = val
    if args.max_side:
        manifest["detect"] = {"max_side": args.max_side}
    mpath = work / "manifest.yaml"
    mpath.write_text(yaml.safe_dump(manifest))
    ray_tmp = Path(tempfile.mkdtemp(prefix="rm", dir="/tmp"))  # short: Ray's socket paths have a length limit
    env = dict(os.environ, RAY_TMPDIR=str(ray_tmp), PYTHONPATH=str(REPO) + os.pathsep + os.environ.get("PYTHONPATH", ""),
               RAY_USAGE_STATS_ENABLED="0")
    cmd = [sys.executable, "-m", "deid.cli.app", "run", str(mpath), "--no-progress", "--json"]
    if os.path.exists("/usr/bin/time"):  # GNU time's max RSS beside the process-tree sampler
        cmd = ["/usr/bin/time", "-v", *cmd]
    t0 = time.perf_counter()
    proc = subprocess.Popen(cmd, stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True, env=env, cwd=str(work))
    release = out / "release"

    def progress() -> str:  # released files so far (hashed names: one sub-folder level)
        try:
            return f"{sum(1 for p in release.rglob('*.jpg'))} released"
        except OSError:
            return "0 released"

    sampler = TreeSampler(proc.pid, args.interval, progress=progress)
    sampler.start()
    stdout, stderr = proc.communicate()
    wall = time.perf_counter() - t0
    sampler.stop.set()
    sampler.join()
    tv = parse_time_v(stderr)
    spilled_mib, spill_text = spill_report(ray_tmp)
    summary = {}
    try:
        summary = json.loads(stdout[stdout.index("{"):])
    except ValueError:
        print(stdout[-2000:], stderr[-3000:], file=sys.stderr)
    shutil.rmtree(ray_tmp, ignore_errors=True)
    shutil.rmtree(out, ignore_errors=True)
    return dict(count=count, rc=proc.returncode, wall=wall, tv=tv, sampler=sampler, spilled_mib=spilled_mib,
                spill_text=spill_text, summary=summary)


def main(argv: list[str] | None = None) -> int:
    ap = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    ap.add_argument("--count", default="2000", help="photos per run; several, comma-separated, run one after the other")
    ap.add_argument("--size", default="4000x3000", help="WxH of the generated photos")
    ap.add_argument("--quality", type=int, default=90)
    ap.add_argument("--folder", default=None, help="extra folder of real photos to tile (default: bundled samples only)")
    ap.add_argument("--corpus", default=None, help="where to keep the generated photos (default: a temp dir, deleted)")
    ap.add_argument("--keep", action="store_true", help="keep the generated photos")
    ap.add_argument("--batch-size", type=int, default=None, help="run.batch_size (default: the manifest default)")
    ap.add_argument("--actors", type=int, default=None, help="run.actors (default: the manifest default)")
    ap.add_argument("--cpus", type=int, default=None, help="run.cpus (default: the manifest default)")
    ap.add_argument("--max-side", type=int, default=None, help="detect.max_side (default: unset, as in the manifest)")
    ap.add_argument("--checks", action="store_true", help="identity checks on (default off: halves the run time)")
    ap.add_argument("--interval", type=float, default=0.5, help="RSS sampling interval, s")
    args = ap.parse_args(argv)

    counts = [int(c) for c in args.count.split(",")]
    w, h = (int(v) for v in args.size.lower().split("x"))
    from deid.config.schema import RunConfig, detect_section

    base = Path(tempfile.mkdtemp(prefix="deid-mem-", dir=args.corpus or None))
    pool = base / "pool"
    rows = []
    try:
        gen_s = make_corpus(pool, max(counts), (w, h), tile_sources(Path(args.folder) if args.folder else None), args.quality)
        files = sorted(pool.glob("*.jpg"))[: max(counts)]
        nbytes = sum(p.stat().st_size for p in files)
        import psutil

        print(f"corpus: {len(files)} photos {w}x{h} (tiles of real photos), {nbytes / 1e9:.2f} GB, "
              f"made in {gen_s:.0f} s; {nbytes / len(files) / 1e6:.2f} MB each")
        rc = RunConfig()
        print(f"machine: {platform.machine()}, {os.cpu_count()} cores, {psutil.virtual_memory().total / 2**30:.1f} GiB RAM; "
              f"run.batch_size={args.batch_size or rc.batch_size}, run.actors={args.actors or 'default (one per CPU)'}, "
              f"run.cpus={args.cpus or 'default (all)'}, detect.upsample={detect_section().upsample}, "
              f"detect.max_side={args.max_side or detect_section().max_side}, checks={'on' if args.checks else 'off'}, blur")
        for n in counts:
            work = base / f"run{n}"
            inp = work / "in"
            inp.mkdir(parents=True)
            for p in files[:n]:
                os.link(p, inp / p.name)
            for p in files[:n]:  # warm the file cache
                p.read_bytes()
            print(f"  .. running {n} photos", file=sys.stderr, flush=True)
            r = run_once(inp, work, args, n)
            rows.append(r)
            s = r["sampler"]
            print(f"  .. {n}: rc {r['rc']}, {r['wall']:.0f} s, peak tree RSS {s.peak_sum / 2**20:.0f} MiB",
                  file=sys.stderr, flush=True)
            shutil.rmtree(work, ignore_errors=True)

        print()
        print(f"{'photos':>6} {'rc':>3} {'wall s':>7} {'img/s':>6} {'released':>8} {'failed':>6} "
              f"{'peak tree RSS MiB':>17} {'peak workers MiB':>16} {'largest proc MiB':>16} {'time -v maxRSS MiB':>18} "
              f"{'procs':>5} {'spilled':>8}")
        for r in rows:
            s, summ = r["sampler"], r["summary"]
            counts_ = summ.get("counts", {})
            mx = r["tv"].get("maxrss_kb")
            print(f"{r['count']:6d} {r['rc']:3d} {r['wall']:7.1f} {r['count'] / r['wall']:6.2f} "
                  f"{counts_.get('released', 0):8d} {counts_.get('failed', 0):6d} {s.peak_sum / 2**20:17.0f} "
                  f"{s.peak_workers / 2**20:16.0f} {s.peak_single[0] / 2**20:16.0f} "
                  f"{(mx or 0) / 1024:18.0f} {s.max_procs:5d} {r['spilled_mib']:6d} MiB")
        for r in rows:
            s = r["sampler"]
            print(f"  {r['count']}: largest process: {s.peak_single[1]!r}; {s.samples} samples; spilling: {r['spill_text']}; "
                  f"faces {r['summary'].get('faces')}")
        if len(rows) > 1:
            a, b = rows[0]["sampler"].peak_sum, rows[-1]["sampler"].peak_sum
            print(f"peak tree RSS, {rows[-1]['count']} vs {rows[0]['count']} photos: {b / a:.2f}x "
                  f"(bounded memory: ~1.0x while the count grows {rows[-1]['count'] / rows[0]['count']:.1f}x)")
    finally:
        if not args.keep:
            shutil.rmtree(base, ignore_errors=True)
    print(f"\n{time.strftime('%Y-%m-%d %H:%M %Z')}")
    return 0 if all(r["rc"] == 0 for r in rows) else 1


if __name__ == "__main__":
    raise SystemExit(main())

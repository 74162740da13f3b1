"""Throughput of deid on one folder: Ray Data pipeline vs. the same stage in-process.

    .venv/bin/python bench/throughput.py                      # ../shared/data/lfw-dev (457 images)
    .venv/bin/python bench/throughput.py --input DIR --limit 200
    .venv/bin/python bench/throughput.py --sweep              # also run.batch_size / run.actors table

Modes, all measured in this one process, one after the other, on the same files:

  (a) ray, checks off   run_job(engine="ray"), embedded local Ray, actors = cpus, blur
  (b) ray, checks on    the same with the identity check (dlib ResNet-128 + re-detection)
  (c) inline            ProcessRecords built directly in this process (as engine.local_results
                        does), checks off: the same per-record work as (a), no Ray
  (d) inline, checks on extra context row: the same work as (b), no Ray

What the numbers include:

* ray.init is done once, before (a), and reported as its own row; the (a)/(b) "total"
  seconds are the wall time of run_job(): listing + naming plan, building the Ray Data
  plan, starting the actor pool, loading the models in every actor, processing, writing
  outputs and the audit. "+init" adds the ray.init seconds (what a cold `deid run` pays).
* (c)/(d) "total" = listing + naming plan + ProcessRecords() (model loading) + the batch
  loop (read, decode, detect, anonymize, [check], encode, write).
* "steady" excludes warm-up (ray.init, plan, actor start, model loading, the first
  record): (records - 1) / (last record's processed_at - first record's processed_at),
  from the audit rows' worker-side timestamps; same rule for Ray and inline. Batch
  arrival times at the driver are not used: Ray Data hands results over in bursts.
* "1st rec s" is the time from the start of the run to the first finished record.
* The OS file cache is warmed first (every input file read once). Outputs go to a temp
  dir that is deleted at the end.

The machine this runs on is usually shared: compare the ratios printed by one run, not
absolute seconds across runs. ``--repeat N`` interleaves N rounds and reports medians.
"""

from __future__ import annotations

import argparse
import logging
import os
import platform
import shutil
import statistics
import sys
import tempfile
import time
from pathlib import Path

os.environ.setdefault("RAY_USAGE_STATS_ENABLED", "0")
os.environ.setdefault("RAY_AUTH_MODE", "disabled")

REPO = Path(__file__).resolve().parents[1]
if str(REPO) not in sys.path:
    sys.path.insert(0, str(REPO))

from deid.config import manifest_from_dict  # noqa: E402
from deid.pipeline.fingerprints import model_fingerprints  # noqa: E402
from deid.pipeline.engine import init_ray as _init_ray  # noqa: E402
from deid.pipeline.run import new_run_id, plan_records, run_job  # noqa: E402
from deid.pipeline.stages import ProcessRecords, RunContext  # noqa: E402

IMAGE_EXT = {".jpg", ".jpeg", ".png", ".webp", ".tif", ".tiff", ".bmp", ".gif", ".pgm", ".ppm"}
TIMING_KEYS = ("read_ms", "decode_ms", "detect_ms", "anonymize_ms", "check_ms", "write_ms")


# ----------------------------------------------------------------------------- set-up
def image_files(root: Path) -> list[Path]:
    return sorted(p for p in root.rglob("*") if p.is_file() and p.suffix.lower() in IMAGE_EXT
                  and not any(part.startswith(".") for part in p.relative_to(root).parts))


def prepare_input(src: Path, limit: int | None, tmp: Path) -> tuple[Path, int]:
    files = image_files(src)
    if limit is None or limit >= len(files):
        return src, len(files)
    dst = tmp / "input"
    for p in files[:limit]:  # sorted, so the subset is the same every run
        q = dst / p.relative_to(src)
        q.parent.mkdir(parents=True, exist_ok=True)
        shutil.copyfile(p, q)
    return dst, limit


def warm_cache(root: Path) -> int:
    n = 0
    for p in image_files(root):
        n += len(p.read_bytes())
    return n


def make_manifest(input_dir: Path, out: Path, *, checks: bool, cpus: int, actors: int | None,
                  batch_size: int, method: str = "blur"):
    return manifest_from_dict({
        "input": {"uri": str(input_dir)},
        "output": {"uri": str(out / "release"), "quarantine_uri": str(out / "quarantine"),
                   "naming_key_file": str(out.parent / "naming.key")},
        "audit": {"uri": str(out / "audit")},
        "anonymize": {"method": method},
        "checks": {"enabled": checks},
        "run": {"batch_size": batch_size, "actors": actors, "cpus": cpus, "progress": False},
    })


# ----------------------------------------------------------------------------- measuring
_HZ = os.sysconf("SC_CLK_TCK") if hasattr(os, "sysconf") else 100


def cpu_snapshot() -> dict[int, float] | None:
    """CPU seconds used so far by every process that is NOT this benchmark (this process,
    its embedded Ray and Ray's workers are left out by ancestry). Linux /proc only; None
    elsewhere. Summed differences over a run = what other tenants of a shared machine took
    meanwhile (a lower bound: a process that starts and ends inside the run is missed)."""
    try:
        parent, cpu = {}, {}
        for d in os.listdir("/proc"):
            if not d.isdigit():
                continue
            try:
                with open(f"/proc/{d}/stat") as f:
                    st = f.read()
            except OSError:
                continue
            fields = st[st.rfind(")") + 2:].split()
            parent[int(d)] = int(fields[1])
            # own time + reaped children's (Ray's raylet ignores SIGCHLD, so its exited
            # workers are lost: that is why ours are excluded rather than counted)
            cpu[int(d)] = sum(int(x) for x in fields[11:15]) / _HZ
    except (OSError, ValueError):
        return None
    me, others = os.getpid(), {}
    for pid, c in cpu.items():
        p, hops = pid, 0
        while p > 1 and hops < 64 and p != me:
            p, hops = parent.get(p, 0), hops + 1
        if p != me:
            others[pid] = c
    return others


def wait_quiet(max_wait: float, threshold: float = 0.15, window: float = 3.0) -> float:
    """On a shared machine: wait (at most ``max_wait`` s) until other processes use fewer
    than ``threshold`` cores over ``window`` s. Returns the seconds waited."""
    t0 = time.perf_counter()
    while time.perf_counter() - t0 < max_wait:
        a = cpu_snapshot()
        time.sleep(window)
        if not others_cores(a, cpu_snapshot(), window) >= threshold:  # also true for nan
            break
    return time.perf_counter() - t0


def others_cores(before: dict | None, after: dict | None, wall: float) -> float:
    """Average number of cores other processes (not this benchmark) kept busy."""
    if before is None or after is None or wall <= 0:
        return float("nan")
    used = sum(max(0.0, c - before.get(pid, 0.0)) for pid, c in after.items())
    return used / wall


class Arrivals:
    """Timestamps of result batches as the driver receives them, plus per-record stage
    times from the audit rows (what the workers spent on each record)."""

    def __init__(self, t0: float):
        self.t0 = t0
        self.wall0 = time.time()  # t0 on the wall clock the workers stamp processed_at with
        self.marks: list[tuple[float, int]] = []
        self.done: list[float] = []  # processed_at of every record (epoch seconds, worker clock)
        self.stage_ms = {k: 0.0 for k in TIMING_KEYS}
        self.counts: dict[str, int] = {}

    def __call__(self, table) -> None:
        self.marks.append((time.perf_counter(), table.num_rows))
        for t in table.column("timings").to_pylist():
            for k in TIMING_KEYS:
                self.stage_ms[k] += (t or {}).get(k) or 0.0
        for s in table.column("status").to_pylist():
            self.counts[s] = self.counts.get(s, 0) + 1
        self.done += [t.timestamp() for t in table.column("processed_at").to_pylist() if t is not None]

    def first_record_s(self) -> float:
        return min(self.done) - self.wall0 if self.done else float("nan")

    def steady_rate(self) -> float:
        if len(self.done) < 3:
            return float("nan")
        dt = max(self.done) - min(self.done)
        return (len(self.done) - 1) / dt if dt > 0 else float("nan")

    def work_s(self) -> float:
        return sum(self.stage_ms.values()) / 1000.0


def run_ray(input_dir: Path, tmp: Path, tag: str, *, checks: bool, cpus: int, actors: int, batch_size: int) -> dict:
    out = tmp / tag
    m = make_manifest(input_dir, out, checks=checks, cpus=cpus, actors=actors, batch_size=batch_size)
    c0 = cpu_snapshot()
    t0 = time.perf_counter()
    arr = Arrivals(t0)
    res = run_job(m, engine="ray", progress=False, on_batch=arr)
    total = time.perf_counter() - t0
    others = others_cores(c0, cpu_snapshot(), total)
    shutil.rmtree(out, ignore_errors=True)
    return dict(images=res.summary["inputs"], total=total, first=arr.first_record_s(), steady=arr.steady_rate(),
                work=arr.work_s(), stage_ms=arr.stage_ms, counts={k: v for k, v in res.summary["counts"].items() if v},
                batches=len(arr.marks), others=others)


def run_inline(input_dir: Path, tmp: Path, tag: str, *, checks: bool, batch_size: int) -> dict:
    """The same stage as the Ray actors run, in this process: plan, construct, loop."""
    out = tmp / tag
    m = make_manifest(input_dir, out, checks=checks, cpus=1, actors=1, batch_size=batch_size)
    c0 = cpu_snapshot()
    t0 = time.perf_counter()
    planned = plan_records(m)  # as run_job does for a classical method
    plan = planned.records.drop_columns(["subject"])
    ctx = RunContext(run_id=new_run_id(), config_sha256=m.config_sha256(), naming_key_id=planned.naming_key_id,
                     model_fingerprints=model_fingerprints(m))
    t_plan = time.perf_counter()
    stage = ProcessRecords(m.model_dump(mode="json"), ctx.__dict__)
    t_init = time.perf_counter()
    arr = Arrivals(t0)
    for i in range(0, plan.num_rows, batch_size):
        arr(stage(plan.slice(i, batch_size)))
    total = time.perf_counter() - t0
    others = others_cores(c0, cpu_snapshot(), total)
    shutil.rmtree(out, ignore_errors=True)
    return dict(images=plan.num_rows, total=total, first=arr.first_record_s(), steady=arr.steady_rate(),
                work=arr.work_s(), stage_ms=arr.stage_ms, counts=arr.counts, batches=len(arr.marks),
                plan_s=t_plan - t0, init_s=t_init - t_plan, others=others)


def note(tag: str, row: dict) -> dict:
    """Progress on stderr (the table on stdout is printed at the end)."""
    print(f"  .. {tag}: {row['images']} images in {row['total']:.2f} s (others {row['others']:.2f} cores)",
          file=sys.stderr, flush=True)
    return row


def med(rows: list[dict], key: str) -> float:
    vals = [r[key] for r in rows if r.get(key) == r.get(key)]  # drop NaN
    return statistics.median(vals) if vals else float("nan")


# ----------------------------------------------------------------------------- main
def main(argv: list[str] | None = None) -> int:
    ap = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    ap.add_argument("--input", default=str(REPO.parent / "shared" / "data" / "lfw-dev"),
                    help="folder of images (default: ../shared/data/lfw-dev relative to the repo root)")
    ap.add_argument("--limit", type=int, default=None, help="use only the first N images (sorted by path)")
    ap.add_argument("--cpus", type=int, default=os.cpu_count() or 1, help="CPUs for the embedded Ray (default: all)")
    ap.add_argument("--batch-size", type=int, default=None, help="run.batch_size (default: the manifest default)")
    ap.add_argument("--repeat", type=int, default=1, help="rounds of (c, a, b, d), interleaved; medians reported")
    ap.add_argument("--no-inline-checks", action="store_true", help="skip the extra (d) row")
    ap.add_argument("--sweep", action="store_true", help="also: (a) with other run.batch_size / run.actors values")
    ap.add_argument("--wait-quiet", type=float, default=0.0, metavar="S",
                    help="shared machine: before each measurement wait up to S s until other processes are idle")
    args = ap.parse_args(argv)

    logging.basicConfig(level=logging.WARNING)
    src = Path(args.input).resolve()
    if not src.is_dir():
        ap.error(f"{src}: not a folder")
    from deid.config.schema import RunConfig

    bs = args.batch_size or RunConfig.model_fields["batch_size"].default
    cpus = args.cpus
    actors = cpus

    tmp = Path(tempfile.mkdtemp(prefix="deid-bench-"))
    try:
        input_dir, n = prepare_input(src, args.limit, tmp)
        nbytes = warm_cache(input_dir)
        print(f"input: {src}{f' (first {n})' if args.limit else ''}: {n} images, {nbytes / 1e6:.1f} MB, file cache warmed")
        print(f"machine: {platform.machine()}, {os.cpu_count()} CPU cores, python {platform.python_version()}; "
              f"ray cpus={cpus}, actors={actors}, batch_size={bs}, method=blur")

        # ray.init once, with the exact arguments run_job would use; timed on its own.
        t = time.perf_counter()
        ray = _init_ray(make_manifest(input_dir, tmp / "init", checks=False, cpus=cpus, actors=actors, batch_size=bs))
        ray_init_s = time.perf_counter() - t
        import ray.data  # noqa: F401 - import cost is not part of the first timed run
        print(f"ray {ray.__version__}: ray.init {ray_init_s:.2f} s")

        rounds: dict[str, list[dict]] = {"a": [], "b": [], "c": [], "d": []}
        for r in range(args.repeat):
            wait_quiet(args.wait_quiet)
            rounds["c"].append(note(f"(c) round {r + 1}", run_inline(input_dir, tmp, f"c{r}", checks=False, batch_size=bs)))
            wait_quiet(args.wait_quiet)
            rounds["a"].append(note(f"(a) round {r + 1}", run_ray(input_dir, tmp, f"a{r}", checks=False, cpus=cpus, actors=actors, batch_size=bs)))
            wait_quiet(args.wait_quiet)
            rounds["b"].append(note(f"(b) round {r + 1}", run_ray(input_dir, tmp, f"b{r}", checks=True, cpus=cpus, actors=actors, batch_size=bs)))
            if not args.no_inline_checks:
                wait_quiet(args.wait_quiet)
                rounds["d"].append(note(f"(d) round {r + 1}", run_inline(input_dir, tmp, f"d{r}", checks=True, batch_size=bs)))

        a, b, c = (rounds[k][-1] for k in "abc")
        if a["counts"] != c["counts"]:
            print(f"WARNING: (a) and (c) disagree on outcomes: {a['counts']} vs {c['counts']}")

        label = {
            "a": "(a) ray, checks off",
            "b": "(b) ray, checks on",
            "c": "(c) inline, checks off",
            "d": "(d) inline, checks on",
        }
        print()
        print(f"{'mode':<24} {'images':>6} {'seconds':>8} {'images/s':>9} {'+init s':>8} {'img/s+init':>10} "
              f"{'1st rec s':>9} {'steady img/s':>12} {'others':>6}")
        print(f"{'ray.init (once)':<24} {'':>6} {ray_init_s:8.2f}")
        rate = {}
        for k in "abcd":
            if not rounds[k]:
                continue
            sec = med(rounds[k], "total")
            imgs = rounds[k][0]["images"]
            rate[k] = imgs / sec
            rate[k + "_steady"] = med(rounds[k], "steady")
            if k in "ab":
                rate[k + "_init"] = imgs / (sec + ray_init_s)
                extra = f"{sec + ray_init_s:8.2f} {rate[k + '_init']:10.2f}"
            else:
                extra = f"{'':>8} {'':>10}"
            print(f"{label[k]:<24} {imgs:6d} {sec:8.2f} {rate[k]:9.2f} {extra} "
                  f"{med(rounds[k], 'first'):9.2f} {rate[k + '_steady']:12.2f} {med(rounds[k], 'others'):6.2f}")
        print()
        print(f"{'ratio':<24} {'total':>8} {'total+init':>10} {'steady':>8}")
        for num, den in (("a", "c"), ("b", "c"), ("b", "d")):
            if num in rate and den in rate:
                tot_init = f"{rate[num + '_init'] / rate[den]:10.2f}"
                print(f"{num}/{den:<22} {rate[num] / rate[den]:8.2f} {tot_init} "
                      f"{rate[num + '_steady'] / rate[den + '_steady']:8.2f}")
        print("  total      = run_job wall (plan + actor start + model load + processing + audit) vs inline plan+load+loop")
        print("  total+init = also counts the one-off ray.init (a cold `deid run`)")
        print("  steady     = (records - 1) / (last - first record's processed_at): warm-up excluded")
        print("  others     = cores kept busy by OTHER processes on this machine meanwhile (0 = quiet; on 2 cores,")
        print("               anything near 1 means the run had about one core, and the ratios are not meaningful)")
        print(f"  target in the issue: a/c >= 0.85 on 2 cores{'' if args.repeat == 1 else f'; medians of {args.repeat} rounds'}")

        # where the time goes: per-record stage time summed over all records, vs wall.
        print()
        print("per-record stage time, summed (s), last round; busy = sum / (wall x workers):")
        print(f"{'mode':<24} " + " ".join(f"{k[:-3]:>9}" for k in TIMING_KEYS) + f" {'sum':>7} {'wall':>7} {'busy':>6}")
        for k in "abcd":
            if not rounds[k]:
                continue
            row = rounds[k][-1]
            workers = actors if k in "ab" else 1
            print(f"{label[k]:<24} " + " ".join(f"{row['stage_ms'][t] / 1000:9.2f}" for t in TIMING_KEYS)
                  + f" {row['work']:7.2f} {row['total']:7.2f} {row['work'] / (row['total'] * workers):6.0%}")
        for k in "abcd":
            if len(rounds[k]) > 1:
                print(f"{label[k]} per round (s): " + ", ".join(f"{r['total']:.2f} [others {r['others']:.2f}]" for r in rounds[k])
                      + ("  (round 1 of (a) is the first Ray Data run of the session)" if k == "a" else ""))
        print(f"(c) inline: plan {c['plan_s']:.2f} s, ProcessRecords() model load {c['init_s']:.2f} s; "
              f"(a) first record done after {a['first']:.2f} s, {a['batches']} result batches")

        if args.sweep:
            print()
            print(f"(a) ray, checks off, other run.batch_size / run.actors (one run each; (c) inline = "
                  f"{rate['c']:.2f} img/s total, {rate['c_steady']:.2f} steady):")
            print(f"{'actors':>6} {'batch':>5} {'seconds':>8} {'images/s':>9} {'a/c':>6} {'1st rec s':>9} "
                  f"{'steady img/s':>12} {'steady a/c':>10} {'others':>6}")
            for act, b_s in ((2, 1), (2, 4), (2, 8), (2, 16), (2, 32), (2, 64), (1, 8)):
                wait_quiet(args.wait_quiet)
                row = note(f"sweep actors={act} batch={b_s}",
                           run_ray(input_dir, tmp, f"s{act}-{b_s}", checks=False, cpus=cpus, actors=act, batch_size=b_s))
                rr = row["images"] / row["total"]
                print(f"{act:6d} {b_s:5d} {row['total']:8.2f} {rr:9.2f} {rr / rate['c']:6.2f} {row['first']:9.2f} "
                      f"{row['steady']:12.2f} {row['steady'] / rate['c_steady']:10.2f} {row['others']:6.2f}")
        ray.shutdown()
    finally:
        shutil.rmtree(tmp, ignore_errors=True)
    print(f"\n{time.strftime('%Y-%m-%d %H:%M %Z')}")
    return 0


if __name__ == "__main__":
    raise SystemExit(main())

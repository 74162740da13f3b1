"""Scaling: images/s with run.actors = 1 and 2 on the same folder, one run, and the
scaling efficiency rate2 / (2 x rate1).

    .venv/bin/python bench/scaling.py                              # ../shared/data/lfw-dev (457 images)
    .venv/bin/python bench/scaling.py --folder DIR --count 300 --repeat 3 --actors 1,2

Embedded Ray with cpus = the machine's cores, the same manifest for every row except
run.actors (blur, checks off unless --checks, run.batch_size default). Rounds are
interleaved (1, 2, 1, 2, ...) and medians reported. Helpers (manifest, timing, CPU
use of other processes) come from bench/throughput.py; see its docstring for what
"total" and "steady" include. On a machine whose other tenants use the CPU ("others"
column, in cores), efficiency is not meaningful: re-run on a quiet machine.
"""

from __future__ import annotations

import argparse
import os
import platform
import shutil
import statistics
import sys
import tempfile
import time
from pathlib import Path

REPO = Path(__file__).resolve().parents[1]
for p in (REPO, REPO / "bench"):
    if str(p) not in sys.path:
        sys.path.insert(0, str(p))

from throughput import _init_ray, make_manifest, prepare_input, run_ray, wait_quiet, warm_cache  # noqa: E402


def main(argv: list[str] | None = None) -> int:
    ap = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    ap.add_argument("--folder", default=str(REPO.parent / "shared" / "data" / "lfw-dev"))
    ap.add_argument("--count", type=int, default=None, help="first N images (sorted by path); default all")
    ap.add_argument("--actors", default="1,2", help="comma-separated run.actors values")
    ap.add_argument("--cpus", type=int, default=os.cpu_count() or 1)
    ap.add_argument("--batch-size", type=int, default=None)
    ap.add_argument("--repeat", type=int, default=3)
    ap.add_argument("--checks", action="store_true")
    ap.add_argument("--wait-quiet", type=float, default=0.0, metavar="S")
    args = ap.parse_args(argv)

    from deid.config.schema import RunConfig

    bs = args.batch_size or RunConfig.model_fields["batch_size"].default
    actor_values = [int(a) for a in args.actors.split(",")]
    tmp = Path(tempfile.mkdtemp(prefix="deid-scaling-"))
    try:
        inp, n = prepare_input(Path(args.folder), args.count, tmp)
        nbytes = warm_cache(inp)
        print(f"input: {args.folder}{f' (first {n})' if args.count else ''}: {n} images, {nbytes / 1e6:.1f} MB")
        print(f"machine: {platform.machine()}, {os.cpu_count()} cores; ray cpus={args.cpus}, batch_size={bs}, "
              f"blur, checks={'on' if args.checks else 'off'}")
        t = time.perf_counter()
        ray = _init_ray(make_manifest(inp, tmp / "init", checks=False, cpus=args.cpus, actors=1, batch_size=bs))
        import ray.data  # noqa: F401
        print(f"ray {ray.__version__}: ray.init {time.perf_counter() - t:.2f} s (not in the rates)")
        run_ray(inp, tmp, "warm", checks=args.checks, cpus=args.cpus, actors=1, batch_size=bs)  # warm-up, discarded

        rows: dict[int, list[dict]] = {a: [] for a in actor_values}
        for r in range(args.repeat):
            order = actor_values if r % 2 == 0 else actor_values[::-1]
            for a in order:
                wait_quiet(args.wait_quiet)
                row = run_ray(inp, tmp, f"a{a}r{r}", checks=args.checks, cpus=args.cpus, actors=a, batch_size=bs)
                print(f"  .. actors={a} round {r + 1}: {row['total']:.2f} s, steady {row['steady']:.2f} img/s "
                      f"(others {row['others']:.2f} cores)", file=sys.stderr, flush=True)
                rows[a].append(row)

        def med(a: int, key: str) -> float:
            vals = [x[key] for x in rows[a] if x[key] == x[key]]
            return statistics.median(vals) if vals else float("nan")

        print()
        print(f"{'actors':>6} {'images':>6} {'seconds':>8} {'images/s':>9} {'steady img/s':>12} {'1st rec s':>9} "
              f"{'others':>6}")
        rate, steady = {}, {}
        for a in actor_values:
            sec = med(a, "total")
            rate[a], steady[a] = n / sec, med(a, "steady")
            print(f"{a:6d} {n:6d} {sec:8.2f} {rate[a]:9.2f} {steady[a]:12.2f} {med(a, 'first'):9.2f} {med(a, 'others'):6.2f}")
        base = actor_values[0]
        for a in actor_values[1:]:
            k = a / base
            print(f"scaling efficiency actors {a} vs {base}: total {rate[a] / (k * rate[base]):.2f}, "
                  f"steady {steady[a] / (k * steady[base]):.2f}  (= rate{a} / ({k:g} x rate{base}); medians of {args.repeat})")
        print("per round s: " + "; ".join(f"actors {a}: " + ", ".join(f"{x['total']:.2f}" for x in rows[a]) for a in actor_values))
        print("  total = run_job wall (plan + actor start + model load + processing + audit), ray.init excluded")
        print("  steady = (records - 1) / (last - first record's processed_at): warm-up excluded")
        print("  others = cores used by other processes on the machine meanwhile (0 = quiet)")
        ray.shutdown()
    finally:
        shutil.rmtree(tmp, ignore_errors=True)
    print(f"\n{time.strftime('%Y-%m-%d %H:%M %Z')}")
    return 0


if __name__ == "__main__":
    raise SystemExit(main())

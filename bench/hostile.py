"""Hostile inputs at volume: good-image throughput of a clean run vs. a run with every
kind of bad and odd file mixed in (issue 4, item 6).

    .venv/bin/python bench/hostile.py                          # 500 good from ../shared/data/lfw-public-ref
    .venv/bin/python bench/hostile.py --count 500 --copies 2 --repeat 3 --folder DIR

Two corpora, built in a temp dir, measured in this one process, rounds interleaved:

  clean   the first --count images of --folder (sorted), copied
  mixed   the same good images + --copies copies of every kind in tests/hostile.py KINDS
          (31 bad kinds that must fail with a specific code, 25 odd-but-valid kinds)

Both with the same manifest: embedded Ray (actors = cpus), blur, checks off unless
--checks. "good img/s" is good images / run_job wall time: the bad and odd files'
cost is inside the mixed run's wall, which is the point. The odd files are valid
images that are really processed (decode, detect, blur, write), so "processed img/s"
(good + odd images processed / wall) is the like-for-like rate; "good img/s" charges
the odd files' processing to the good images too (a lower bound). Target in the issue:
mixed >= 0.90 x clean. The script also checks the outcome of the mixed
run: every bad file has its expected error code, no record is lost, no internal_error.
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
from collections import Counter
from pathlib import Path

REPO = Path(__file__).resolve().parents[1]
for p in (REPO, REPO / "tests", REPO / "bench"):
    if str(p) not in sys.path:
        sys.path.insert(0, str(p))

from throughput import (Arrivals, _init_ray, cpu_snapshot, image_files, make_manifest,  # noqa: E402
                        others_cores, wait_quiet, warm_cache)

from deid.pipeline.run import run_job  # noqa: E402


def build_corpora(src: Path, count: int, copies: int, tmp: Path, with_odd: bool = True) -> tuple[Path, Path, dict]:
    from hostile import write_kinds

    files = image_files(src)[:count]
    if len(files) < count:
        raise SystemExit(f"{src}: only {len(files)} images, --count {count} asked")
    clean, mixed = tmp / "clean", tmp / "mixed"
    for root in (clean, mixed / "good"):
        root.mkdir(parents=True)
        for p in files:
            shutil.copyfile(p, root / p.name)
    kinds = write_kinds(mixed / "hostile", copies=copies)
    if not with_odd:
        for name, kind in list(kinds.items()):
            if kind.code is None:
                (mixed / "hostile" / name).unlink()
                del kinds[name]
    return clean, mixed, kinds


class Collect(Arrivals):
    """Arrivals plus (uri -> status, error_code) of every row."""

    def __init__(self, t0: float):
        super().__init__(t0)
        self.rows: dict[str, tuple[str, str | None]] = {}
        self.work_ms: dict[str, float] = {}  # uri -> the worker's summed stage times for it

    def __call__(self, table) -> None:
        super().__call__(table)
        for u, s, c, t in zip(table.column("input_uri").to_pylist(), table.column("status").to_pylist(),
                              table.column("error_code").to_pylist(), table.column("timings").to_pylist()):
            self.rows[u] = (s, c)
            self.work_ms[u] = sum(v for v in (t or {}).values() if v)


def run(input_dir: Path, tmp: Path, tag: str, *, checks: bool, cpus: int, batch_size: int) -> dict:
    out = tmp / tag
    m = make_manifest(input_dir, out, checks=checks, cpus=cpus, actors=cpus, batch_size=batch_size)
    c0 = cpu_snapshot()
    t0 = time.perf_counter()
    col = Collect(t0)
    res = run_job(m, engine="ray", progress=False, on_batch=col)
    wall = time.perf_counter() - t0
    others = others_cores(c0, cpu_snapshot(), wall)
    shutil.rmtree(out, ignore_errors=True)
    return dict(wall=wall, rows=col.rows, work_ms=col.work_ms, stage_ms=col.stage_ms, steady=col.steady_rate(), others=others,
                summary=res.summary)


def main(argv: list[str] | None = None) -> int:
    ap = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    ap.add_argument("--folder", default=str(REPO.parent / "shared" / "data" / "lfw-public-ref"),
                    help="folder of good images (default: ../shared/data/lfw-public-ref)")
    ap.add_argument("--count", type=int, default=500, help="good images (first N, sorted by path)")
    ap.add_argument("--copies", type=int, default=2, help="copies of every hostile kind in the mixed corpus")
    ap.add_argument("--repeat", type=int, default=3, help="interleaved rounds (clean, mixed); medians reported")
    ap.add_argument("--cpus", type=int, default=os.cpu_count() or 1)
    ap.add_argument("--batch-size", type=int, default=None)
    ap.add_argument("--checks", action="store_true", help="identity checks on (default off)")
    ap.add_argument("--no-odd", action="store_true", help="mix in only the bad kinds (no odd-but-valid files)")
    ap.add_argument("--wait-quiet", type=float, default=0.0, metavar="S")
    args = ap.parse_args(argv)

    from deid.config.schema import RunConfig
    from hostile import KINDS

    bs = args.batch_size or RunConfig.model_fields["batch_size"].default
    tmp = Path(tempfile.mkdtemp(prefix="deid-hostile-"))
    wrong, lost = ["not run"], 0
    try:
        clean, mixed, kinds = build_corpora(Path(args.folder), args.count, args.copies, tmp, not args.no_odd)
        warm_cache(clean), warm_cache(mixed)
        n_bad = sum(k.code is not None for k in kinds.values())
        n_odd = len(kinds) - n_bad
        print(f"good: {args.count} images from {args.folder}; hostile: {len(kinds)} files = {args.copies} x "
              f"kinds ({n_bad} bad of {sum(k.code is not None for k in KINDS)} kinds, {n_odd} odd-but-valid)")
        print(f"machine: {platform.machine()}, {os.cpu_count()} cores; ray cpus={args.cpus}, actors={args.cpus}, "
              f"batch_size={bs}, method=blur, checks={'on' if args.checks else 'off'}")
        t = time.perf_counter()
        ray = _init_ray(make_manifest(clean, tmp / "init", checks=False, cpus=args.cpus, actors=args.cpus, batch_size=bs))
        import ray.data  # noqa: F401
        print(f"ray {ray.__version__}: ray.init {time.perf_counter() - t:.2f} s")
        # one warm-up run (first Ray Data run of a session pays imports and worker start-up)
        run(clean, tmp, "warm", checks=args.checks, cpus=args.cpus, batch_size=bs)

        rounds: dict[str, list[dict]] = {"clean": [], "mixed": []}
        for r in range(args.repeat):
            for kind, folder in (("clean", clean), ("mixed", mixed)) if r % 2 == 0 else (("mixed", mixed), ("clean", clean)):
                wait_quiet(args.wait_quiet)
                row = run(folder, tmp, f"{kind}{r}", checks=args.checks, cpus=args.cpus, batch_size=bs)
                print(f"  .. {kind} round {r + 1}: {row['wall']:.2f} s (others {row['others']:.2f} cores)",
                      file=sys.stderr, flush=True)
                rounds[kind].append(row)

        # outcome of the mixed run (last round)
        last = rounds["mixed"][-1]
        wrong, lost = [], 0
        for uri, (status, code) in last["rows"].items():
            p = Path(uri)
            if p.parent.name == "hostile":
                want = kinds[p.name].code
                if want is None and status == "failed":
                    wrong.append(f"{p.name}: failed ({code}), expected processed")
                elif want is not None and (status != "failed" or code != want):
                    wrong.append(f"{p.name}: {status}/{code}, expected failed/{want}")
            elif status == "failed":
                wrong.append(f"{p.name}: good image failed ({code})")
            lost += code in ("lost", "internal_error")
        codes = Counter(c for s, c in last["rows"].values() if s == "failed")

        def med(kind: str, key: str) -> float:
            vals = [r[key] for r in rounds[kind] if r[key] == r[key]]
            return statistics.median(vals) if vals else float("nan")

        print()
        print(f"{'corpus':<8} {'files':>6} {'good':>5} {'odd':>4} {'bad':>4} {'wall s':>8} {'good img/s':>10} "
              f"{'processed img/s':>15} {'all files/s':>11} {'others':>6}")
        rate, proc = {}, {}
        for kind in ("clean", "mixed"):
            files = len(rounds[kind][0]["rows"])
            odd, bad = (n_odd, n_bad) if kind == "mixed" else (0, 0)
            wall = med(kind, "wall")
            rate[kind] = args.count / wall
            proc[kind] = (args.count + odd) / wall
            print(f"{kind:<8} {files:6d} {args.count:5d} {odd:4d} {bad:4d} {wall:8.2f} {rate[kind]:10.2f} "
                  f"{proc[kind]:15.2f} {files / wall:11.2f} {med(kind, 'others'):6.2f}")
        print(f"\nratio mixed/clean: processed img/s {proc['mixed'] / proc['clean']:.3f}, good img/s "
              f"{rate['mixed'] / rate['clean']:.3f}  (target >= 0.90; medians of {args.repeat} rounds)")
        print("per round wall s: " + "; ".join(
            f"{k} " + ", ".join(f"{r['wall']:.2f}" for r in rounds[k]) for k in rounds))
        print(f"\nmixed run outcome: {len(last['rows'])} rows, failed by code: "
              + ", ".join(f"{c} {n}" for c, n in sorted(codes.items())))
        print(f"  wrong outcome: {len(wrong)}; lost or internal_error: {lost}")
        for w in wrong[:20]:
            print("   ", w)
        # worker-side work (summed stage times), less sensitive to other tenants than wall
        def work(row: dict, group: str) -> float:
            tot = 0.0
            for uri, ms in row["work_ms"].items():
                p = Path(uri)
                g = "good" if p.parent.name != "hostile" else ("odd" if kinds[p.name].code is None else "bad")
                tot += ms if g == group else 0.0
            return tot / 1000.0

        wg_clean = statistics.median(work(r, "good") for r in rounds["clean"])
        wg_mixed = statistics.median(work(r, "good") for r in rounds["mixed"])
        w_bad = statistics.median(work(r, "bad") for r in rounds["mixed"])
        w_odd = statistics.median(work(r, "odd") for r in rounds["mixed"])
        print(f"\nworker-side work, summed stage times (s, medians): good images clean {wg_clean:.2f}, mixed {wg_mixed:.2f} "
              f"(ratio {wg_mixed / wg_clean:.3f}); {n_bad} bad files {w_bad:.3f} "
              f"({w_bad / n_bad * 1000 if n_bad else 0:.2f} ms each, {w_bad / wg_mixed:.2%} of the good images' work); "
              f"{n_odd} odd files {w_odd:.2f}")
        st = last["stage_ms"]
        print("  mixed run per-record stage time summed (s): " + ", ".join(f"{k[:-3]} {v / 1000:.2f}" for k, v in st.items()))
        ray.shutdown()
    finally:
        shutil.rmtree(tmp, ignore_errors=True)
    print(f"\n{time.strftime('%Y-%m-%d %H:%M %Z')}")
    return 0 if not wrong and not lost else 1


if __name__ == "__main__":
    raise SystemExit(main())

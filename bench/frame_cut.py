"""Can the identity check judge a face the frame cuts? (checks.frame_cut)

Runs the real stage in-process (``run_job``, engine local) over a folder of photos with the
given method, CenterFace as the detector, the residual gate off and ``checks.frame_cut: check``
(every face measured), then prints, for faces whose box touches the image edge and for the
others, how many measure under the check's threshold. With ``--method mask`` every face is a
solid black box: a face that still "fails" there is one the check cannot judge.

    PYTHONPATH=. .venv/bin/python bench/frame_cut.py --input ../shared/data/lfw-public-ref --glob "[AB]*.jpg"
"""

from __future__ import annotations

import argparse
import tempfile
import time
from pathlib import Path

import pandas as pd

from deid.config import manifest_from_dict
from deid.faces.types import cut_by_frame
from deid.pipeline import run_job


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--input", default=str(Path(__file__).resolve().parents[2] / "shared/data/lfw-public-ref"))
    ap.add_argument("--glob", default="**/*.jpg")
    ap.add_argument("--method", default="mask")
    ap.add_argument("--detector", default="centerface")
    args = ap.parse_args()
    with tempfile.TemporaryDirectory() as tmp:
        m = manifest_from_dict({
            "input": {"uri": args.input, "glob": [args.glob]},
            "output": {"uri": f"{tmp}/release", "quarantine_uri": f"{tmp}/quarantine", "format": "png"},
            "audit": {"uri": f"{tmp}/audit"}, "detect": {"backend": args.detector},
            "anonymize": {"method": args.method},
            "checks": {"redetect": False, "residual": "off", "on_fail": "keep", "frame_cut": "check"},
            "run": {"engine": "local", "progress": False, "local_max_records": 10**9}})
        t = time.perf_counter()
        res = run_job(m, engine="local", progress=False)
        df = pd.read_parquet(res.records_uri)
        wall = time.perf_counter() - t
    thr = m.checks.min_identity_distance
    rows = [{"edge": cut_by_frame(tuple(f["box"]), (r.height, r.width)), "d": f["id_distance"]}
            for r in df.itertuples() for f in (r.faces if r.faces is not None else []) if f["id_distance"] is not None]
    d = pd.DataFrame(rows)
    print(f"{len(df)} photos, {len(d)} faces measured, method {args.method}, detector {args.detector}, {wall:.0f} s")
    print(f"| faces | n | distance < {thr} | share | median distance |\n|---|---:|---:|---:|---:|")
    for edge, g in d.groupby("edge"):
        name = "box touches the image edge" if edge else "the others"
        print(f"| {name} | {len(g)} | {int((g.d < thr).sum())} | {(g.d < thr).mean():.0%} | {g.d.median():.3f} |")


if __name__ == "__main__":
    main()

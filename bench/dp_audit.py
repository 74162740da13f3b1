"""The numbers of docs/privacy.md, "Auditing the claim empirically": deid's empirical privacy
audit (deid.privacy.audit_dp) of the real dp-image mechanism at several epsilons, and of two
deliberately broken mechanisms, with the CLI's defaults (5000 releases per face, 2 worst-case
public pairs + the corner probe, alpha 0.05) on faces of ../shared/data/lfw-public-ref.

    .venv/bin/python bench/dp_audit.py                      # ~5 min on one core (9 audits)
    .venv/bin/python bench/dp_audit.py --trials 20000 --only laplace-1,broken-noise

Each row is one audit: the claim, the lower bound, and the wall time (sampling dominates:
about 0.7 ms per OpenDP release of a 32-dimension code on a shared core).
"""

from __future__ import annotations

import argparse
import time

from deid.anonymize import make_anonymizer
from deid.evaluate.dp_audit import (
    DEFAULT_MAX_FACES,
    DEFAULT_PAIRS,
    DEFAULT_TRIALS,
    public_codes,
)
from deid.privacy.audit_dp import Claim, audit_mechanism, broken_for_testing

LATENT = {"backend": "pca", "uri": "builtin:eigenfaces"}


def settings():
    def real(eps, **kw):
        m = make_anonymizer("dp-image", {"epsilon": eps, **kw}, LATENT)
        return m, m.mechanism, None, {}

    def broken_noise(eps):
        m = make_anonymizer("dp-image", {"epsilon": eps}, LATENT)
        b = broken_for_testing(m.mechanism, "noise-too-small", factor=10.0)
        return m, b, Claim.of(m.calibrated), {}

    def unclipped(eps, corners):
        m = make_anonymizer("dp-image", {"epsilon": eps}, LATENT)
        b = broken_for_testing(m.mechanism, "unclipped-dim", j=5)
        return m, b, None, {"corners": corners}

    return {
        "laplace-1": lambda: real(1.0), "laplace-3": lambda: real(3.0), "laplace-10": lambda: real(10.0),
        "gaussian-1": lambda: real(1.0, mechanism="gaussian", delta=1e-5),
        "gaussian-10": lambda: real(10.0, mechanism="gaussian", delta=1e-5),
        "broken-noise-1": lambda: broken_noise(1.0), "broken-noise-3": lambda: broken_noise(3.0),
        "unclipped-1-public-only": lambda: unclipped(1.0, False), "unclipped-1": lambda: unclipped(1.0, True),
    }


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    ap.add_argument("--public", default="../shared/data/lfw-public-ref")
    ap.add_argument("--trials", type=int, default=DEFAULT_TRIALS)
    ap.add_argument("--pairs", type=int, default=DEFAULT_PAIRS)
    ap.add_argument("--max-faces", type=int, default=DEFAULT_MAX_FACES)
    ap.add_argument("--only", default="", help="comma-separated setting names")
    a = ap.parse_args()
    todo = settings()
    names = [n for n in todo if not a.only or any(n.startswith(o) for o in a.only.split(","))]
    method0 = make_anonymizer("dp-image", {}, LATENT)
    t = time.perf_counter()
    codes, info = public_codes(method0, a.public, max_faces=a.max_faces)
    print(f"public faces: {info['faces']} of {info['images_read']} photos, {time.perf_counter() - t:.1f} s")
    print("| setting | claim | mechanism's noise | trials | selected pair | eps_lb | verdict | seconds |")
    print("|---|---|---|---:|---|---:|---|---:|")
    for n in names:
        _, mech, claim, kw = todo[n]()
        r = audit_mechanism(mech, codes, pairs=a.pairs, trials=a.trials, claim=claim, **kw)
        c, p = r["claim"], r["pairs"][r["selected_pair"]]
        noise = f"{r['mechanism']['mechanism']} scale {r['mechanism']['noise_scale']:.4g}"
        claim_s = f"{c['mechanism']} eps {c['epsilon']:g}" + (f", delta {c['delta']:g}" if c["delta"] else "")
        print(f"| {n} | {claim_s} | {noise} | {a.trials} | {p['kind']} ({p['distance_over_sensitivity']:.2f} of sens.) "
              f"| {r['epsilon_lb']:.3f} | {r['verdict']} | {r['seconds']:.1f} |", flush=True)


if __name__ == "__main__":
    main()

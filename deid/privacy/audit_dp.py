"""Empirical privacy audit of a latent DP mechanism: a lower bound on its epsilon from its outputs.

A DP claim is a statement about every pair of inputs and every set of outputs: for (epsilon,
delta)-DP, ``P[M(a) in S] <= e^epsilon P[M(b) in S] + delta``. An audit picks a pair ``(a, b)``,
releases each of them many times through the REAL mechanism (the same
:class:`~deid.privacy.mechanisms.LatentMechanism` object a method uses, OpenDP's sampler, no
``test_seed``), and runs a distinguishing test "was this output made from a or from b?". If
the test has false-positive rate FPR and false-negative rate FNR, the claim implies

    1 - FNR <= e^epsilon FPR + delta      and      1 - FPR <= e^epsilon FNR + delta,

so ``epsilon >= log((1 - delta - FNR) / FPR)`` and ``>= log((1 - delta - FPR) / FNR)``. With
Clopper-Pearson upper bounds on FPR and FNR (each at confidence ``1 - alpha / 2``, Bonferroni over
the two), the larger of the two logs (or 0) is a lower bound ``eps_lb`` on the mechanism's true
epsilon that holds with confidence ``1 - alpha``. A correct mechanism gives ``eps_lb > claim``
with probability at most ``alpha``; ``eps_lb`` above the claim is a VIOLATION.

What is tested
--------------
* **Pairs.** The ``pairs`` public faces farthest apart in the CLIPPED latent (over the noised
  dimensions; L1 for Laplace, L2 for Gaussian), i.e. the public pairs closest to the stated
  sensitivity, and (``corners=True``) a probe pair: the two opposite corners of the clip box,
  pushed ``CORNER_MARGIN`` sensitivities beyond the bounds in every dimension. Clipped, the probe
  pair is exactly the stated sensitivity apart; a mechanism that fails to clip any dimension (or
  passes an un-noised dimension through) gives itself away on it.
* **The attack.** A likelihood-ratio test of the claimed noise family (Laplace: per-dimension
  median and mean absolute deviation; Gaussian: mean and standard deviation) whose parameters
  are FITTED on the first half of each face's releases, not taken from the claim, so a mechanism
  whose noise is smaller or centred elsewhere than it says is measured as it is. The threshold
  and the pair are chosen on that half too; the counts and the bound come from the other half
  only, so the selection costs no confidence.
* **The view.** By default the statistic reads the released noisy code (``Noised.z``, the
  mechanism output the claim is about). A ``post`` function (e.g. decode, then re-encode with
  the public model) audits what an observer of the image sees instead; post-processing cannot
  raise epsilon, so that bound is never larger in expectation, and it is reported as such.

What a lower bound means
------------------------
``eps_lb`` is what THIS test proves on THESE pairs; the true epsilon of the mechanism is at least
that (with confidence ``1 - alpha``). It is not an estimate of epsilon and never a proof of
privacy: a consistent audit only says the test found no contradiction. The best a test with
``n`` releases per face can show is about ``log(n / 3)``.

Nothing secret leaves: the result holds parameters, counts and pair indices, never a latent, a
noise value, a seed or a name.
"""

from __future__ import annotations

import time
from collections.abc import Callable, Sequence
from dataclasses import dataclass

import numpy as np

from deid.privacy.mechanisms import LatentMechanism, add_noise, clip

#: The probe corners lie this many sensitivities beyond the clip bounds in every dimension.
CORNER_MARGIN = 100.0
#: Candidate thresholds per test (quantiles of the training statistics).
_N_THRESHOLDS = 512


@dataclass(frozen=True)
class Claim:
    """The claim under audit: ``mechanism`` (``laplace`` | ``gaussian``), ``epsilon``, ``delta``."""

    mechanism: str
    epsilon: float
    delta: float = 0.0

    @classmethod
    def of(cls, calibrated) -> Claim:
        return cls(calibrated.mechanism, float(calibrated.epsilon), float(calibrated.delta))


# --------------------------------------------------------------------------------------------
# statistics


def clopper_pearson_upper(k, n: int, alpha: float):
    """One-sided Clopper-Pearson upper bound at confidence ``1 - alpha`` on a binomial rate from
    ``k`` successes in ``n`` trials (``k`` may be an array). 1 where ``k == n``."""
    from scipy.stats import beta

    if n <= 0:
        raise ValueError("n must be > 0")
    if not 0.0 < alpha < 1.0:
        raise ValueError(f"alpha must be in (0, 1), got {alpha!r}")
    k = np.asarray(k, dtype=np.float64)
    if np.any((k < 0) | (k > n)):
        raise ValueError("k must be in [0, n]")
    with np.errstate(invalid="ignore"):
        up = beta.ppf(1.0 - alpha, k + 1.0, np.maximum(n - k, 1e-300))
    out = np.where(k >= n, 1.0, up)
    return float(out) if out.ndim == 0 else out


def _log_ratio(num, den):
    num = np.asarray(num, dtype=np.float64)
    den = np.asarray(den, dtype=np.float64)
    with np.errstate(divide="ignore", invalid="ignore"):
        r = np.where((num > 0) & (den > 0), np.log(np.where(num > 0, num, 1.0) / np.where(den > 0, den, 1.0)), 0.0)
    return r


def epsilon_lower_bound(fp, n_b: int, fn, n_a: int, *, delta: float = 0.0, alpha: float = 0.05):
    """``max(0, log((1 - delta - FNR_ub) / FPR_ub), log((1 - delta - FPR_ub) / FNR_ub))``.

    ``fp`` of ``n_b`` releases of b were called "a", ``fn`` of ``n_a`` releases of a were called
    "b"; FPR_ub and FNR_ub are Clopper-Pearson upper bounds at ``1 - alpha / 2`` each, so the
    bound holds with confidence ``1 - alpha``. Vectorised over ``fp`` / ``fn``."""
    if not 0.0 <= delta < 1.0:
        raise ValueError(f"delta must be in [0, 1), got {delta!r}")
    fpr = clopper_pearson_upper(fp, n_b, alpha / 2.0)
    fnr = clopper_pearson_upper(fn, n_a, alpha / 2.0)
    b1 = _log_ratio(1.0 - delta - fnr, fpr)
    b2 = _log_ratio(1.0 - delta - fpr, fnr)
    out = np.maximum(0.0, np.maximum(b1, b2))
    return float(out) if out.ndim == 0 else out


# --------------------------------------------------------------------------------------------
# pairs


def pair_distance(mechanism, a, b) -> float:
    """Distance of two inputs after the claimed clipping, over the noised dimensions: L1 for
    Laplace, L2 for Gaussian (the norm the sensitivity is stated in)."""
    lo, hi, m = mechanism.lo, mechanism.hi, mechanism.mask
    d = np.abs(np.clip(a, lo, hi) - np.clip(b, lo, hi))[m]
    return float(d.sum()) if mechanism.calibrated.mechanism == "laplace" else float(np.sqrt((d * d).sum()))


def worst_case_pairs(codes: np.ndarray, mechanism, k: int) -> list[tuple[int, int, float]]:
    """The ``k`` pairs of rows of ``codes`` farthest apart in the clipped latent (see
    :func:`pair_distance`), farthest first, no pair twice and no face in more than two pairs."""
    codes = np.asarray(codes, dtype=np.float64)
    if codes.ndim != 2 or len(codes) < 2:
        raise ValueError("need at least two public codes to form a pair")
    c = np.clip(codes, mechanism.lo, mechanism.hi)[:, mechanism.mask]
    diff = np.abs(c[:, None, :] - c[None, :, :])
    dist = diff.sum(-1) if mechanism.calibrated.mechanism == "laplace" else np.sqrt((diff * diff).sum(-1))
    iu, ju = np.triu_indices(len(c), 1)
    order = np.argsort(-dist[iu, ju], kind="stable")
    used: dict[int, int] = {}
    out = []
    for o in order:
        i, j = int(iu[o]), int(ju[o])
        if used.get(i, 0) >= 2 or used.get(j, 0) >= 2:
            continue
        out.append((i, j, float(dist[i, j])))
        used[i] = used.get(i, 0) + 1
        used[j] = used.get(j, 0) + 1
        if len(out) >= k:
            break
    return out


def corner_pair(mechanism, margin: float = CORNER_MARGIN) -> tuple[np.ndarray, np.ndarray]:
    """The probe pair: ``lo - margin * sensitivity`` and ``hi + margin * sensitivity`` in every
    dimension. After correct clipping they are the box's opposite corners, exactly the stated
    sensitivity apart; any dimension left unclipped puts them far apart."""
    s = float(mechanism.calibrated.bound_sensitivity) * float(margin)
    return mechanism.lo - s, mechanism.hi + s


# --------------------------------------------------------------------------------------------
# the attack


def _fit(train_a: np.ndarray, train_b: np.ndarray, family: str):
    if family == "laplace":
        ma, mb = np.median(train_a, 0), np.median(train_b, 0)
        s = 0.5 * (np.abs(train_a - ma).mean(0) + np.abs(train_b - mb).mean(0))
    else:
        ma, mb = train_a.mean(0), train_b.mean(0)
        s = np.sqrt(0.5 * (train_a.var(0) + train_b.var(0)))
    # a dimension that does not vary: a difference there separates the pair outright
    floor = 1e-9 * np.maximum(1.0, np.maximum(np.abs(ma), np.abs(mb)))
    return ma, mb, np.maximum(s, floor)


def _statistic(y: np.ndarray, fit, family: str) -> np.ndarray:
    """Log-likelihood ratio log p_a(y) / p_b(y) under the fitted product model (large: "a")."""
    ma, mb, s = fit
    if family == "laplace":
        return ((np.abs(y - mb) - np.abs(y - ma)) / s).sum(-1)
    return (((y - mb) ** 2 - (y - ma) ** 2) / (2.0 * s * s)).sum(-1)


def _counts(t_a: np.ndarray, t_b: np.ndarray, thresholds: np.ndarray):
    """Test "a if T > t": false negatives (a with T <= t), false positives (b with T > t)."""
    fn = np.searchsorted(np.sort(t_a), thresholds, side="right")
    fp = len(t_b) - np.searchsorted(np.sort(t_b), thresholds, side="right")
    return fp, fn


def distinguish(rel_a: np.ndarray, rel_b: np.ndarray, *, family: str, delta: float, alpha: float) -> dict:
    """The likelihood-ratio test on two faces' releases: fit and choose the threshold on the first
    half of each, count on the second half. Returns the training score (the training half's bound
    at the chosen threshold: the best of many thresholds, so biased upwards, and used only to
    choose the pair) and the test-half counts and bound (unbiased: that half chose nothing)."""
    n_a, n_b = len(rel_a), len(rel_b)
    h_a, h_b = n_a // 2, n_b // 2
    if min(h_a, n_a - h_a, h_b, n_b - h_b) < 1:
        raise ValueError("need at least 2 releases of each face")
    fit = _fit(rel_a[:h_a], rel_b[:h_b], family)
    ta, tb = _statistic(rel_a, fit, family), _statistic(rel_b, fit, family)
    pooled = np.concatenate([ta[:h_a], tb[:h_b]])
    pooled = pooled[np.isfinite(pooled)]
    th = np.unique(np.quantile(pooled, np.linspace(0.0, 1.0, _N_THRESHOLDS))) if len(pooled) else np.zeros(1)
    fp, fn = _counts(ta[:h_a], tb[:h_b], th)
    train = epsilon_lower_bound(fp, h_b, fn, h_a, delta=delta, alpha=alpha)
    best = int(np.argmax(train))
    t = th[best]
    fp_t, fn_t = _counts(ta[h_a:], tb[h_b:], np.array([t]))
    m_a, m_b = n_a - h_a, n_b - h_b
    fp_t, fn_t = int(fp_t[0]), int(fn_t[0])
    return {
        "train_score": float(train[best]),
        "test": {"releases_a": m_a, "releases_b": m_b, "false_positives": fp_t, "false_negatives": fn_t,
                 "fpr": fp_t / m_b, "fnr": fn_t / m_a,
                 "fpr_upper": float(clopper_pearson_upper(fp_t, m_b, alpha / 2.0)),
                 "fnr_upper": float(clopper_pearson_upper(fn_t, m_a, alpha / 2.0))},
        "epsilon_lb": float(epsilon_lower_bound(fp_t, m_b, fn_t, m_a, delta=delta, alpha=alpha)),
    }


# --------------------------------------------------------------------------------------------
# the audit


def _implied_epsilon(claim: Claim, distance: float, sensitivity: float) -> float | None:
    """What the claim implies for one pair at ``distance``: exactly epsilon * distance / Delta1
    for Laplace (capped at epsilon); None for Gaussian (no closed per-pair epsilon at this delta)."""
    if claim.mechanism != "laplace":
        return None
    return float(claim.epsilon * min(1.0, distance / sensitivity))


def release_many(mechanism, z: np.ndarray, n: int,
                 progress: Callable[[int], None] | None = None) -> tuple[np.ndarray, str]:
    """``n`` independent releases of ``z`` through ``mechanism`` (its own sampler, no test seed),
    and the sampler's name."""
    out = np.empty((n, len(z)), dtype=np.float64)
    sampler = ""
    for i in range(n):
        noised = mechanism(z)
        if noised.test_mode:
            raise ValueError("the audit needs the DP sampler; the mechanism returned a test-mode release")
        out[i] = noised.z
        sampler = noised.sampler
        if progress is not None and ((i + 1) % 100 == 0 or i + 1 == n):
            progress(i % 100 + 1)   # in steps of 100 releases
    return out, sampler


def audit_mechanism(mechanism, codes: np.ndarray | None = None, *, pairs: int = 2, trials: int = 5000,
                    alpha: float = 0.05, corners: bool = True, claim: Claim | None = None,
                    explicit_pairs: Sequence[tuple[np.ndarray, np.ndarray]] = (),
                    post: Callable[[np.ndarray], np.ndarray] | None = None, view: str = "code",
                    progress: Callable[[int, int], None] | None = None) -> dict:
    """Audit ``mechanism`` (a :class:`~deid.privacy.mechanisms.LatentMechanism`, or anything with
    its ``lo``, ``hi``, ``mask``, ``calibrated`` and ``__call__(z) -> Noised``) against ``claim``
    (default: what it is calibrated to). Returns a plain dict (module docstring; docs/privacy.md).

    ``codes``: public latent codes (rows) to draw the ``pairs`` worst-case pairs from; pair ids in
    the result are row indices. ``corners``: add the out-of-bounds probe pair.
    ``explicit_pairs``: further pairs of codes to test as given. ``trials``: releases of each
    face of each pair (half fit and choose the test, half measure it). ``post``: a function
    applied to a batch of releases before the test (the observer's view, named by ``view``).
    ``progress(done, total)`` is called as releases are drawn.
    """
    t0 = time.perf_counter()
    claim = claim or Claim.of(mechanism.calibrated)
    if claim.mechanism not in ("laplace", "gaussian"):
        raise ValueError(f"unknown mechanism {claim.mechanism!r}")
    if not (isinstance(trials, (int, np.integer)) and trials >= 4):
        raise ValueError(f"trials must be an int >= 4, got {trials!r}")
    if not 0.0 < alpha < 1.0:
        raise ValueError(f"alpha must be in (0, 1), got {alpha!r}")
    sens = float(mechanism.calibrated.bound_sensitivity)

    faces: dict[str, np.ndarray] = {}
    plan: list[dict] = []
    if codes is not None and pairs > 0:
        codes = np.asarray(codes, dtype=np.float64)
        for i, j, d in worst_case_pairs(codes, mechanism, pairs):
            faces.setdefault(f"public:{i}", codes[i])
            faces.setdefault(f"public:{j}", codes[j])
            plan.append({"kind": "public", "faces": [i, j], "keys": (f"public:{i}", f"public:{j}"), "distance": d})
    if corners:
        lo, hi = corner_pair(mechanism)
        faces["corner:lo"], faces["corner:hi"] = lo, hi
        plan.append({"kind": "corner-probe", "faces": None, "keys": ("corner:lo", "corner:hi"),
                     "distance": pair_distance(mechanism, lo, hi)})
    for n, (a, b) in enumerate(explicit_pairs):
        a, b = np.asarray(a, np.float64), np.asarray(b, np.float64)
        faces[f"given:{n}:a"], faces[f"given:{n}:b"] = a, b
        plan.append({"kind": "given", "faces": None, "keys": (f"given:{n}:a", f"given:{n}:b"),
                     "distance": pair_distance(mechanism, a, b)})
    if not plan:
        raise ValueError("nothing to audit: no public pairs, no probe pair and no given pair")

    total = len(faces) * int(trials)
    done = [0]

    def tick(k: int) -> None:
        done[0] += k
        if progress is not None:
            progress(done[0], total)

    released: dict[str, np.ndarray] = {}
    sampler = None
    for key, z in faces.items():
        rel, sampler = release_many(mechanism, z, int(trials), tick)
        released[key] = np.asarray(post(rel), dtype=np.float64) if post is not None else rel

    results = []
    for p_id, p in enumerate(plan):
        r = distinguish(released[p["keys"][0]], released[p["keys"][1]], family=claim.mechanism,
                        delta=claim.delta, alpha=alpha)
        results.append((p_id, p, r))
    # choose the pair on the training halves only; its test half gives the bound
    sel_id, _, sel_r = max(results, key=lambda x: (x[2]["train_score"], -x[0]))
    eps_lb = sel_r["epsilon_lb"]
    pair_rows = []
    for p_id, p, r in results:
        pair_rows.append({
            "id": p_id, "kind": p["kind"], "faces": p["faces"],
            "distance": p["distance"], "distance_over_sensitivity": p["distance"] / sens,
            "claim_for_pair": _implied_epsilon(claim, p["distance"], sens),
            "train_score": r["train_score"],
        })
    c = mechanism.calibrated
    return {
        "claim": {"mechanism": claim.mechanism, "epsilon": claim.epsilon, "delta": claim.delta},
        "mechanism": {"mechanism": c.mechanism, "epsilon": float(c.epsilon), "delta": float(c.delta),
                      "sensitivity": float(c.sensitivity), "noise_scale": float(c.noise_scale),
                      "noised_dims": int(c.dim), "latent_dims": len(mechanism.lo),
                      "dp_scope": getattr(mechanism, "dp_scope", None), "sampler": sampler},
        "attack": f"likelihood-ratio test, {claim.mechanism} family with parameters fitted on the training half",
        "view": view,
        "bound_for": ("the released noisy code (the mechanism output the claim is about)" if view == "code"
                      else f"the observer's view '{view}' (a post-processing of the noisy code)"),
        "trials": int(trials), "train_per_face": int(trials) // 2, "test_per_face": int(trials) - int(trials) // 2,
        "alpha": float(alpha), "confidence": 1.0 - float(alpha),
        "corner_margin": CORNER_MARGIN if corners else None,
        "pairs": pair_rows,
        "selected_pair": sel_id,
        "test": sel_r["test"],
        "epsilon_lb": eps_lb,
        "verdict": "consistent" if eps_lb <= claim.epsilon else "VIOLATION",
        "releases": total,
        "seconds": round(time.perf_counter() - t0, 3),
    }


def consistent(result: dict) -> bool:
    """True when the audit's lower bound does not exceed the claimed epsilon."""
    return result["verdict"] == "consistent"


def format_table(result: dict) -> str:
    """A small plain-text table of an audit result (what ``deid audit-dp`` prints)."""
    c, m = result["claim"], result["mechanism"]
    lines = [(f"claim: {c['mechanism']}, epsilon {c['epsilon']:g}, delta {c['delta']:g} "
              f"(noise scale {m['noise_scale']:.4g}, sensitivity {m['sensitivity']:.4g}, "
              f"{m['noised_dims']} of {m['latent_dims']} dims noised)"),
             f"bound for: {result['bound_for']}",
             f"{'pair':>4}  {'kind':<12}  {'faces':<11}  {'dist/sens':>9}  {'claim(pair)':>11}  {'train score':>11}"]
    for p in result["pairs"]:
        faces = "-" if not p["faces"] else f"{p['faces'][0]},{p['faces'][1]}"
        cp = "-" if p["claim_for_pair"] is None else f"{p['claim_for_pair']:.3f}"
        mark = " *" if p["id"] == result["selected_pair"] else ""
        lines.append(f"{p['id']:>4}  {p['kind']:<12}  {faces:<11}  {p['distance_over_sensitivity']:>9.3f}  "
                     f"{cp:>11}  {p['train_score']:>11.3f}{mark}")
    t = result["test"]
    lines.append(f"test half of pair {result['selected_pair']} (*): {t['releases_a']} + {t['releases_b']} releases, "
                 f"FPR {t['fpr']:.4f} (<= {t['fpr_upper']:.4f}), FNR {t['fnr']:.4f} (<= {t['fnr_upper']:.4f})")
    rel = "<=" if result["verdict"] == "consistent" else ">"
    lines.append(f"epsilon lower bound {result['epsilon_lb']:.3f} at {result['confidence']:.0%} confidence "
                 f"{rel} claimed {c['epsilon']:g}: {result['verdict']}  ({result['releases']} releases, "
                 f"{result['seconds']:.1f} s)")
    return "\n".join(lines)


# --------------------------------------------------------------------------------------------
# Broken on purpose: for the audit's own tests and bench only; never used by a run
#
# The audit is only worth something if it catches mechanisms that do not keep their claim.
# tests/test_audit_dp.py and bench/dp_audit.py check that it does on these two: no method,
# manifest field or command of deid builds them.

#: the broken mechanisms :func:`broken_for_testing` builds
BROKEN_KINDS = ("noise-too-small", "unclipped-dim")


def broken_for_testing(correct: LatentMechanism, kind: str, *, factor: float = 10.0,
                       j: int = 5) -> LatentMechanism:
    """A deliberately broken copy of the :class:`~deid.privacy.mechanisms.LatentMechanism`
    ``correct`` (same bounds, noised dimensions and public values), for the audit to catch.
    FOR THE AUDIT'S OWN TESTS AND BENCH ONLY; NEVER USED BY A RUN.

    * ``"noise-too-small"``: a real OpenDP mechanism calibrated for ``factor`` x ``correct``'s
      epsilon (its noise scale 1/``factor`` of the claim's); audit it with
      ``claim=Claim.of(correct.calibrated)``, the claim it fails to keep;
    * ``"unclipped-dim"``: ``correct``'s own claim, but dimension ``j`` is not clipped before
      the noise (the shape of a real bug); its own ``calibrated`` is the claim it fails to keep.
    """
    c = correct.calibrated
    common = {"mechanism": c.mechanism, "delta": c.delta, "noise_dims": correct.mask,
              "public_values": correct.public_values}
    if kind == "noise-too-small":
        return LatentMechanism(correct.lo, correct.hi, epsilon=factor * c.epsilon, **common)
    if kind == "unclipped-dim":
        return _UnclippedDim(correct.lo, correct.hi, epsilon=c.epsilon, j=j, **common)
    raise ValueError(f"broken_for_testing: kind {kind!r}, expected one of {', '.join(BROKEN_KINDS)}")


class _UnclippedDim(LatentMechanism):
    """Broken on purpose: dimension ``j`` is not clipped (:func:`broken_for_testing`)."""

    def __init__(self, *args, j: int, **kwargs):
        super().__init__(*args, **kwargs)
        self.j = j

    def __call__(self, z, *, test_seed=None):
        c = clip(z, self.lo, self.hi)
        c[self.j] = z[self.j]
        noised = add_noise(c[self.mask], self.calibrated, test_seed=test_seed)
        out = np.asarray(z, dtype=np.float64).copy()
        out[self.mask] = noised.z
        out[~self.mask] = self.public_values[~self.mask]
        return type(noised)(out, self.calibrated, noised.test_mode, noised.sampler, self.dp_scope)

"""deid.privacy.mechanisms: sensitivity, calibration and the sampler, tested against independent
formulas and the sampled distributions themselves. No mocks: the real OpenDP sampler runs.
"""

from __future__ import annotations

import math
from fractions import Fraction

import dp_accounting
import numpy as np
import pytest
from hypothesis import HealthCheck, assume, given, settings
from hypothesis import strategies as st
from scipy import optimize, stats

from deid.privacy import mechanisms as M

P_MIN = 1e-3          # KS acceptance threshold
N_KS = 20_000         # samples per KS test
HYP = settings(max_examples=60, deadline=None, suppress_health_check=[HealthCheck.too_slow])


# ----------------------------------------------------------------------------------------------
# independent implementation of the analytic Gaussian condition (Balle & Wang 2018), plain scipy


def indep_delta(eps: float, sigma: float, sens: float) -> float:
    a = sens / (2 * sigma)
    c = eps * sigma / sens
    return stats.norm.cdf(a - c) - math.exp(eps) * stats.norm.cdf(-a - c)


def indep_sigma(eps: float, delta: float, sens: float = 1.0) -> float:
    f = lambda s: indep_delta(eps, s, sens) - delta  # noqa: E731  decreasing in s
    hi = sens
    while f(hi) > 0:
        hi *= 2
    lo = hi / 2
    while f(lo) < 0:
        lo /= 2
    return optimize.brentq(f, lo, hi, xtol=1e-14, rtol=1e-14)


# independent implementation of the zCDP -> (eps, delta) conversion that certifies the discrete
# Gaussian (Canonne, Kamath & Steinke 2020; OpenDP's make_zCDP_to_approxDP, dp-accounting's RDP
# conversion): delta = inf_{alpha > 1} exp((alpha-1)(alpha rho - eps)) / (alpha-1) * (1-1/alpha)^alpha


def indep_cdp_delta(rho: float, eps: float) -> float:
    def log_delta(t: float) -> float:  # t = log(alpha - 1)
        a = 1.0 + math.exp(t)
        return (a - 1) * (a * rho - eps) - math.log(a - 1) + a * math.log1p(-1 / a)

    r = optimize.minimize_scalar(log_delta, bounds=(-20.0, 25.0), method="bounded",
                                 options={"xatol": 1e-12})
    return min(1.0, math.exp(r.fun))


def indep_certified_sigma(eps: float, delta: float, sens: float = 1.0) -> float:
    """Smallest sigma whose rho = sens^2 / (2 sigma^2) converts to delta(eps) <= delta."""
    lo, hi = 1e-6 * sens, 1e6 * sens
    for _ in range(200):
        mid = math.sqrt(lo * hi)
        if indep_cdp_delta((sens / mid) ** 2 / 2, eps) <= delta:
            hi = mid
        else:
            lo = mid
    return hi


# ----------------------------------------------------------------------------------------------
# helpers


def draws(cal: M.Calibrated, n: int, test_seed: int | None) -> np.ndarray:
    """n noise samples: add_noise on the zero vector (0 is on every lattice, so output == noise)."""
    zero = np.zeros(cal.dim)
    out, seed = [], test_seed
    while sum(len(x) for x in out) < n:
        out.append(np.asarray(M.add_noise(zero, cal, test_seed=seed).z))
        seed = None if seed is None else seed + 1
    return np.concatenate(out)[:n]


def ks_p(sample: np.ndarray, dist) -> float:
    return stats.kstest(sample, dist.cdf).pvalue


def assert_fits(cal: M.Calibrated, dist, test_seed: int | None) -> np.ndarray:
    """KS at p > 1e-3. The OS-entropy path cannot be seeded, so a first miss (probability 1e-3
    under H0) gets one fresh sample: a false alarm then needs two misses (1e-6), while a wrong
    scale fails both (see the rejection tests)."""
    sample = draws(cal, N_KS, test_seed)
    p = ks_p(sample, dist)
    if p <= P_MIN and test_seed is None:
        sample = draws(cal, N_KS, None)
        p = ks_p(sample, dist)
    assert p > P_MIN, f"KS p={p:.2e} against {dist.dist.name}({dist.kwds})"
    return sample


@pytest.fixture(scope="module")
def lap():
    return M.calibrate_laplace(0.8, 4.0, dim=500)           # b = 5


@pytest.fixture(scope="module")
def gau():
    return M.calibrate_gaussian(1.0, 1e-5, 2.0, dim=500)    # sigma ~ 8.09 (certified)


# ----------------------------------------------------------------------------------------------
# sampled distributions: Kolmogorov-Smirnov, both paths, and the test's power


@pytest.mark.parametrize("seed", [None, 1234], ids=["opendp", "test-mode"])
def test_laplace_noise_is_laplace_b(lap, seed):
    assert lap.noise_scale == pytest.approx(5.0, rel=1e-9)
    sample = assert_fits(lap, stats.laplace(loc=0, scale=lap.noise_scale), seed)
    # and the KS test can fail: the same sample against a 25% wrong scale is rejected
    assert ks_p(sample, stats.laplace(loc=0, scale=1.25 * lap.noise_scale)) < 1e-6
    assert ks_p(sample, stats.laplace(loc=0, scale=0.8 * lap.noise_scale)) < 1e-6


@pytest.mark.parametrize("seed", [None, 1234], ids=["opendp", "test-mode"])
def test_gaussian_noise_is_normal_sigma(gau, seed):
    assert gau.noise_scale == pytest.approx(2.0 * indep_certified_sigma(1.0, 1e-5), rel=1e-6)
    sample = assert_fits(gau, stats.norm(loc=0, scale=gau.noise_scale), seed)
    assert ks_p(sample, stats.norm(loc=0, scale=1.25 * gau.noise_scale)) < 1e-6
    assert ks_p(sample, stats.norm(loc=0, scale=0.8 * gau.noise_scale)) < 1e-6
    # a Laplace with the same variance is also told apart
    assert ks_p(sample, stats.laplace(loc=0, scale=gau.noise_scale / math.sqrt(2))) < 1e-6


def test_ks_rejects_a_wrongly_scaled_sampler(lap):
    """Power check on the test itself: noise drawn at 1.25 b does not pass as Laplace(b)."""
    wrong = M.Calibrated("laplace", lap.epsilon, 0.0, lap.sensitivity, 1.25 * lap.noise_scale,
                         lap.dim, lap.bound_sensitivity, lap.granularity_exponent)
    sample = draws(wrong, N_KS, None)
    assert ks_p(sample, stats.laplace(loc=0, scale=lap.noise_scale)) < P_MIN


# ----------------------------------------------------------------------------------------------
# entropy and test mode


@pytest.mark.parametrize("mech", ["laplace", "gaussian"])
def test_default_path_draws_differ_and_test_mode_repeats(mech):
    lo, hi = -np.ones(64), np.ones(64)
    lm = M.LatentMechanism(lo, hi, mechanism=mech, epsilon=1.0,
                           delta=1e-6 if mech == "gaussian" else 0.0)
    z = np.linspace(-2, 2, 64)
    a, b = lm(z), lm(z)
    assert not np.array_equal(a.z, b.z)
    assert a.test_mode is False and b.test_mode is False
    assert a.sampler == f"opendp.measurements.make_{mech}"

    s1, s2, s3 = lm(z, test_seed=7), lm(z, test_seed=7), lm(z, test_seed=8)
    assert np.array_equal(s1.z, s2.z)
    assert not np.array_equal(s1.z, s3.z)
    assert s1.test_mode is True and "NOT DP" in s1.sampler
    assert s1.audit_fields()["test_mode"] is True and a.audit_fields()["test_mode"] is False


def test_test_seed_must_be_an_explicit_int(lap):
    z = np.zeros(lap.dim)
    for bad in (True, 1.5, "7", np.random.default_rng(0)):
        with pytest.raises(TypeError):
            M.add_noise(z, lap, test_seed=bad)


def test_audit_fields_hold_parameters_only(lap):
    fields = M.add_noise(np.zeros(lap.dim), lap).audit_fields()
    assert set(fields) == {"mechanism", "epsilon", "delta", "sensitivity", "noise_scale",
                           "dp_scope", "test_mode", "sampler"}
    assert all(isinstance(v, (str, float, bool)) for v in fields.values())


def test_released_vector_is_read_only(lap):
    out = M.add_noise(np.zeros(lap.dim), lap).z
    with pytest.raises(ValueError):
        out[0] = 0.0


# ----------------------------------------------------------------------------------------------
# clipping and sensitivity (exact arithmetic, so the check itself has no rounding)

finite = st.floats(allow_nan=False, allow_infinity=False)
anyfloat = st.floats(allow_nan=False)   # includes +-inf and huge values


@st.composite
def bounds_and_two_latents(draw):
    d = draw(st.integers(1, 8))
    pairs = draw(st.lists(st.tuples(finite, finite).filter(lambda t: t[0] != t[1]),
                          min_size=d, max_size=d))
    lo = np.array([min(p) for p in pairs])
    hi = np.array([max(p) for p in pairs])
    z1 = np.array(draw(st.lists(anyfloat, min_size=d, max_size=d)))
    z2 = np.array(draw(st.lists(anyfloat, min_size=d, max_size=d)))
    return lo, hi, z1, z2


@HYP
@given(bounds_and_two_latents())
def test_clipped_vectors_are_within_sensitivity(case):
    lo, hi, z1, z2 = case
    c1, c2 = M.clip(z1, lo, hi), M.clip(z2, lo, hi)
    assert np.all((lo <= c1) & (c1 <= hi)) and np.all((lo <= c2) & (c2 <= hi))
    diffs = [abs(Fraction(a) - Fraction(b)) for a, b in zip(c1, c2)]
    ranges = [Fraction(h) - Fraction(l) for l, h in zip(lo, hi)]
    try:
        l1 = M.l1_sensitivity(lo, hi)
    except ValueError:          # only when the exact sum does not fit in a float
        assert sum(ranges) > Fraction(np.finfo(float).max)
    else:
        assert sum(diffs) <= Fraction(l1)
        assert Fraction(l1) >= sum(ranges)              # rounded up, never down
    try:
        l2 = M.l2_sensitivity(lo, hi)
    except ValueError:
        assert sum(r * r for r in ranges) > Fraction(np.finfo(float).max)
    else:
        assert sum(x * x for x in diffs) <= Fraction(l2) ** 2
        assert Fraction(l2) ** 2 >= sum(r * r for r in ranges)


def test_sensitivity_is_attained_by_opposite_corners():
    lo, hi = np.array([-1.0, 0.0, 2.0]), np.array([1.0, 0.5, 5.0])
    assert M.l1_sensitivity(lo, hi) == 5.5
    assert M.l2_sensitivity(lo, hi) == pytest.approx(math.sqrt(4 + 0.25 + 9), rel=1e-15)
    c1, c2 = M.clip(np.full(3, -np.inf), lo, hi), M.clip(np.full(3, np.inf), lo, hi)
    assert np.abs(c1 - c2).sum() == 5.5
    mask = np.array([True, False, True])
    assert M.l1_sensitivity(lo, hi, mask) == 5.0


def test_clip_rejects_nan_and_bad_bounds():
    lo, hi = np.zeros(2), np.ones(2)
    with pytest.raises(ValueError, match="NaN"):
        M.clip(np.array([0.5, np.nan]), lo, hi)
    for bad_lo, bad_hi in [(np.ones(2), np.ones(2)), (np.array([0, np.inf]), np.array([1, 2])),
                           (np.array([0.0, 2.0]), np.array([1.0, 1.0]))]:
        with pytest.raises(ValueError):
            M.clip(np.zeros(2), bad_lo, bad_hi)
    with pytest.raises(ValueError, match="overflows"):
        M.l1_sensitivity(np.array([-1e308, -1e308]), np.array([1e308, 1e308]))


# ----------------------------------------------------------------------------------------------
# per-dimension split

moderate = st.floats(min_value=-1e6, max_value=1e6, allow_nan=False)


@st.composite
def moderate_bounds(draw):
    d = draw(st.integers(1, 64))
    lo = np.array(draw(st.lists(moderate, min_size=d, max_size=d)))
    width = np.array(draw(st.lists(st.floats(1e-3, 1e3), min_size=d, max_size=d)))
    return lo, lo + width


@HYP
@given(moderate_bounds(), st.floats(1e-3, 1e3))
def test_split_epsilon_sums_to_epsilon_and_equalises_scales(bounds, eps):
    lo, hi = bounds
    assume(np.all(lo < hi))
    e = M.split_epsilon(eps, lo, hi)
    assert math.fsum(e) == pytest.approx(eps, rel=1e-12)
    b = M.per_dimension_scales(e, lo, hi)
    # every dimension has the one L1 Laplace scale Delta1 / epsilon ...
    assert np.allclose(b, M.l1_sensitivity(lo, hi) / eps, rtol=1e-9, atol=0)
    # ... which is the scale calibrate_laplace draws with
    cal = M.calibrate("laplace", lo, hi, eps)
    assert np.allclose(b, cal.noise_scale, rtol=1e-9, atol=0)


# ----------------------------------------------------------------------------------------------
# calibration


@HYP
@given(st.floats(1e-3, 1e3), st.floats(1e-6, 1e6), st.integers(1, 512))
def test_laplace_scale_is_sensitivity_over_epsilon(eps, sens, dim):
    cal = M.calibrate_laplace(eps, sens, dim)
    assert cal.mechanism == "laplace" and cal.delta == 0.0 and cal.epsilon == eps
    assert cal.noise_scale >= cal.sensitivity / eps                     # never less noise
    assert cal.noise_scale == pytest.approx(cal.sensitivity / eps, rel=1e-12)
    # the effective sensitivity is the bound sensitivity plus a lattice slack of ~1e-12
    assert cal.bound_sensitivity == sens <= cal.sensitivity
    assert cal.sensitivity == pytest.approx(sens, rel=1e-12)
    assert cal.opendp_privacy <= eps                                   # OpenDP certifies it
    assert cal.noise_multiplier >= 1 / eps


KNOWN = [(0.1, 1e-5), (0.5, 1e-6), (1.0, 1e-5), (1.0, 1e-10), (2.0, 1e-6), (4.0, 1e-3),
         (8.0, 1e-5), (20.0, 1e-8)]


@pytest.mark.parametrize("eps,delta", KNOWN)
def test_gaussian_sigma_matches_independent_certified_formula(eps, delta):
    cal = M.calibrate_gaussian(eps, delta, 1.0, dim=128)
    # the smallest sigma whose zCDP certificate converts to delta(eps) <= delta (to 1e-6)
    assert cal.noise_scale == pytest.approx(indep_certified_sigma(eps, delta), rel=1e-6)
    rho = cal.sensitivity ** 2 / (2 * cal.noise_scale ** 2)
    assert indep_cdp_delta(rho, eps) <= delta * (1 + 1e-6)
    assert cal.opendp_zcdp_delta <= delta
    # the continuous (analytic) curve holds a fortiori; the certified sigma is above it
    assert indep_delta(eps, cal.noise_scale, cal.sensitivity) <= delta
    assert cal.noise_scale > cal.sensitivity * indep_sigma(eps, delta)
    # and dp-accounting's own inverse agrees that the event spends no more than epsilon
    eps_back = dp_accounting.get_epsilon_gaussian(cal.noise_multiplier, delta)
    assert eps_back <= eps * (1 + 1e-9)


def test_zcdp_conversion_known_answer():
    # OpenDP's own known answer (rust zCDP_to_approxDP test): scale 4, d_in 1, rho = 1/32
    # -> delta(0.6880024554878085) = 1e-3. Same through deid's helper (d=1, no rounding)
    # and through the independent formula.
    assert indep_cdp_delta(1 / 32, 0.6880024554878085) == pytest.approx(1e-3, rel=1e-9)
    got = M._certified_gaussian_delta(1, 4.0, -1074, 1.0, 0.6880024554878085)
    assert got == pytest.approx(1e-3, rel=1e-9)


def test_gaussian_known_answer_certified_vs_balle_wang():
    # eps=1, delta=1e-5, Delta2=1: analytic continuous sigma (Balle & Wang 2018) 3.7306;
    # certified for the discrete Gaussian (zCDP -> approx DP) 4.04513 (+8.4%); classical 4.84
    cal = M.calibrate_gaussian(1.0, 1e-5, 1.0, dim=1)
    assert indep_sigma(1.0, 1e-5) == pytest.approx(3.7306, rel=1e-4)
    assert cal.noise_scale == pytest.approx(4.04513, rel=1e-5)
    assert cal.noise_scale < math.sqrt(2 * math.log(1.25 / 1e-5))


@pytest.mark.parametrize("eps", [0.1, 0.5, 1.0, 3.0, 10.0])
@pytest.mark.parametrize("sigma", [0.5, 1.0, 2.0, 5.0, 20.0, 100.0])
def test_certified_delta_is_the_conversion_and_never_below_the_continuous_curve(eps, sigma):
    """On a grid of (eps, sigma) at sensitivity 1: OpenDP's certified delta (the bound deid
    reports) equals the independent conversion and is >= the exact continuous-Gaussian delta
    (it can never claim more than the analytic curve)."""
    k = -60
    got = M._certified_gaussian_delta(8, sigma, k, 1.0, eps)
    slack = M._rounding_slack(k, 8, 2)
    rho = (1.0 + float(slack)) ** 2 / (2 * sigma ** 2)
    assert got == pytest.approx(indep_cdp_delta(rho, eps), rel=1e-6, abs=1e-300)
    assert got >= indep_delta(eps, sigma, 1.0) * (1 - 1e-9)


@pytest.mark.parametrize("eps,delta", KNOWN)
def test_reported_delta_is_at_least_the_certified_delta(eps, delta):
    for sens, dim in ((1.0, 1), (3.0, 32), (0.01, 128)):
        cal = M.calibrate_gaussian(eps, delta, sens, dim=dim)
        assert cal.delta == delta
        fresh = M._certified_gaussian_delta(dim, cal.noise_scale, cal.granularity_exponent,
                                            cal.bound_sensitivity, eps)
        assert fresh == cal.opendp_zcdp_delta <= cal.delta
        # minimal: 1e-6 less sigma is not certified
        below = M._certified_gaussian_delta(dim, cal.noise_scale * (1 - 1e-6), cal.granularity_exponent,
                                            cal.bound_sensitivity, eps)
        assert below > delta * (1 - 1e-9)


@pytest.mark.parametrize("eps,delta", KNOWN)
def test_certified_delta_of_a_charge_covers_the_release(eps, delta):
    """certified_gaussian_delta (what the accountant checks a Gaussian charge with) at the
    charged sensitivity Delta2_eff: the independent conversion at rho = Delta2_eff^2/(2 sigma^2),
    at least the release's own certified delta, and within the reported delta."""
    for sens, dim in ((1.0, 1), (3.0, 32), (0.01, 128)):
        cal = M.calibrate_gaussian(eps, delta, sens, dim=dim)
        got = M.certified_gaussian_delta(eps, cal.noise_scale, cal.sensitivity)
        assert cal.opendp_zcdp_delta <= got <= delta
        rho = (cal.sensitivity / cal.noise_scale) ** 2 / 2
        assert got == pytest.approx(indep_cdp_delta(rho, eps), rel=1e-6)


@HYP
@given(st.floats(0.05, 20.0), st.floats(1e-10, 1e-2), st.floats(1e-3, 1e3))
def test_gaussian_calibration_meets_delta(eps, delta, sens):
    cal = M.calibrate_gaussian(eps, delta, sens, dim=64)
    assert cal.opendp_zcdp_delta <= delta
    assert indep_cdp_delta(cal.sensitivity ** 2 / (2 * cal.noise_scale ** 2), eps) <= delta * (1 + 1e-6)
    assert indep_delta(eps, cal.noise_scale, cal.sensitivity) <= delta
    assert M.analytic_gaussian_delta(eps, cal.noise_scale, cal.sensitivity) <= delta
    assert cal.noise_scale == pytest.approx(sens * indep_certified_sigma(eps, delta), rel=1e-6)
    # OpenDP's zCDP certificate is consistent with the sensitivity we calibrated for
    assert cal.opendp_privacy <= cal.sensitivity ** 2 / (2 * cal.noise_scale ** 2) * (1 + 1e-9)


def test_gaussian_sigma_decreases_as_epsilon_grows():
    sig = [M.calibrate_gaussian(e, 1e-6, 3.0, dim=32).noise_scale
           for e in (0.05, 0.1, 0.3, 1.0, 2.0, 5.0, 10.0, 30.0)]
    assert all(a > b for a, b in zip(sig, sig[1:]))


def test_calibration_rejects_bad_parameters():
    with pytest.raises(ValueError):
        M.calibrate_gaussian(1.0, 0.0, 1.0, 4)            # Gaussian cannot be pure DP
    with pytest.raises(ValueError):
        M.calibrate("laplace", np.zeros(2), np.ones(2), 1.0, delta=1e-6)
    for eps in (0.0, -1.0, math.inf, math.nan):
        with pytest.raises(ValueError):
            M.calibrate_laplace(eps, 1.0, 4)
    with pytest.raises(ValueError):
        M.calibrate("exponential", np.zeros(2), np.ones(2), 1.0)


def test_dp_events_for_the_accountant():
    from deid.privacy.accountant import Charge

    lap = M.calibrate_laplace(0.5, 2.0, 8)
    assert Charge.of(lap) == Charge.of(lap.release())
    ev = Charge.of(lap.release()).dp_event()
    assert isinstance(ev, dp_accounting.LaplaceDpEvent) and ev.noise_multiplier >= 2.0
    gau = M.calibrate_gaussian(1.0, 1e-6, 2.0, 8)
    ev = Charge.of(gau.release()).dp_event()
    # charged as what is proved for the discrete Gaussian: rho-zCDP, not the continuous PLD
    assert isinstance(ev, dp_accounting.ZCDpEvent) and ev.xi == 0.0
    assert ev.rho >= gau.opendp_privacy
    assert ev.rho == pytest.approx(gau.sensitivity ** 2 / (2 * gau.noise_scale ** 2), rel=1e-12)
    acc = dp_accounting.rdp.RdpAccountant()
    acc.compose(ev)
    assert acc.get_epsilon(1e-6) <= 1.0 * (1 + 1e-6)


# ----------------------------------------------------------------------------------------------
# subsets of dimensions and scope


def test_scope_rule():
    all_on = np.ones(4, dtype=bool)
    part = np.array([True, True, False, False])
    assert M.scope_for(None, replaced=False) == "face-latent"
    assert M.scope_for(all_on, replaced=False) == "face-latent"
    assert M.scope_for(part, replaced=True) == "face-latent"
    assert M.scope_for(part, replaced=False) == "heuristic"


def test_subset_noise_replaces_the_rest_with_public_values():
    d = 6
    lo, hi = -np.ones(d), np.ones(d)
    mask = np.array([True, True, True, False, False, False])
    mean = np.full(d, 0.25)
    z = np.array([5.0, -5.0, 0.1, 0.9, -0.9, 0.3])

    replaced = M.LatentMechanism(lo, hi, mechanism="laplace", epsilon=1.0, noise_dims=mask,
                                 public_values=mean)
    assert replaced.dp_scope == "face-latent"
    assert replaced.calibrated.dim == 3
    assert replaced.calibrated.bound_sensitivity == M.l1_sensitivity(lo, hi, mask) == 6.0
    out = replaced(z)
    assert out.dp_scope == "face-latent"
    assert np.array_equal(out.z[~mask], mean[~mask])        # nothing of z survives there

    passthrough = M.LatentMechanism(lo, hi, mechanism="laplace", epsilon=1.0, noise_dims=mask)
    out = passthrough(z)
    assert out.dp_scope == "heuristic" and out.audit_fields()["dp_scope"] == "heuristic"
    assert np.array_equal(out.z[~mask], M.clip(z, lo, hi)[~mask])


def test_latent_mechanism_clips_before_noise():
    """A huge latent cannot push the release: with test mode, output - noise is the clipped z."""
    lo, hi = -np.ones(3), np.ones(3)
    lm = M.LatentMechanism(lo, hi, mechanism="laplace", epsilon=1.0)
    big = lm(np.array([1e300, -np.inf, 0.5]), test_seed=3)
    ref = lm(np.array([1.0, -1.0, 0.5]), test_seed=3)
    assert np.array_equal(big.z, ref.z)


def test_gaussian_reports_opendp_end_to_end_delta():
    """The reported delta is the one OpenDP's proofs (zCDP -> approx DP) certify for the
    discrete Gaussian; the continuous analytic curve at the same sigma is far below it."""
    cal = M.calibrate_gaussian(1.0, 1e-5, 1.0, dim=64)
    assert cal.delta * (1 - 1e-6) < cal.opendp_zcdp_delta <= cal.delta
    assert M.analytic_gaussian_delta(1.0, cal.noise_scale, cal.sensitivity) < cal.delta / 2
    assert M.calibrate_laplace(1.0, 1.0, 4).opendp_zcdp_delta is None


def _child_draw(cal, q):
    q.put(np.asarray(M.add_noise(np.zeros(cal.dim), cal).z).tolist())


def test_forked_workers_do_not_share_the_noise_stream(lap):
    """Ray/multiprocessing workers fork from a parent whose CSPRNG is already warm: OpenSSL
    reseeds on fork, so children and parent draw different noise."""
    import multiprocessing as mp

    cal = M.calibrate_laplace(1.0, 1.0, dim=16)
    M.add_noise(np.zeros(cal.dim), cal)                 # warm the parent's DRBG before forking
    ctx = mp.get_context("fork")
    q = ctx.Queue()
    procs = [ctx.Process(target=_child_draw, args=(cal, q)) for _ in range(2)]
    for p in procs:
        p.start()
    kids = [q.get(timeout=30) for _ in procs]
    for p in procs:
        p.join(timeout=30)
    mine = np.asarray(M.add_noise(np.zeros(cal.dim), cal).z).tolist()
    assert kids[0] != kids[1] and mine not in kids

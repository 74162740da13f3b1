"""Known answers for deid.privacy.accountant: pure-epsilon sums, the analytic Gaussian
mechanism (computed here independently), Gaussian composition, and properties of compose."""

from __future__ import annotations

import math

import dp_accounting
import pytest
from dp_accounting.pld import accountant as pld_accountant
from dp_accounting.pld import common as pld_common
from dp_accounting.pld import pld_privacy_accountant
from dp_accounting.rdp import rdp_privacy_accountant
from hypothesis import HealthCheck, example, given, settings
from hypothesis import strategies as st
from scipy.stats import norm

from deid.privacy import accountant
from deid.privacy.accountant import Charge, compose, would_exceed

# PLD discretisation is pessimistic: an epsilon from the accountant may sit above the exact
# one by a few discretisation steps, never below.
PLD_TOL = 2e-3


def laplace(eps: float, sensitivity: float = 1.0) -> Charge:
    return Charge("laplace", eps, 0.0, sensitivity, sensitivity / eps)


def bw_delta(eps: float, sigma: float, sens: float = 1.0) -> float:
    """Balle & Wang (2018), Thm 8: the exact delta(eps) of the Gaussian mechanism."""
    a, b = sens / (2 * sigma), eps * sigma / sens
    return norm.cdf(a - b) - math.exp(eps) * norm.cdf(-a - b)


def bw_epsilon(sigma: float, delta: float, sens: float = 1.0) -> float:
    """Invert bw_delta by bisection (independent of dp_accounting)."""
    lo, hi = 0.0, 1.0
    while bw_delta(hi, sigma, sens) > delta:
        lo, hi = hi, hi * 2
    for _ in range(200):
        mid = (lo + hi) / 2
        if bw_delta(mid, sigma, sens) > delta:
            lo = mid
        else:
            hi = mid
    return hi


def gaussian(nm: float, delta: float = 1e-5, sensitivity: float = 1.0) -> Charge:
    """A Gaussian release whose stated epsilon is the exact one for its noise (+1e-9 rel)."""
    return Charge("gaussian", max(bw_epsilon(nm, delta) * (1 + 1e-9), 1e-9), delta, sensitivity, nm * sensitivity)


# ------------------------------------------------------------------ pure epsilon (Laplace)
@pytest.mark.parametrize("eps", [[1.0] * 3, [0.1] * 10, [0.3, 0.7, 1.25, 0.05], [1e-3] * 7 + [2.5], [0.12345, 4.2]])
def test_laplace_releases_sum_exactly(eps):
    total, delta = compose([laplace(e) for e in eps])
    assert delta == 0.0
    assert abs(total - math.fsum(eps)) <= 1e-9
    # pure histories stay pure even when a target delta is offered
    assert compose([laplace(e) for e in eps], target_delta=1e-5) == (total, 0.0)


def test_laplace_epsilon_is_sensitivity_over_scale_whatever_the_units():
    c = Charge("laplace", 0.5, 0.0, sensitivity=8.0, noise_scale=16.0)
    assert compose([c, c]) == (1.0, 0.0)


def test_dp_accounting_accountants_cannot_state_pure_dp():
    """Why the pure sum is not read from an accountant: both report inf at delta=0."""
    events = [dp_accounting.LaplaceDpEvent(1.0)] * 3
    pld = pld_privacy_accountant.PLDAccountant()
    rdp = rdp_privacy_accountant.RdpAccountant()
    for acc in (pld, rdp):
        acc.compose(dp_accounting.ComposedDpEvent(events))
        assert acc.get_epsilon(0.0) == math.inf


@pytest.mark.parametrize("eps,k", [(1.0, 3), (0.25, 8), (0.7, 5)])
def test_laplace_sum_is_the_optimal_composition_at_delta_zero(eps, k):
    """Kairouz-Oh-Viswanath optimal composition (dp_accounting's implementation) at delta=0
    is k*eps: the sum is tight, not merely an upper bound."""
    optimal = pld_accountant.advanced_composition(pld_common.DifferentialPrivacyParameters(eps, 0.0), k, 0.0)
    assert optimal == pytest.approx(k * eps, abs=1e-12)
    assert compose([laplace(eps)] * k)[0] == pytest.approx(optimal, abs=1e-9)


def test_pld_of_laplace_history_never_exceeds_the_pure_sum():
    """At any delta > 0 the PLD accountant's epsilon is below the pure sum (which holds
    at every delta) and close to it for tiny delta."""
    eps = [1.0, 0.5, 0.5]
    pld = pld_privacy_accountant.PLDAccountant()
    pld.compose(dp_accounting.ComposedDpEvent([dp_accounting.LaplaceDpEvent(1 / e) for e in eps]))
    for d in (1e-3, 1e-6, 1e-9):
        assert pld.get_epsilon(d) <= sum(eps) + 3 * accountant.VALUE_DISCRETIZATION_INTERVAL
    assert pld.get_epsilon(1e-12) > sum(eps) - 0.05


# ------------------------------------------------------------------ Gaussian
@pytest.mark.parametrize("nm,delta", [(0.8, 1e-5), (1.0, 1e-6), (2.0, 1e-5), (5.0, 1e-3), (10.0, 1e-7)])
def test_single_gaussian_matches_analytic_gaussian_mechanism(nm, delta):
    # sensitivity 3 with sigma 3*nm: accounting must use noise_scale / sensitivity
    charge = gaussian(nm, delta, sensitivity=3.0)
    eps, d = compose([charge], target_delta=delta)
    assert d == delta
    exact = bw_epsilon(nm, delta)
    # dp_accounting's own analytic answer agrees with the independent formula
    assert dp_accounting.get_epsilon_gaussian(nm, delta) == pytest.approx(exact, rel=1e-7, abs=1e-9)
    # the PLD answer is an upper bound, within discretisation of the exact one
    assert exact - 1e-9 <= eps <= exact + PLD_TOL
    # and it is a true statement: the exact delta at the reported epsilon is within delta
    assert bw_delta(eps, nm) <= delta * (1 + 1e-6)


def test_gaussian_is_reported_at_the_target_delta():
    c = gaussian(2.0, 1e-5)
    e1, _ = compose([c], target_delta=1e-5)
    e2, d2 = compose([c], target_delta=1e-7)
    assert d2 == 1e-7 and e2 > e1
    assert e2 == pytest.approx(bw_epsilon(2.0, 1e-7), abs=PLD_TOL)


@pytest.mark.parametrize("k,nm", [(4, 4.0), (9, 6.0), (2, 1.5)])
def test_k_gaussians_compose_like_one_with_sigma_over_sqrt_k(k, nm):
    delta = 1e-5
    # the same noise multiplier from different (sensitivity, sigma) pairs
    charges = [gaussian(nm, delta, sensitivity=s) for s in [0.5, 1.0, 2.0, 3.0] * k][:k]
    eps, _ = compose(charges, target_delta=delta)
    one, _ = compose([gaussian(nm / math.sqrt(k), delta)], target_delta=delta)
    assert eps == pytest.approx(one, abs=PLD_TOL)
    assert eps == pytest.approx(bw_epsilon(nm / math.sqrt(k), delta), abs=PLD_TOL)


def test_heterogeneous_gaussians_compose_like_one_gaussian():
    """Gaussian composition in general: sigma^-2 add up (Dong, Roth & Su 2019, mu-GDP)."""
    nms = [2.0, 3.0, 6.0]
    eff = 1 / math.sqrt(sum(1 / s**2 for s in nms))
    eps, _ = compose([gaussian(s) for s in nms], target_delta=1e-5)
    assert eps == pytest.approx(bw_epsilon(eff, 1e-5), abs=PLD_TOL)
    assert eps >= bw_epsilon(eff, 1e-5) - 1e-9


def test_gaussian_history_needs_a_target_delta():
    with pytest.raises(ValueError, match="target_delta"):
        compose([gaussian(2.0)])
    assert compose([gaussian(2.0)], target_delta=0.0)[0] == math.inf


# ------------------------------------------------------------------ mixed
def test_mixed_history_is_one_pld_bounded_by_basic_composition():
    lap = [laplace(0.5), laplace(0.5)]
    g = gaussian(3.0, 1e-5)
    eps, delta = compose([*lap, g], target_delta=1e-5)
    assert delta == 1e-5
    g_alone = bw_epsilon(3.0, 1e-5)
    assert eps >= 1.0                          # never below the pure part already reported
    assert eps >= g_alone - 1e-9                # nor below the Gaussian alone
    assert eps <= 1.0 + g_alone + PLD_TOL       # basic composition is an upper bound


def test_mixed_reports_joint_pld_epsilon_when_tighter():
    lap = [laplace(0.1)] * 10
    g = gaussian(2.0, 1e-5)
    eps, _ = compose([*lap, g], target_delta=1e-5)
    pld = pld_privacy_accountant.PLDAccountant()
    pld.compose(dp_accounting.ComposedDpEvent([c.dp_event() for c in [*lap, g]]))
    assert eps == pytest.approx(pld.get_epsilon(1e-5), abs=1e-9)
    assert eps < 1.0 + bw_epsilon(2.0, 1e-5) - 0.1  # tighter than summing the parts


def test_a_weak_gaussian_never_lowers_a_pure_history():
    """Joint PLD at delta > 0 alone would report less than the pure sum already reported
    for this subject; the reported epsilon must not go down."""
    lap = [laplace(0.1)] * 30
    weak = gaussian(50.0, 1e-5)
    pld = pld_privacy_accountant.PLDAccountant()
    pld.compose(dp_accounting.ComposedDpEvent([c.dp_event() for c in [*lap, weak]]))
    assert pld.get_epsilon(1e-5) < 2.5  # the situation this test is about
    assert compose(lap) == (3.0, 0.0)
    assert compose([*lap, weak], target_delta=1e-5)[0] >= 3.0


def test_empty_history():
    assert compose([]) == (0.0, 0.0)
    assert compose([], target_delta=1e-5) == (0.0, 0.0)


# ------------------------------------------------------------------ charges must be true
def test_charge_refuses_claims_stronger_than_its_noise():
    with pytest.raises(ValueError, match="more than the stated"):
        Charge("laplace", 0.5, 0.0, sensitivity=1.0, noise_scale=1.0)  # b=1 gives eps 1
    with pytest.raises(ValueError, match="more than the stated"):
        Charge("gaussian", 0.5, 1e-5, sensitivity=1.0, noise_scale=1.0)  # sigma=1 gives eps ~4.4
    with pytest.raises(ValueError, match="delta must be 0"):
        Charge("laplace", 1.0, 1e-5, 1.0, 1.0)
    with pytest.raises(ValueError, match="0 < delta < 1"):
        Charge("gaussian", 10.0, 0.0, 1.0, 1.0)
    with pytest.raises(ValueError, match="mechanism"):
        Charge("exponential", 1.0, 0.0, 1.0, 1.0)  # type: ignore[arg-type]
    for bad in (dict(epsilon=0.0), dict(sensitivity=-1.0), dict(noise_scale=0.0), dict(epsilon=math.nan)):
        with pytest.raises(ValueError):
            Charge(**{"mechanism": "laplace", "epsilon": 1.0, "delta": 0.0, "sensitivity": 1.0, "noise_scale": 1.0, **bad})
    # more noise than the claim needs is fine (the claim is an upper bound)
    Charge("laplace", 1.0, 0.0, sensitivity=1.0, noise_scale=2.0)


# ------------------------------------------------------------------ caps
def test_would_exceed_is_exact_at_the_boundary():
    one = laplace(1.0)
    assert not would_exceed([one, one], [one], max_epsilon=3.0, max_delta=0.0)
    assert would_exceed([one, one, one], [one], max_epsilon=3.0, max_delta=0.0)
    assert would_exceed([], [laplace(3.0 + 1e-12)], max_epsilon=3.0, max_delta=0.0)
    tenths = [laplace(0.1)] * 9
    assert not would_exceed(tenths, [laplace(0.1)], max_epsilon=1.0, max_delta=0.0)


def test_would_exceed_gaussian_needs_delta_room():
    g = gaussian(2.0, 1e-5)
    eps = compose([g], target_delta=1e-5)[0]
    assert would_exceed([], [g], max_epsilon=100.0, max_delta=0.0)  # no delta budget: never
    assert not would_exceed([], [g], max_epsilon=eps, max_delta=1e-5)
    assert would_exceed([g], [g], max_epsilon=eps, max_delta=1e-5)


# ------------------------------------------------------------------ properties
_lap = st.builds(
    lambda e, s: laplace(e, s),
    st.floats(0.05, 1.5), st.sampled_from([0.5, 1.0, 2.0]),
)
_gauss = st.builds(
    lambda nm, d: Charge("gaussian", max(dp_accounting.get_epsilon_gaussian(nm, d) * (1 + 1e-6), 1e-6), d, 1.0, nm),
    st.floats(1.0, 8.0), st.sampled_from([1e-7, 1e-5, 1e-3]),
)
_charge = st.one_of(_lap, _gauss)
_prop = settings(max_examples=15, deadline=None, suppress_health_check=[HealthCheck.too_slow], derandomize=True)


@_prop
@given(st.lists(_charge, max_size=3), _charge, st.sampled_from([1e-6, 1e-5]))
@example([laplace(0.1)] * 30, gaussian(50.0, 1e-5), 1e-5)
def test_adding_a_charge_never_lowers_epsilon(history, extra, delta):
    eps0, d0 = compose(history, target_delta=delta)
    eps1, d1 = compose([*history, extra], target_delta=delta)
    assert eps1 >= eps0
    assert d1 >= d0
    assert eps1 > 0


@_prop
@given(st.lists(_charge, min_size=2, max_size=4).flatmap(lambda h: st.tuples(st.just(h), st.permutations(h))))
def test_composition_is_order_independent(pair):
    history, shuffled = pair
    a = compose(history, target_delta=1e-5)
    accountant._compose_canonical.cache_clear()  # recompute from scratch, not from the cache
    b = compose(shuffled, target_delta=1e-5)
    assert a == b

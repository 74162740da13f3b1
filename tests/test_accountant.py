"""Known answers for deid.privacy.accountant: pure-epsilon sums, Gaussian charges checked
against OpenDP's certificate for the discrete Gaussian, RDP composition (zCDP for Gaussian,
the exact Laplace curve) cross-checked with dp-accounting used directly and with an
independent conversion, basic composition, and properties of compose."""

from __future__ import annotations

import math
from fractions import Fraction

import dp_accounting
import pytest
from dp_accounting.pld import accountant as pld_accountant
from dp_accounting.pld import common as pld_common
from dp_accounting.pld import pld_privacy_accountant
from dp_accounting.rdp import rdp_privacy_accountant
from hypothesis import HealthCheck, assume, example, given, settings
from hypothesis import strategies as st

from deid.privacy import accountant
from deid.privacy import mechanisms as M
from deid.privacy.accountant import Charge, compose, would_exceed


def laplace(eps: float, sensitivity: float = 1.0) -> Charge:
    return Charge("laplace", eps, 0.0, sensitivity, sensitivity / eps)


def gaussian(eps: float, delta: float = 1e-5, sensitivity: float = 1.0, dim: int = 8) -> Charge:
    """The charge of one calibrated discrete Gaussian release (what the pipeline charges)."""
    return Charge.of(M.calibrate_gaussian(eps, delta, sensitivity, dim))


def rdp_direct(events, delta: float) -> float:
    """dp-accounting used directly: one RdpAccountant, default orders, these events."""
    acc = rdp_privacy_accountant.RdpAccountant()
    acc.compose(dp_accounting.ComposedDpEvent(list(events)))
    return acc.get_epsilon(delta)


def zcdp_epsilon(rho: float, delta: float, orders=rdp_privacy_accountant.DEFAULT_RDP_ORDERS) -> float:
    """Independent of dp-accounting's code: rho-zCDP is RDP eps(a) = rho * a; the conversion
    of Canonne, Kamath & Steinke 2020 (Prop. 12, arXiv v4) at each order a, minimised."""
    return min(rho * a + math.log1p(-1 / a) - (math.log(delta) + math.log(a)) / (a - 1)
               for a in orders if a > 1.01)


def rho_of(c: Charge) -> float:
    return c.sensitivity ** 2 / (2 * c.noise_scale ** 2)


def events_of(charges):
    """Events built here from the facts, not by deid."""
    out = []
    for c in charges:
        if c.mechanism == "laplace":
            out.append(dp_accounting.LaplaceDpEvent(c.noise_scale / c.sensitivity))
        else:
            out.append(dp_accounting.ZCDpEvent(rho_of(c)))
    return out


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


def test_laplace_event_never_understates_the_laplace_epsilon():
    """dp-accounting computes epsilon = 1 / noise_multiplier in floats: deid's multiplier is
    rounded so that this is never below sensitivity / noise_scale."""
    for s, b in [(1.0, 3.0), (971.2, 121.4), (0.1, 0.3), (7.0, 1e-3), (3.0, 7.0)]:
        ev = Charge("laplace", s / b * (1 + 1e-9), 0.0, s, b).dp_event()
        assert isinstance(ev, dp_accounting.LaplaceDpEvent)
        assert Fraction(1 / ev.noise_multiplier) >= Fraction(s) / Fraction(b)
        assert ev.noise_multiplier == pytest.approx(b / s, rel=1e-15)


# ------------------------------------------------------------------ Gaussian charges are checked against OpenDP
_GRID = [(1.0, 1e-5, 1.0, 8), (8.0, 1e-6, 119.5, 128), (0.1, 1e-5, 2.0, 32), (3.0, 1e-7, 5.0, 64), (0.5, 1e-3, 0.25, 1)]


@pytest.mark.parametrize("eps,delta,sens,dim", _GRID)
def test_calibrated_gaussian_charges_are_accepted_and_certified(eps, delta, sens, dim):
    cal = M.calibrate_gaussian(eps, delta, sens, dim)
    c = Charge.of(cal)
    # the check is OpenDP's chain at the charged sensitivity, and it is within the claim
    certified = M.certified_gaussian_delta(c.epsilon, c.noise_scale, c.sensitivity)
    assert cal.opendp_zcdp_delta <= certified <= delta
    # the charge's rho is at least OpenDP's own for the release, and is Delta2_eff^2 / (2 sigma^2)
    assert c.rho >= cal.opendp_privacy
    assert Fraction(c.rho) >= Fraction(c.sensitivity) ** 2 / (2 * Fraction(c.noise_scale) ** 2)
    assert c.rho == pytest.approx(rho_of(c), rel=1e-15)
    ev = c.dp_event()
    assert isinstance(ev, dp_accounting.ZCDpEvent) and ev.rho == c.rho and ev.xi == 0.0
    # a claim a little stronger than the certificate is refused
    with pytest.raises(ValueError, match="more than the stated"):
        Charge("gaussian", eps * (1 - 1e-6), delta, c.sensitivity, c.noise_scale)
    with pytest.raises(ValueError, match="more than the stated"):
        Charge("gaussian", eps, delta * (1 - 1e-6), c.sensitivity, c.noise_scale)


@pytest.mark.parametrize("nm,delta", [(4.0, 1e-5), (1.0, 1e-6), (0.7, 1e-5), (20.0, 1e-3)])
def test_continuous_gaussian_claims_are_refused(nm, delta):
    """The analytic (continuous) Gaussian epsilon is not proved for the discrete Gaussian:
    a charge stating it is refused; OpenDP's certified epsilon is larger."""
    continuous = dp_accounting.get_epsilon_gaussian(nm, delta)
    with pytest.raises(ValueError, match="more than the stated"):
        Charge("gaussian", continuous * (1 + 1e-6), delta, 3.0, 3.0 * nm)
    assert M.certified_gaussian_delta(continuous * (1 + 1e-6), 3.0 * nm, 3.0) > delta


def test_charge_refuses_claims_stronger_than_its_noise():
    with pytest.raises(ValueError, match="more than the stated"):
        Charge("laplace", 0.5, 0.0, sensitivity=1.0, noise_scale=1.0)  # b=1 gives eps 1
    with pytest.raises(ValueError, match="more than the stated"):
        Charge("gaussian", 0.5, 1e-5, sensitivity=1.0, noise_scale=1.0)  # sigma=1 gives eps ~5
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
    Charge("gaussian", 1.0, 1e-5, sensitivity=1.0, noise_scale=10.0)


# ------------------------------------------------------------------ Gaussian composition
@pytest.mark.parametrize("eps,delta,sens,dim", _GRID)
def test_single_gaussian_composes_to_at_most_its_claim(eps, delta, sens, dim):
    c = gaussian(eps, delta, sens, dim)
    got, d = compose([c], target_delta=delta)
    assert d == delta
    assert got <= c.epsilon
    # here the claim itself is the binding bound: RDP on dp-accounting's orders is looser
    assert rdp_direct([dp_accounting.ZCDpEvent(rho_of(c))], delta) >= c.epsilon
    assert got == c.epsilon


@pytest.mark.parametrize("k", [2, 3, 10, 100])
@pytest.mark.parametrize("eps,delta", [(1.0, 1e-5), (8.0, 1e-6), (0.1, 1e-5)])
def test_k_gaussians_are_rdp_of_zcdp_events(k, eps, delta):
    """k releases at the ledger's delta: basic composition needs k*delta > delta, so the
    answer is RDP, the same as dp-accounting with the same events, and the same as one
    zCDP release with k*rho (independent conversion)."""
    c = gaussian(eps, delta)
    got, d = compose([c] * k, target_delta=delta)
    assert d == delta
    direct = rdp_direct([dp_accounting.ZCDpEvent(rho_of(c))] * k, delta)
    assert got == pytest.approx(direct, rel=1e-12)
    assert got == pytest.approx(zcdp_epsilon(k * rho_of(c), delta), rel=1e-12)
    assert got > c.epsilon


def test_known_answers_three_gaussians():
    """Pinned numbers (docs/privacy.md): three calibrated releases, sensitivity-independent."""
    g1 = gaussian(1.0, 1e-5)
    assert compose([g1] * 3, target_delta=1e-5)[0] == pytest.approx(1.8245604793, abs=1e-8)
    assert compose([g1] * 3, target_delta=3e-5)[0] == pytest.approx(1.7110468, abs=1e-6)
    g8 = gaussian(8.0, 1e-6, 119.5, 128)
    assert compose([g8] * 3, target_delta=1e-6)[0] == pytest.approx(15.4242061, abs=1e-6)


def test_heterogeneous_gaussians_add_their_rho():
    charges = [Charge("gaussian", 30.0, 1e-5, 1.0, s) for s in (0.5, 1.0, 2.0, 3.0)]
    got, _ = compose(charges, target_delta=1e-6)
    total = sum(rho_of(c) for c in charges)
    assert got == pytest.approx(rdp_direct([dp_accounting.ZCDpEvent(total)], 1e-6), rel=1e-12)
    assert got == pytest.approx(zcdp_epsilon(total, 1e-6), rel=1e-12)


def test_continuous_pld_is_not_what_is_reported():
    """The old answer (continuous GaussianDpEvent in a PLD accountant) is below what is
    proved for the discrete Gaussian; deid reports the zCDP/RDP bound."""
    g = gaussian(1.0, 1e-5)
    pld = pld_privacy_accountant.PLDAccountant()
    pld.compose(dp_accounting.SelfComposedDpEvent(dp_accounting.GaussianDpEvent(g.noise_multiplier), 3))
    continuous = pld.get_epsilon(1e-5)
    got, _ = compose([g] * 3, target_delta=1e-5)
    assert continuous == pytest.approx(1.677, abs=2e-3)
    assert got == pytest.approx(rdp_direct([dp_accounting.ZCDpEvent(rho_of(g))] * 3, 1e-5), rel=1e-12)
    assert got > continuous + 0.1
    # one release: the continuous curve would even report less than the calibrated claim
    pld1 = pld_privacy_accountant.PLDAccountant()
    pld1.compose(dp_accounting.GaussianDpEvent(g.noise_multiplier))
    assert pld1.get_epsilon(1e-5) < 0.92 < compose([g], target_delta=1e-5)[0] == g.epsilon


def test_gaussian_is_reported_at_the_target_delta():
    c = gaussian(1.0, 1e-5)
    e1, _ = compose([c], target_delta=1e-5)
    e2, d2 = compose([c], target_delta=1e-7)
    assert d2 == 1e-7 and e2 > e1
    # below its own delta the claim is no bound: RDP alone
    assert e2 == pytest.approx(rdp_direct([dp_accounting.ZCDpEvent(rho_of(c))], 1e-7), rel=1e-12)
    # above it, RDP may beat the claim
    e3, _ = compose([c], target_delta=1e-3)
    assert e3 == pytest.approx(min(c.epsilon, rdp_direct([dp_accounting.ZCDpEvent(rho_of(c))], 1e-3)), rel=1e-12)
    assert e3 < c.epsilon


def test_gaussian_history_needs_a_target_delta():
    with pytest.raises(ValueError, match="target_delta"):
        compose([gaussian(1.0)])
    assert compose([gaussian(1.0)], target_delta=0.0)[0] == math.inf


def test_basic_composition_only_when_the_deltas_fit():
    g = gaussian(1.0, 1e-5)
    two = ((g, 2),)
    assert accountant.basic_epsilon(two, 2e-5) == 2.0
    assert accountant.basic_epsilon(two, math.nextafter(2e-5, 0.0)) == math.inf
    # deltas are compared exactly: three float 1e-5 sum to a little more than the float 3e-5
    assert Fraction(1e-5) * 3 > Fraction(3e-5)
    assert accountant.basic_epsilon(((g, 3),), 3e-5) == math.inf
    # two releases at a target that fits both: min(RDP, 2 eps)
    got, _ = compose([g, g], target_delta=2e-5)
    assert got == min(2.0, rdp_direct([dp_accounting.ZCDpEvent(rho_of(g))] * 2, 2e-5))


# ------------------------------------------------------------------ mixed
def test_mixed_history_known_answer():
    lap = [laplace(0.5), laplace(0.5)]
    g = gaussian(1.0, 1e-5)
    got, delta = compose([*lap, g], target_delta=1e-5)
    assert delta == 1e-5
    rdp = rdp_direct(events_of([*lap, g]), 1e-5)
    assert rdp == pytest.approx(1.91840773, abs=1e-7)
    assert got == pytest.approx(min(rdp, 2.0), rel=1e-12)       # RDP beats basic (2.0) here
    assert got >= 1.0 and got >= g.epsilon - 0.1


def test_mixed_history_rdp_or_basic_whichever_is_tighter():
    lap = [laplace(8.0, 971.2)] * 2
    g = gaussian(8.0, 1e-6, 119.5, 128)
    got, _ = compose([*lap, g], target_delta=1e-6)
    rdp = rdp_direct(events_of([*lap, g]), 1e-6)
    assert rdp == pytest.approx(23.6597885, abs=1e-6)
    assert got == pytest.approx(rdp, rel=1e-12) and got < 24.0  # RDP beats basic (24) here
    # a tiny Laplace next to one Gaussian at its own delta: basic composition is tighter
    lap = laplace(1e-6)
    g = gaussian(1.0, 1e-5)
    got, _ = compose([lap, g], target_delta=1e-5)
    rdp = rdp_direct(events_of([lap, g]), 1e-5)
    assert rdp > 1.00006
    exact = Fraction(1e-6) + Fraction(1.0)
    assert Fraction(got) >= exact and got == pytest.approx(1.000001, rel=1e-15)  # the sum, rounded up


def test_a_weak_gaussian_never_lowers_a_pure_history():
    """RDP at delta > 0 alone would report less than the pure sum already reported for this
    subject; the reported epsilon must not go down."""
    lap = [laplace(0.1)] * 30
    weak = Charge("gaussian", 1.0, 1e-5, 1.0, 50.0)
    assert rdp_direct(events_of([*lap, weak]), 1e-5) < 2.5  # the situation this test is about
    assert compose(lap) == (3.0, 0.0)
    assert compose([*lap, weak], target_delta=1e-5)[0] >= 3.0


def test_empty_history():
    assert compose([]) == (0.0, 0.0)
    assert compose([], target_delta=1e-5) == (0.0, 0.0)


# ------------------------------------------------------------------ caps
def test_would_exceed_is_exact_at_the_boundary():
    one = laplace(1.0)
    assert not would_exceed([one, one], [one], max_epsilon=3.0, max_delta=0.0)
    assert would_exceed([one, one, one], [one], max_epsilon=3.0, max_delta=0.0)
    assert would_exceed([], [laplace(3.0 + 1e-12)], max_epsilon=3.0, max_delta=0.0)
    tenths = [laplace(0.1)] * 9
    assert not would_exceed(tenths, [laplace(0.1)], max_epsilon=1.0, max_delta=0.0)


@pytest.mark.parametrize("eps,delta,sens,dim", _GRID)
def test_a_cap_of_one_gaussian_release_admits_exactly_one(eps, delta, sens, dim):
    g = gaussian(eps, delta, sens, dim)
    assert not would_exceed([], [g], max_epsilon=eps, max_delta=delta)
    assert would_exceed([g], [g], max_epsilon=eps, max_delta=delta)
    assert would_exceed([], [g], max_epsilon=math.nextafter(eps, 0.0), max_delta=delta)
    assert would_exceed([], [g], max_epsilon=100.0, max_delta=0.0)  # no delta budget: never


# ------------------------------------------------------------------ properties
_lap = st.builds(laplace, st.floats(1e-6, 5.0), st.sampled_from([0.5, 1.0, 2.0]))
_calibrated = st.builds(
    gaussian, st.sampled_from([0.1, 1.0, 8.0]), st.sampled_from([1e-7, 1e-5, 1e-3]),
    st.sampled_from([0.5, 1.0]), st.just(8),
)


@st.composite
def _loose_gaussian(draw):
    """Any sigma, with a claim that is exactly OpenDP's certificate at a drawn epsilon."""
    nm = draw(st.floats(0.3, 40.0))
    eps = draw(st.floats(0.05, 20.0))
    d = M.certified_gaussian_delta(eps, nm, 1.0)
    assume(1e-300 < d < 0.5)
    return Charge("gaussian", eps, d, 1.0, nm)


_charge = st.one_of(_lap, _calibrated, _loose_gaussian())
_prop = settings(max_examples=40, deadline=None, suppress_health_check=[HealthCheck.too_slow], derandomize=True)


@_prop
@given(st.lists(_charge, max_size=4), _charge, st.sampled_from([1e-6, 1e-5, 1e-3]))
@example([laplace(0.1)] * 30, Charge("gaussian", 1.0, 1e-5, 1.0, 50.0), 1e-5)
@example([gaussian(1.0, 1e-5)], gaussian(1.0, 1e-5), 1e-5)
@example([gaussian(0.1, 1e-5), laplace(1.0)], laplace(1e-6), 1e-5)
def test_adding_a_charge_never_lowers_epsilon(history, extra, delta):
    eps0, d0 = compose(history, target_delta=delta)
    eps1, d1 = compose([*history, extra], target_delta=delta)
    assert eps1 >= eps0
    assert d1 >= d0
    assert eps1 > 0


@_prop
@given(st.lists(_charge, min_size=1, max_size=5), st.sampled_from([1e-6, 1e-5, 1e-3]))
def test_compose_is_max_of_laplace_sum_and_min_of_rdp_and_basic(history, delta):
    """The rule, recomputed here from dp-accounting used directly."""
    got, d = compose(history, target_delta=delta)
    lap_sum = math.fsum(c.epsilon for c in history if c.mechanism == "laplace")
    if all(c.mechanism == "laplace" for c in history):
        assert (got, d) == (lap_sum, 0.0)
        return
    assert d == delta
    rdp = rdp_direct(events_of(history), delta)
    fits = sum(Fraction(c.delta) for c in history) <= Fraction(delta)
    basic = math.fsum(c.epsilon for c in history) if fits else math.inf
    assert got == pytest.approx(max(min(rdp, basic), lap_sum), rel=1e-9)
    if fits:
        assert got <= basic * (1 + 1e-15)


@_prop
@given(st.lists(_charge, min_size=2, max_size=5).flatmap(lambda h: st.tuples(st.just(h), st.permutations(h))))
def test_composition_is_order_independent(pair):
    history, shuffled = pair
    a = compose(history, target_delta=1e-5)
    accountant._compose_canonical.cache_clear()  # recompute from scratch, not from the cache
    b = compose(shuffled, target_delta=1e-5)
    assert a == b

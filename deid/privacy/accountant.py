"""Privacy accounting: what a subject has spent, from the facts of each noisy release.

Contract
========

* A :class:`Charge` is the frozen record of one noisy release of one face: the mechanism,
  the (epsilon, delta) it was calibrated for, the sensitivity and the noise scale actually
  used. It is the only input of accounting: the ledger stores charges and nothing else,
  and every number this module reports is derived from them alone.
* A charge is validated when it is built: its stated (epsilon, delta) must be *true* for
  its noise. Laplace: ``epsilon >= sensitivity / noise_scale``. Gaussian (the DISCRETE
  Gaussian that :mod:`deid.privacy.mechanisms` samples): OpenDP's certified delta at the
  stated epsilon, through the same proved chain the calibration uses (``make_gaussian``'s
  rho-zCDP map with rho = sensitivity^2 / (2 noise_scale^2), then
  ``make_zCDP_to_approxDP``; :func:`deid.privacy.mechanisms.certified_gaussian_delta`),
  must be ``<= delta``, with no tolerance (calibration leaves a 1e-9 relative margin).
  The continuous-Gaussian curve (Balle & Wang) is NOT accepted: it is not proved for
  what is sampled. A charge whose claim is stronger than its noise is a
  :class:`ValueError`, never an audit row.
* ``sensitivity`` is the largest distance (L1 for Laplace, L2 for Gaussian) between the
  clipped values of *any two* faces, i.e. the diameter of the public clip region, lattice
  rounding included, and ``noise_scale`` is the Laplace scale b or the Gaussian sigma.
* ``kary_rr`` charges are k-ary randomized response of one face attribute
  (:mod:`deid.anonymize.ppas`): pure epsilon-DP over any two values (the discrete metric,
  sensitivity 1), ``noise_scale`` the probability q of a uniform draw over the ``categories``
  (k) values, validated as ``epsilon >= log(k / q - k + 1)``. They compose with the rest like
  Laplace releases: in the pure sum, and in RDP as ``RandomizedResponseDpEvent(q, k)`` (its
  exact Renyi curve under REPLACE_ONE, which is deid's neighbouring relation for every charge;
  the Laplace and zCDP curves do not depend on it).
* :func:`compose` returns a pair (epsilon, delta) such that the whole history of a subject
  is (epsilon, delta)-DP. It is an upper bound, never an estimate from below:

  - **only Laplace (and kary_rr) releases**: ``(sum of epsilon_i, 0.0)``, pure epsilon-DP. Pure-DP
    composition is exactly additive and this sum is tight (Kairouz, Oh & Viswanath 2015,
    Thm 3.3 at delta=0; dp-accounting implements that theorem as
    ``pld.accountant.advanced_composition``, which the tests cross-check). dp-accounting's
    accountants cannot state pure DP themselves: the PLD accountant truncates tails into
    an infinite-loss atom and the RDP accountant needs delta > 0, so both report
    ``inf`` at delta=0 (pinned by a test). The sum uses :func:`math.fsum`, so k releases
    of epsilon_i add up with no rounding drift.
  - **any Gaussian release**: epsilon is read at ``target_delta`` (the ledger passes its
    ``max_delta``) and delta is ``target_delta``. epsilon is
    ``max(min(E_rdp, E_basic), sum of Laplace epsilon_i)`` with two valid upper bounds:

    * ``E_rdp``: every release in one ``dp_accounting.rdp.RdpAccountant`` (orders
      :data:`RDP_ORDERS`, dp-accounting's defaults), read with ``get_epsilon(target_delta)``.
      A Gaussian release is ``ZCDpEvent(rho)`` with ``rho = sensitivity^2 / (2
      noise_scale^2)`` (exact, rounded up); a Laplace release is ``LaplaceDpEvent`` (its
      exact RDP curve, Mironov 2017 Prop. 6, with noise multiplier rounded so that
      dp-accounting's ``1 / noise_multiplier`` is never below ``sensitivity /
      noise_scale``). Why this is a proof for what is sampled: (1) the discrete Gaussian
      release is rho-zCDP, which is exactly what OpenDP certifies for ``make_gaussian``
      (Canonne, Kamath & Steinke 2020; ``Calibrated.opendp_privacy <= rho``, see
      ``docs/dp-sampler.md``); (2) rho-zCDP means Renyi DP of every order alpha > 1 with
      epsilon(alpha) = rho * alpha (the definition of zCDP, Bun & Steinke 2016), which is
      the curve ``ZCDpEvent`` adds to the accountant; (3) Renyi DP composes additively,
      order by order (Mironov 2017, Prop. 1), also across mechanisms, which is what
      ``RdpAccountant.compose`` does; (4) the RDP -> (epsilon, delta) conversion,
      minimised over the orders, is dp-accounting's ``compute_epsilon`` (Canonne, Kamath
      & Steinke 2020, Prop. 12 of arXiv v4; a bound at each order, so any finite set of
      orders gives a valid epsilon). Nothing here is the continuous Gaussian's
      privacy-loss distribution.
    * ``E_basic``: basic composition, ``sum of stated epsilon_i`` (exact, rounded up)
      with ``sum of delta_i``, valid only when ``sum of delta_i <= target_delta``
      (compared exactly, in rationals); otherwise it is not used. Each stated claim was
      validated against OpenDP's certificate, so the sum is a proof (Dwork et al. 2006).
      This term is what keeps a single release at its own calibrated claim: RDP on a
      grid of orders is slightly looser than OpenDP's continuous optimisation (1.00007 vs
      1.0 at epsilon = 1, delta = 1e-5).

    The min of valid upper bounds is a valid upper bound, and the max of a valid bound
    and anything is valid. The max with the pure-Laplace sum keeps the reported epsilon
    monotone when the first Gaussian release joins a pure history (RDP at delta > 0 can
    be below a long Laplace sum).
* Invariants (tested): composition is order-independent (charges are grouped and sorted
  before they reach the accountant; fsum and rational sums do not depend on order),
  monotone (adding a charge never lowers epsilon: the RDP vector only grows, order by
  order, and ``compute_epsilon`` is non-decreasing in it; the basic sum only grows and
  can only lose validity, i.e. jump to +inf; so ``min`` of the two is monotone, and so
  is ``max`` with the Laplace sum), and the empty history is ``(0.0, 0.0)``.
* :func:`would_exceed` is the single cap check used by the ledger: a subject is within
  budget iff ``compose(history + new, target_delta=max_delta)`` is within
  ``(max_epsilon, max_delta)``; the comparison is exact (no tolerance), so a cap of 3.0
  admits exactly three Laplace releases of epsilon 1.0, and a cap equal to one
  calibrated Gaussian release's epsilon at its own delta admits exactly one.
* Cost: one RDP composition is one accountant over the distinct (mechanism, parameter)
  groups of the history (identical releases are one ``SelfComposedDpEvent``); about
  0.1 ms per distinct Laplace group and far less per Gaussian group, so even 200
  distinct releases take milliseconds. Compositions are cached (:func:`compose` keys on
  the canonical history).
"""

from __future__ import annotations

import functools
import math
from collections import Counter
from dataclasses import dataclass
from fractions import Fraction
from typing import Iterable, Literal, Sequence

import dp_accounting
from dp_accounting.rdp import rdp_privacy_accountant

from deid.privacy import mechanisms as _mechanisms

#: Renyi orders of the RDP accountant: dp-accounting's defaults (1.1 .. 10.9 by 0.1,
#: 11 .. 63, 128, 256, 512, 1024). The conversion holds at every order, so any set is valid;
#: a denser grid is tighter only for small epsilon (three releases at 0.1: 2%; at 0.01: 6%)
#: and costs time (Laplace curves are evaluated per order).
RDP_ORDERS: tuple[float, ...] = tuple(rdp_privacy_accountant.DEFAULT_RDP_ORDERS)

#: Relative slack for a Laplace charge's *stated* epsilon against sensitivity / noise_scale:
#: b = sensitivity / epsilon in floating point cannot reproduce epsilon to the last bit.
_CLAIM_RTOL = 1e-9

Mechanism = Literal["laplace", "gaussian", "kary_rr"]
MECHANISMS: tuple[str, ...] = ("laplace", "gaussian", "kary_rr")
#: mechanisms that are pure epsilon-DP (delta = 0): their histories compose by the plain sum
PURE_MECHANISMS: tuple[str, ...] = ("laplace", "kary_rr")


def _finite(name: str, value: float) -> float:
    value = float(value)
    if not math.isfinite(value):
        raise ValueError(f"{name} must be finite, got {value!r}")
    return value


def _float_up(x: Fraction) -> float:
    """Smallest float >= x (x >= 0); ``inf`` past the largest float."""
    try:
        f = float(x)
    except OverflowError:
        return math.inf
    if Fraction(f) < x:
        f = math.nextafter(f, math.inf)
    return f


@functools.lru_cache(maxsize=65536)
def _zcdp_rho(sensitivity: float, noise_scale: float) -> float:
    """rho = sensitivity^2 / (2 noise_scale^2), exact, rounded up."""
    return _float_up(Fraction(sensitivity) ** 2 / (2 * Fraction(noise_scale) ** 2))


@functools.lru_cache(maxsize=65536)
def _laplace_noise_multiplier(sensitivity: float, noise_scale: float) -> float:
    """A noise multiplier m for ``LaplaceDpEvent`` with float ``1 / m`` (what dp-accounting
    computes) never below the true epsilon ``sensitivity / noise_scale``."""
    eps = Fraction(sensitivity) / Fraction(noise_scale)
    m = float(1 / eps)
    while Fraction(1.0 / m) < eps:
        m = math.nextafter(m, 0.0)
    return m


def kary_rr_epsilon(uniform_prob: float, categories: int) -> float:
    """The epsilon of k-ary randomized response whose output is a uniform draw over the
    ``categories`` values with probability ``uniform_prob`` (and the true value otherwise):
    ``log(k / q - k + 1)``, i.e. ``log(p_keep / p_other)`` with ``p_keep = 1 - q + q / k``,
    ``p_other = q / k`` (dp-accounting's ``RandomizedResponseDpEvent`` parametrisation)."""
    q, k = float(uniform_prob), int(categories)
    return math.log(k / q - k + 1)


@dataclass(frozen=True)
class Charge:
    """One noisy release of one face, as it happened (the per-release facts).

    ``kary_rr`` (k-ary randomized response of one categorical attribute, deid.anonymize.ppas):
    ``sensitivity`` is 1 (the discrete metric: the true value replaced by any other),
    ``noise_scale`` is the probability q that the released value is a uniform draw over the
    ``categories`` (k) values, and the stated epsilon must be at least ``log(k / q - k + 1)``.
    ``categories`` is ``None`` for the other mechanisms."""

    mechanism: Mechanism
    epsilon: float
    delta: float
    sensitivity: float
    noise_scale: float
    categories: int | None = None

    def __post_init__(self) -> None:
        if self.mechanism not in MECHANISMS:
            raise ValueError(f"mechanism must be one of {MECHANISMS}, got {self.mechanism!r}")
        for name in ("epsilon", "delta", "sensitivity", "noise_scale"):
            object.__setattr__(self, name, _finite(name, getattr(self, name)))
        if self.epsilon <= 0:
            raise ValueError(f"epsilon must be > 0, got {self.epsilon}")
        if self.sensitivity <= 0:
            raise ValueError(f"sensitivity must be > 0, got {self.sensitivity}")
        if self.noise_scale <= 0:
            raise ValueError(f"noise_scale must be > 0, got {self.noise_scale}")
        if self.mechanism != "kary_rr":
            if self.categories is not None:
                raise ValueError(f"a {self.mechanism} release has no categories (got {self.categories!r})")
        else:
            k = self.categories
            if isinstance(k, bool) or not isinstance(k, int) or k < 2:
                raise ValueError(f"a kary_rr release needs categories >= 2 (an int), got {k!r}")
            if self.delta != 0.0:
                raise ValueError(f"randomized response is pure epsilon-DP: delta must be 0, got {self.delta}")
            if self.sensitivity != 1.0:
                raise ValueError("a kary_rr release has sensitivity 1 (the discrete metric), "
                                 f"got {self.sensitivity}")
            if not self.noise_scale <= 1.0:
                raise ValueError(f"a kary_rr noise_scale is a probability (of a uniform draw), got {self.noise_scale}")
            true_eps = kary_rr_epsilon(self.noise_scale, k)
            if self.epsilon < true_eps * (1 - _CLAIM_RTOL):
                raise ValueError(
                    f"randomized response over {k} values drawing uniformly with probability {self.noise_scale} "
                    f"gives epsilon {true_eps}, more than the stated {self.epsilon}")
        if self.mechanism == "laplace":
            if self.delta != 0.0:
                raise ValueError(f"a Laplace release is pure epsilon-DP: delta must be 0, got {self.delta}")
            true_eps = self.sensitivity / self.noise_scale
            if self.epsilon < true_eps * (1 - _CLAIM_RTOL):
                raise ValueError(
                    f"Laplace noise b={self.noise_scale} with sensitivity {self.sensitivity} gives "
                    f"epsilon {true_eps}, more than the stated {self.epsilon}"
                )
        elif self.mechanism == "gaussian":
            if not 0.0 < self.delta < 1.0:
                raise ValueError(f"a Gaussian release needs 0 < delta < 1, got {self.delta}")
            certified = _mechanisms.certified_gaussian_delta(self.epsilon, self.noise_scale, self.sensitivity)
            if not certified <= self.delta:
                raise ValueError(
                    f"discrete Gaussian noise sigma={self.noise_scale} with sensitivity {self.sensitivity} "
                    f"is certified (OpenDP: rho-zCDP -> (epsilon, delta)) for delta {certified} at epsilon "
                    f"{self.epsilon}, more than the stated delta {self.delta}"
                )

    @classmethod
    def of(cls, release) -> "Charge":
        """The ledger charge of one release: from a face's facts (``deid.facts.FaceFacts``, via
        its ``dp``), their ``DpRelease``, or any object with the five facts as attributes (e.g.
        ``deid.privacy.mechanisms.Calibrated``); validated like any other. The one function
        that turns what a method did into what the ledger is charged."""
        if isinstance(release, cls):
            return release
        dp = getattr(release, "dp", release)
        if dp is None:
            raise ValueError(f"{getattr(release, 'method', 'the method')}: a face with no DP release has no charge")
        return cls(dp.mechanism, dp.epsilon, dp.delta, dp.sensitivity, dp.noise_scale,
                   getattr(dp, "categories", None))

    @classmethod
    def all_of(cls, release) -> "tuple[Charge, ...]":
        """Every ledger charge of one face: a method's ``release`` (one ``DpRelease``, or a tuple
        of them when each face is released several times at once, e.g. one randomized response
        per attribute), or a face's facts (their ``charges``)."""
        many = getattr(release, "charges", release)
        if isinstance(many, (tuple, list)):
            if not many:
                raise ValueError("a face with no DP release has no charge")
            return tuple(cls.of(r) for r in many)
        return (cls.of(release),)

    @property
    def noise_multiplier(self) -> float:
        """``noise_scale / sensitivity``."""
        return self.noise_scale / self.sensitivity

    @property
    def rho(self) -> float:
        """Gaussian: the zCDP rho of the release, ``sensitivity^2 / (2 noise_scale^2)``
        rounded up; Laplace: ``nan`` (it is accounted by its exact RDP curve)."""
        if self.mechanism != "gaussian":
            return math.nan
        return _zcdp_rho(self.sensitivity, self.noise_scale)

    def _rdp_key(self) -> tuple:
        if self.mechanism == "laplace":
            return "laplace", _laplace_noise_multiplier(self.sensitivity, self.noise_scale)
        if self.mechanism == "kary_rr":
            return "kary_rr", self.noise_scale, self.categories
        return "gaussian", self.rho

    def dp_event(self) -> dp_accounting.DpEvent:
        """The dp-accounting event this release is composed as: ``LaplaceDpEvent``,
        ``ZCDpEvent(rho)`` (what is proved for the discrete Gaussian; not ``GaussianDpEvent``)
        or ``RandomizedResponseDpEvent(q, k)`` (its exact RDP curve under REPLACE_ONE)."""
        return _event(*self._rdp_key())


def _event(mechanism: str, *param) -> dp_accounting.DpEvent:
    if mechanism == "laplace":
        return dp_accounting.LaplaceDpEvent(noise_multiplier=param[0])
    if mechanism == "kary_rr":
        return dp_accounting.RandomizedResponseDpEvent(noise_parameter=param[0], num_buckets=param[1])
    return dp_accounting.ZCDpEvent(rho=param[0])


def _check_delta(name: str, value: float) -> float:
    value = float(value)
    if not 0.0 <= value < 1.0:
        raise ValueError(f"{name} must be in [0, 1), got {value!r}")
    return value


def compose(charges: Iterable[Charge], target_delta: float | None = None) -> tuple[float, float]:
    """Total (epsilon, delta) of a subject's history (see the module docstring).

    ``target_delta`` is the delta at which a history holding a Gaussian release is
    reported (the ledger passes its ``max_delta``); it is ignored for pure Laplace
    histories, which are reported as ``(sum, 0.0)``. A history with a Gaussian release
    and no ``target_delta`` is a :class:`ValueError`: there is no single epsilon to give.
    """
    counts = Counter(charges)
    for c in counts:
        if not isinstance(c, Charge):
            raise TypeError(f"compose() takes Charge objects, got {type(c).__name__}")
    if target_delta is not None:
        target_delta = _check_delta("target_delta", target_delta)
    key = tuple(sorted(counts.items(), key=lambda kv: _sort_key(kv[0])))
    return _compose_canonical(key, target_delta)


def _sort_key(c: Charge) -> tuple:
    return (c.mechanism, c.epsilon, c.delta, c.sensitivity, c.noise_scale, c.categories or 0)


@functools.lru_cache(maxsize=4096)
def _compose_canonical(items: tuple[tuple[Charge, int], ...], target_delta: float | None) -> tuple[float, float]:
    if not items:
        return 0.0, 0.0
    # One term per release: k releases of eps_i add exactly like k separate terms.
    laplace_eps = math.fsum(c.epsilon for c, n in items if c.mechanism in PURE_MECHANISMS for _ in range(n))
    if all(c.mechanism in PURE_MECHANISMS for c, _ in items):
        return laplace_eps, 0.0
    if target_delta is None:
        raise ValueError("a history with a Gaussian release is reported at a target delta: pass target_delta")
    if target_delta == 0.0:
        return math.inf, 0.0  # a Gaussian release is never pure-DP
    eps = min(rdp_epsilon(items, target_delta), basic_epsilon(items, target_delta))
    return max(eps, laplace_eps), target_delta


def rdp_epsilon(items: Iterable[tuple[Charge, int]], target_delta: float) -> float:
    """E_rdp: epsilon at ``target_delta`` of ``(charge, count)`` pairs composed in one
    ``dp_accounting.rdp.RdpAccountant`` (Gaussian: ``ZCDpEvent(rho)``, Laplace:
    ``LaplaceDpEvent``).

    Releases with the same event are one ``SelfComposedDpEvent``, and the events go in in
    a fixed (sorted) order, so the result does not depend on the order of the history.
    """
    groups: Counter = Counter()
    for c, n in items:
        groups[c._rdp_key()] += n
    events = []
    for key, n in sorted(groups.items()):
        base = _event(*key)
        events.append(base if n == 1 else dp_accounting.SelfComposedDpEvent(base, n))
    # REPLACE_ONE: deid's neighbours are any two faces (or attribute values) in the same place,
    # which is what every sensitivity here is taken over. The Laplace and zCDP curves do not
    # depend on the relation; randomized response's does, and dp-accounting requires it.
    acc = rdp_privacy_accountant.RdpAccountant(
        orders=RDP_ORDERS, neighboring_relation=dp_accounting.NeighboringRelation.REPLACE_ONE)
    acc.compose(dp_accounting.ComposedDpEvent(events))
    return max(0.0, float(acc.get_epsilon(target_delta)))


def basic_epsilon(items: Iterable[tuple[Charge, int]], target_delta: float) -> float:
    """E_basic: the sum of the stated epsilons (exact, rounded up) when the sum of the
    stated deltas is at most ``target_delta`` (exactly); ``inf`` (no bound) otherwise."""
    pairs = list(items)
    if sum((Fraction(c.delta) * n for c, n in pairs), Fraction(0)) > Fraction(target_delta):
        return math.inf
    return _float_up(sum((Fraction(c.epsilon) * n for c, n in pairs), Fraction(0)))


def would_exceed(
    history: Sequence[Charge] | Iterable[Charge],
    new_charges: Sequence[Charge] | Iterable[Charge],
    max_epsilon: float,
    max_delta: float,
) -> bool:
    """True when ``history + new_charges`` would not fit in ``(max_epsilon, max_delta)``."""
    max_delta = _check_delta("max_delta", max_delta)
    eps, delta = compose([*history, *new_charges], target_delta=max_delta)
    return eps > max_epsilon or delta > max_delta

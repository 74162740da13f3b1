"""Privacy accounting: what a subject has spent, from the facts of each noisy release.

Contract
========

* A :class:`Charge` is the frozen record of one noisy release of one face: the mechanism,
  the (epsilon, delta) it was calibrated for, the sensitivity and the noise scale actually
  used. It is the only input of accounting: the ledger stores charges and nothing else,
  and every number this module reports is derived from them alone.
* A charge is validated when it is built: its stated (epsilon, delta) must be *true* for
  its noise. Laplace: ``epsilon >= sensitivity / noise_scale``; Gaussian: ``epsilon`` at
  least the exact epsilon of the analytic Gaussian mechanism (Balle & Wang 2018, as
  implemented by ``dp_accounting.get_epsilon_gaussian``) at the stated delta. A charge
  whose claim is stronger than its noise is a :class:`ValueError`, never an audit row.
* ``sensitivity`` is the largest distance (L1 for Laplace, L2 for Gaussian) between the
  clipped values of *any two* faces, i.e. the diameter of the public clip region, and
  ``noise_scale`` is the Laplace scale b or the Gaussian standard deviation. Accounting
  uses ``noise_multiplier = noise_scale / sensitivity`` with dp-accounting's
  ``ADD_OR_REMOVE_ONE`` relation, which models exactly one shift of size ``sensitivity``.
* :func:`compose` returns a pair (epsilon, delta) such that the whole history of a subject
  is (epsilon, delta)-DP. It is an upper bound, never an estimate from below:

  - **only Laplace releases**: ``(sum of epsilon_i, 0.0)``, pure epsilon-DP. Pure-DP
    composition is exactly additive and this sum is tight (Kairouz, Oh & Viswanath 2015,
    Thm 3.3 at delta=0; dp-accounting implements that theorem as
    ``pld.accountant.advanced_composition``, which the tests cross-check). dp-accounting's
    accountants cannot state pure DP themselves: the PLD accountant truncates tails into
    an infinite-loss atom and the RDP accountant needs delta > 0, so both report
    ``inf`` at delta=0 (pinned by a test). The sum uses :func:`math.fsum`, so k releases
    of epsilon_i add up with no rounding drift.
  - **any Gaussian release**: every release (Laplace ones too) is composed in one
    ``dp_accounting.pld.PLDAccountant`` (pessimistic discretisation, interval
    :data:`VALUE_DISCRETIZATION_INTERVAL`, so the reported epsilon is an upper bound on
    the true one), and epsilon is read at ``target_delta`` (the ledger passes its
    ``max_delta``); delta is ``target_delta``. When the history also holds Laplace
    releases, the reported epsilon is ``max(PLD epsilon, sum of Laplace epsilons)``: the
    max of a valid bound and anything is still valid, and it keeps the reported epsilon
    monotone (adding a Gaussian release to a pure history never makes the number that a
    user has already seen go down).
* Invariants (tested): composition is order-independent (charges are grouped and sorted
  before they reach the accountant), monotone (adding a charge never lowers epsilon),
  and the empty history is ``(0.0, 0.0)``.
* :func:`would_exceed` is the single cap check used by the ledger: a subject is within
  budget iff ``compose(history + new, target_delta=max_delta)`` is within
  ``(max_epsilon, max_delta)``; the comparison is exact (no tolerance), so a cap of 3.0
  admits exactly three releases of epsilon 1.0.
"""

from __future__ import annotations

import functools
import math
from collections import Counter
from dataclasses import dataclass
from typing import Iterable, Literal, Sequence

import dp_accounting
from dp_accounting.pld import pld_privacy_accountant

#: PLD discretisation (dp-accounting's default). Rounding is pessimistic: smaller values
#: give tighter (still valid) epsilons at the cost of time.
VALUE_DISCRETIZATION_INTERVAL = 1e-4

#: Relative slack for a charge's *stated* epsilon against the epsilon of its noise:
#: floating point calibration (b = sensitivity / epsilon, or a root finder for Gaussian
#: sigma) cannot reproduce epsilon to the last bit.
_CLAIM_RTOL = 1e-9

Mechanism = Literal["laplace", "gaussian"]
MECHANISMS: tuple[str, ...] = ("laplace", "gaussian")


def _finite(name: str, value: float) -> float:
    value = float(value)
    if not math.isfinite(value):
        raise ValueError(f"{name} must be finite, got {value!r}")
    return value


@dataclass(frozen=True)
class Charge:
    """One noisy release of one face, as it happened (the per-release facts)."""

    mechanism: Mechanism
    epsilon: float
    delta: float
    sensitivity: float
    noise_scale: float

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
        if self.mechanism == "laplace":
            if self.delta != 0.0:
                raise ValueError(f"a Laplace release is pure epsilon-DP: delta must be 0, got {self.delta}")
            true_eps = self.sensitivity / self.noise_scale
            if self.epsilon < true_eps * (1 - _CLAIM_RTOL):
                raise ValueError(
                    f"Laplace noise b={self.noise_scale} with sensitivity {self.sensitivity} gives "
                    f"epsilon {true_eps}, more than the stated {self.epsilon}"
                )
        else:
            if not 0.0 < self.delta < 1.0:
                raise ValueError(f"a Gaussian release needs 0 < delta < 1, got {self.delta}")
            true_eps = dp_accounting.get_epsilon_gaussian(self.noise_multiplier, self.delta)
            if self.epsilon < true_eps * (1 - _CLAIM_RTOL) - 1e-12:
                raise ValueError(
                    f"Gaussian noise sigma={self.noise_scale} with sensitivity {self.sensitivity} gives "
                    f"epsilon {true_eps} at delta {self.delta} (analytic Gaussian mechanism), more than "
                    f"the stated {self.epsilon}"
                )

    @classmethod
    def from_calibrated(cls, cal) -> "Charge":
        """The charge of one release from any object with the five facts as attributes
        (e.g. ``deid.privacy.mechanisms.Calibrated``); validated like any other."""
        return cls(cal.mechanism, cal.epsilon, cal.delta, cal.sensitivity, cal.noise_scale)

    @property
    def noise_multiplier(self) -> float:
        """``noise_scale / sensitivity``: what dp-accounting's events are parameterised by."""
        return self.noise_scale / self.sensitivity

    def dp_event(self) -> dp_accounting.DpEvent:
        """The dp-accounting event of this release."""
        if self.mechanism == "laplace":
            return dp_accounting.LaplaceDpEvent(noise_multiplier=self.noise_multiplier)
        return dp_accounting.GaussianDpEvent(noise_multiplier=self.noise_multiplier)


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
    return (c.mechanism, c.epsilon, c.delta, c.sensitivity, c.noise_scale)


@functools.lru_cache(maxsize=4096)
def _compose_canonical(items: tuple[tuple[Charge, int], ...], target_delta: float | None) -> tuple[float, float]:
    if not items:
        return 0.0, 0.0
    # One term per release: k releases of eps_i add exactly like k separate terms.
    laplace_eps = math.fsum(c.epsilon for c, n in items if c.mechanism == "laplace" for _ in range(n))
    if all(c.mechanism == "laplace" for c, _ in items):
        return laplace_eps, 0.0
    if target_delta is None:
        raise ValueError("a history with a Gaussian release is reported at a target delta: pass target_delta")
    if target_delta == 0.0:
        return math.inf, 0.0  # a Gaussian release is never pure-DP
    eps = max(_pld_epsilon(items, target_delta), laplace_eps)
    return eps, target_delta


def _pld_epsilon(items: tuple[tuple[Charge, int], ...], target_delta: float) -> float:
    """Epsilon at target_delta of all releases composed in one PLD accountant.

    Releases with the same mechanism and noise multiplier are one ``SelfComposedDpEvent``
    (dp-accounting then composes them in closed form for Gaussians, by FFT powers for
    Laplace), in a fixed order, so the result does not depend on the order of the history.
    """
    groups: Counter = Counter()
    for c, n in items:
        groups[(c.mechanism, c.noise_multiplier)] += n
    events = []
    for (mechanism, nm), n in sorted(groups.items()):
        base = dp_accounting.LaplaceDpEvent(nm) if mechanism == "laplace" else dp_accounting.GaussianDpEvent(nm)
        events.append(base if n == 1 else dp_accounting.SelfComposedDpEvent(base, n))
    acc = pld_privacy_accountant.PLDAccountant(value_discretization_interval=VALUE_DISCRETIZATION_INTERVAL)
    acc.compose(dp_accounting.ComposedDpEvent(events))
    return max(0.0, float(acc.get_epsilon(target_delta)))


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

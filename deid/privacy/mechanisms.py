"""DP mechanisms for latent vectors: clipping, sensitivity, calibration, sampling.

Contract
--------
A ``dp-image`` release of one face is the map

    z  --clip to PUBLIC bounds [lo, hi]-->  c  --add calibrated noise-->  c + N  --decode-->  face

and this module owns everything up to ``c + N``. Decoding (and any projection onto the public
prior done before decoding) is post-processing and costs no budget. The unit of privacy is one
face's latent vector: for ANY two input vectors z, z' (any floats, including huge or infinite
values; NaN is rejected) the released distributions are (epsilon, delta)-indistinguishable, with
epsilon and delta exactly the numbers in the returned :class:`Calibrated`.

Invariants (each one is pinned by a test in ``tests/test_mechanisms.py``)
-------------------------------------------------------------------------
1. Sensitivity is a property of the public bounds, never of data.
   ``l1_sensitivity(lo, hi) = sum(hi - lo)`` and ``l2_sensitivity(lo, hi) = ||hi - lo||_2`` are the
   largest L1 / L2 distances between any two clipped vectors. Both are computed in exact rational
   arithmetic and rounded UP to the next float, so a float rounding can never under-state them.
   Bounds must be finite with ``lo < hi`` in every dimension, and must come from a public
   reference set (this module cannot check provenance; the latent model records it).
2. Laplace is pure epsilon-DP with ``b = sensitivity / epsilon`` (``delta == 0``).
   Gaussian is (epsilon, delta)-DP for the DISCRETE Gaussian that is actually sampled: sigma is
   the smallest (to 2^-30 relative) for which OpenDP's own privacy map certifies it, i.e.
   OpenDP's ``make_gaussian`` is rho-zCDP with rho = Delta2_eff^2 / (2 sigma^2) and OpenDP's
   ``make_zCDP_to_approxDP`` (the zCDP -> (epsilon, delta) conversion of Canonne, Kamath &
   Steinke 2020) gives ``delta(epsilon) <= delta * (1 - 1e-9)``. Both steps are OpenDP proofs.
   The analytic Balle & Wang (2018) sigma (Google ``dp-accounting``'s ``get_sigma_gaussian``) is
   only the starting point of that search: it is exact for CONTINUOUS Gaussian noise, which is
   not what is sampled, and the certified sigma is about 7% larger.
3. ``Calibrated.sensitivity`` is the sensitivity the noise is calibrated to: the bound sensitivity
   plus the worst-case growth from rounding inputs onto the sampler's lattice of granularity 2^k
   (``dim * 2^k`` for L1, ``sqrt(dim) * 2^k`` for L2, OpenDP's ``get_rounding_distance``).
   2^k is at most 2^-40 of both the noise scale and sensitivity/dim, so this changes the
   sensitivity by at most 2^-40 (~1e-12) relative, but it is accounted, not ignored. ``noise_scale == sensitivity / epsilon`` for Laplace.
4. Noise on the default path comes from OpenDP (``make_laplace`` / ``make_gaussian`` over a
   sized vector of non-NaN float64 with L1 / L2 distance). OpenDP rounds the input to the lattice
   Z * 2^k exactly (rational arithmetic), adds discrete Laplace / discrete Gaussian noise sampled
   exactly from its CSPRNG (OpenSSL, seeded by the OS), and maps the lattice point back to the
   nearest float: no floating-point noise arithmetic, so Mironov's (2012) attack does not apply.
   Only the OpenDP feature ``"contrib"`` is enabled (both constructors require it; OpenDP uses it
   for constructors with proof documents that have not completed its external vetting);
   ``"floating-point"`` (now ``"idealized-numerics"``, which under-states privacy loss) is NOT
   enabled and must not be.
   For Laplace, OpenDP's own privacy map certifies the epsilon: ``measurement.map(bound
   sensitivity) <= epsilon`` is checked at calibration. For Gaussian, OpenDP certifies
   rho-zCDP and, through ``make_zCDP_to_approxDP``, the quoted (epsilon, delta)
   (``Calibrated.opendp_zcdp_delta <= delta``); see ``docs/dp-sampler.md``.
5. There is no seed on the default path. A deterministic TEST MODE exists only when the caller
   passes ``test_seed=<int>``: it uses numpy's PCG64 with floating-point noise, is NOT DP, and the
   result says so (``Noised.test_mode is True``, ``Noised.sampler`` names it).
6. Noise on a subset of dimensions (``noise_dims``) is DP for the face only if every other
   dimension is replaced by a public value; otherwise the release is ``"heuristic"``
   (:func:`scope_for`). Sensitivity is then taken over the noised dimensions only.
7. Nothing secret leaves through the facts: ``Calibrated`` and ``Noised.audit_fields()`` hold
   parameters only, never latents, noise or seeds (``Noised.z`` is the release itself).

Per-dimension budget split
--------------------------
``split_epsilon(epsilon, lo, hi)`` gives dimension i the budget
``epsilon_i = epsilon * (hi_i - lo_i) / sum(hi - lo)``. Then every dimension has the same Laplace
scale ``b_i = (hi_i - lo_i) / epsilon_i = sum(hi - lo) / epsilon = Delta1 / epsilon``: running d
independent one-dimensional Laplace mechanisms with this split IS the one L1 Laplace mechanism
with ``b = Delta1 / epsilon`` (same noise law, same epsilon by sequential composition:
``sum(epsilon_i) = epsilon``). It is the optimal split in the minimax sense: any other split
with ``sum(epsilon_i) = epsilon`` gives some dimension a larger scale than ``Delta1 / epsilon``,
and it is the only split whose guarantee also holds when neighbours are only known to be within
L1 distance Delta1 (not within the box). It is not the split that minimises the total expected
absolute noise under the box constraint (that is ``epsilon_i ~ sqrt(hi_i - lo_i)``); see the
doc.
"""

from __future__ import annotations

import functools
import math
from dataclasses import dataclass, field
from fractions import Fraction
from typing import Literal

import numpy as np

from deid.facts import DpRelease

Mechanism = Literal["laplace", "gaussian"]
Scope = Literal["face-latent", "heuristic"]

MECHANISMS: tuple[str, ...] = ("laplace", "gaussian")

#: The sampler's lattice is 2^k with 2^k <= noise_scale * 2^-GRANULARITY_BITS.
GRANULARITY_BITS = 40
#: Smallest k OpenDP accepts for float64 (granularity of subnormals).
_K_MIN_F64 = -1074
#: Analytic delta must satisfy delta(eps) <= target * (1 - _DELTA_MARGIN) (float error in Phi).
_DELTA_MARGIN = 1e-9

OPENDP_FEATURES: tuple[str, ...] = ("contrib",)


# --------------------------------------------------------------------------------------------
# bounds, clipping, sensitivity


def _as_vector(x, name: str) -> np.ndarray:
    a = np.asarray(x, dtype=np.float64)
    if a.ndim != 1 or a.size == 0:
        raise ValueError(f"{name} must be a non-empty 1-D vector, got shape {a.shape}")
    return a


def check_bounds(lo, hi) -> tuple[np.ndarray, np.ndarray]:
    """Validate public bounds: 1-D float64, same shape, finite, ``lo < hi`` everywhere."""
    lo = _as_vector(lo, "lo")
    hi = _as_vector(hi, "hi")
    if lo.shape != hi.shape:
        raise ValueError(f"lo and hi differ in shape: {lo.shape} vs {hi.shape}")
    if not (np.all(np.isfinite(lo)) and np.all(np.isfinite(hi))):
        raise ValueError("clip bounds must be finite")
    if not np.all(lo < hi):
        bad = int(np.flatnonzero(~(lo < hi))[0])
        raise ValueError(f"clip bounds need lo < hi in every dimension (dimension {bad}: "
                         f"lo={lo[bad]!r}, hi={hi[bad]!r})")
    return lo, hi


def _mask(noise_dims, d: int) -> np.ndarray:
    if noise_dims is None:
        return np.ones(d, dtype=bool)
    m = np.asarray(noise_dims)
    if m.dtype != np.bool_ or m.shape != (d,):
        raise ValueError(f"noise_dims must be a boolean mask of shape ({d},)")
    if not m.any():
        raise ValueError("noise_dims selects no dimension")
    return m


def clip(z, lo, hi) -> np.ndarray:
    """Clip ``z`` to the public box ``[lo, hi]`` (per dimension). Infinities clip to the bound.

    NaN is outside the mechanism's domain and raises ``ValueError``: a NaN latent is an encoder
    failure, to be reported as a failed record, never released.
    """
    lo, hi = check_bounds(lo, hi)
    z = _as_vector(z, "z")
    if z.shape != lo.shape:
        raise ValueError(f"z has shape {z.shape}, bounds have {lo.shape}")
    if np.isnan(z).any():
        raise ValueError("latent vector contains NaN")
    return np.minimum(np.maximum(z, lo), hi)


def _exact_ranges(lo: np.ndarray, hi: np.ndarray) -> list[Fraction]:
    return [Fraction(float(h)) - Fraction(float(l)) for l, h in zip(lo, hi)]


def _float_up(x: Fraction) -> float:
    """Smallest float >= x (x >= 0); ValueError if it does not fit in a finite float."""
    try:
        f = float(x)
    except OverflowError:
        raise ValueError("sensitivity overflows float64; bounds are too wide") from None
    if not math.isfinite(f):
        raise ValueError("sensitivity overflows float64; bounds are too wide")
    if Fraction(f) < x:
        f = math.nextafter(f, math.inf)
        if not math.isfinite(f):
            raise ValueError("sensitivity overflows float64; bounds are too wide")
    return f


def _sqrt_up(x: Fraction) -> float:
    """Smallest float s with s*s >= x exactly."""
    s = math.sqrt(_float_up(x))
    while Fraction(s) ** 2 < x:
        s = math.nextafter(s, math.inf)
    return s


def l1_sensitivity(lo, hi, noise_dims=None) -> float:
    """``sum(hi - lo)`` over the noised dimensions, exact then rounded up: the largest L1
    distance between any two clipped vectors."""
    lo, hi = check_bounds(lo, hi)
    m = _mask(noise_dims, lo.size)
    return _float_up(sum(_exact_ranges(lo[m], hi[m]), Fraction(0)))


def l2_sensitivity(lo, hi, noise_dims=None) -> float:
    """``||hi - lo||_2`` over the noised dimensions, exact then rounded up: the largest L2
    distance between any two clipped vectors."""
    lo, hi = check_bounds(lo, hi)
    m = _mask(noise_dims, lo.size)
    return _sqrt_up(sum((r * r for r in _exact_ranges(lo[m], hi[m])), Fraction(0)))


def split_epsilon(epsilon: float, lo, hi) -> np.ndarray:
    """Per-dimension budgets ``epsilon_i = epsilon * (hi_i - lo_i) / sum(hi - lo)``.

    They sum to ``epsilon`` (up to float rounding) and give every dimension the same Laplace scale
    ``(hi_i - lo_i) / epsilon_i == l1_sensitivity(lo, hi) / epsilon``: see
    :func:`per_dimension_scales`, and the module docstring for why this is the minimax-optimal
    split and equals one L1 Laplace mechanism. The noise itself is always drawn with the single
    scale from :func:`calibrate_laplace`; this split is the per-dimension accounting view of it.
    """
    _check_epsilon(epsilon)
    lo, hi = check_bounds(lo, hi)
    ranges = hi - lo
    if not np.all(np.isfinite(ranges)):
        raise ValueError("a dimension's range overflows float64")
    total = l1_sensitivity(lo, hi)
    eps = float(epsilon) * (ranges / total)
    if not np.all((eps > 0) & np.isfinite(eps)):
        raise ValueError("ranges too disparate to split epsilon in float64 "
                         "(a dimension would get epsilon_i == 0)")
    return eps


def per_dimension_scales(epsilons, lo, hi) -> np.ndarray:
    """Laplace scale ``b_i = (hi_i - lo_i) / epsilon_i`` of each dimension under a split."""
    lo, hi = check_bounds(lo, hi)
    eps = _as_vector(epsilons, "epsilons")
    return (hi - lo) / eps


def scope_for(noise_dims, replaced: bool) -> Scope:
    """The DP scope of a release that noises ``noise_dims`` (None = all dimensions).

    ``"face-latent"`` when every dimension is noised, or when every dimension outside the mask is
    REPLACED by a public value (e.g. the public mean). Passing un-noised dimensions through makes
    the release depend on the face without noise: ``"heuristic"``, not DP.
    """
    if noise_dims is None:
        return "face-latent"
    m = np.asarray(noise_dims, dtype=bool)
    if m.all() or replaced:
        return "face-latent"
    return "heuristic"


# --------------------------------------------------------------------------------------------
# calibration


def _check_epsilon(epsilon) -> None:
    if isinstance(epsilon, bool) or not isinstance(epsilon, (int, float, np.floating, np.integer)):
        raise TypeError(f"epsilon must be a number, got {type(epsilon).__name__}")
    if not (math.isfinite(float(epsilon)) and float(epsilon) > 0):
        raise ValueError(f"epsilon must be finite and > 0, got {epsilon!r}")


def _check_sensitivity(sensitivity) -> float:
    s = float(sensitivity)
    if not (math.isfinite(s) and s > 0):
        raise ValueError(f"sensitivity must be finite and > 0, got {sensitivity!r}")
    return s


@dataclass(frozen=True)
class Calibrated:
    """What the noise is and what it guarantees; the only input :func:`add_noise` needs.

    ``sensitivity`` is the one the noise is calibrated to (bound sensitivity + lattice rounding
    slack); ``bound_sensitivity`` is the bounds' own. ``noise_scale`` is the Laplace ``b`` or the
    Gaussian ``sigma``. ``granularity_exponent`` is the k of OpenDP's lattice 2^k.
    ``opendp_privacy`` is OpenDP's own privacy map at ``bound_sensitivity``: epsilon (pure DP)
    for Laplace, rho (zCDP) for Gaussian. For Gaussian, ``opendp_zcdp_delta`` is the delta at
    ``epsilon`` that OpenDP's proofs certify end to end for the discrete Gaussian it samples
    (rho-zCDP converted to (epsilon, delta) by ``make_zCDP_to_approxDP``); calibration makes it
    ``<= delta``, so the reported ``delta`` is a proved bound, not the continuous-Gaussian curve.
    """

    mechanism: str
    epsilon: float
    delta: float
    sensitivity: float
    noise_scale: float
    dim: int = 0
    bound_sensitivity: float = 0.0
    granularity_exponent: int = _K_MIN_F64
    opendp_privacy: float = float("nan")
    opendp_zcdp_delta: float | None = None

    @property
    def granularity(self) -> float:
        return math.ldexp(1.0, self.granularity_exponent)

    @property
    def noise_multiplier(self) -> float:
        """noise_scale / sensitivity, as dp-accounting's DpEvents define it."""
        return self.noise_scale / self.sensitivity

    def release(self) -> DpRelease:
        """The per-face facts of one release under this calibration (:class:`deid.facts.DpRelease`):
        what the method's facts carry and the ledger is charged (``Charge.of``, whose
        ``dp_event`` is the one place that decides how a release is accounted)."""
        return DpRelease(self.mechanism, self.epsilon, self.delta, self.sensitivity, self.noise_scale)


def _granularity_exponent(nominal_scale: float, sensitivity: float, dim: int) -> int:
    """k with 2^k <= 2^-40 * min(noise scale, sensitivity / dim): the lattice is far finer than
    the noise, and the rounding slack (dim * 2^k, or sqrt(dim) * 2^k) is <= 2^-40 of the
    sensitivity, whatever epsilon is."""
    k = math.floor(math.log2(min(nominal_scale, sensitivity / dim))) - GRANULARITY_BITS
    return max(k, _K_MIN_F64)


def _rounding_slack(k: int, dim: int, norm: int) -> Fraction:
    """Upper bound on OpenDP's ``get_rounding_distance`` (2^k - 2^k_min) * (dim or sqrt(dim))."""
    step = Fraction(2) ** k - Fraction(2) ** _K_MIN_F64
    if step == 0:
        return Fraction(0)
    if norm == 1:
        return step * dim
    # one ulp above sqrt(dim) rounded up: never below OpenDP's own float sqrt of the size
    return step * Fraction(math.nextafter(_sqrt_up(Fraction(dim)), math.inf))


def calibrate_laplace(epsilon: float, sensitivity: float, dim: int) -> Calibrated:
    """Pure epsilon-DP Laplace on a ``dim``-vector with L1 sensitivity ``sensitivity``.

    ``b = Delta1_eff / epsilon`` where ``Delta1_eff = sensitivity + dim * 2^k`` covers rounding
    onto the sampler's lattice; OpenDP's privacy map must then certify ``<= epsilon``.
    """
    _check_epsilon(epsilon)
    eps = float(epsilon)
    delta1 = _check_sensitivity(sensitivity)
    dim = _check_dim(dim)
    return _calibrate_laplace(eps, delta1, dim)


@functools.lru_cache(maxsize=256)
def _calibrate_laplace(eps: float, delta1: float, dim: int) -> Calibrated:
    k = _granularity_exponent(delta1 / eps, delta1, dim)
    eff = _float_up(Fraction(delta1) + _rounding_slack(k, dim, 1))
    b = _float_up(Fraction(eff) / Fraction(eps))     # b = Delta1 / epsilon, rounded up
    certified = _opendp_map("laplace", dim, b, k, delta1)
    for _ in range(64):
        if certified <= eps:
            break
        b = math.nextafter(b, math.inf)
        certified = _opendp_map("laplace", dim, b, k, delta1)
    else:  # pragma: no cover - OpenDP's map is within a few ulps of ours
        raise RuntimeError("OpenDP's privacy map does not certify the calibrated Laplace scale")
    return Calibrated("laplace", eps, 0.0, eff, b, dim, delta1, k, certified)


def analytic_gaussian_delta(epsilon: float, sigma: float, sensitivity: float) -> float:
    """Exact delta(epsilon) of the Gaussian mechanism (Balle & Wang 2018, Thm. 8), in log space:
    ``Phi(D/(2s) - e s/D) - exp(e) Phi(-D/(2s) - e s/D)``."""
    from scipy.special import log_ndtr

    a = sensitivity / (2.0 * sigma)
    c = epsilon * sigma / sensitivity
    x = log_ndtr(a - c)
    y = epsilon + log_ndtr(-a - c)
    if y >= x:
        return 0.0
    return float(math.exp(x) * -math.expm1(y - x))


def calibrate_gaussian(epsilon: float, delta: float, sensitivity: float, dim: int) -> Calibrated:
    """(epsilon, delta)-DP discrete Gaussian on a ``dim``-vector with L2 sensitivity ``sensitivity``.

    sigma is the smallest value (to a relative 2^-30, rounded up) whose OpenDP certificate holds:
    OpenDP's ``make_gaussian`` (discrete Gaussian on the 2^k lattice, rho-zCDP at the
    rounding-inflated sensitivity ``Delta2_eff = sensitivity + sqrt(dim) * 2^k``) converted by
    ``make_zCDP_to_approxDP`` gives ``delta(epsilon) <= delta * (1 - 1e-9)``. The search starts
    at the analytic continuous-Gaussian sigma (Balle & Wang 2018, ``dp_accounting``), a lower
    bound; the result is about 7% above it.
    """
    _check_epsilon(epsilon)
    d = float(delta)
    if not (0.0 < d < 1.0):
        raise ValueError(f"gaussian needs 0 < delta < 1, got {delta!r}")
    delta2 = _check_sensitivity(sensitivity)
    dim = _check_dim(dim)
    return _calibrate_gaussian(float(epsilon), d, delta2, dim)


#: Relative precision of the certified Gaussian sigma search.
_SIGMA_RTOL = 2.0 ** -30


@functools.lru_cache(maxsize=256)
def _calibrate_gaussian(eps: float, delta: float, delta2: float, dim: int) -> Calibrated:
    import dp_accounting

    unit = float(dp_accounting.get_sigma_gaussian(eps, delta))   # sigma for sensitivity 1
    # 2^k from the analytic sigma: the certified sigma is larger, so 2^k stays <= 2^-40 of it
    k = _granularity_exponent(unit * delta2, delta2, dim)
    eff = _float_up(Fraction(delta2) + _rounding_slack(k, dim, 2))
    target = delta * (1.0 - _DELTA_MARGIN)

    def certified(s: float) -> float:
        return _certified_gaussian_delta(dim, s, k, delta2, eps)

    # The analytic sigma is exact for continuous noise; OpenDP's zCDP -> (eps, delta) bound is
    # never below that curve, so it is a lower end. Grow an upper end, then bisect (log scale).
    lo = _float_up(Fraction(eff) * Fraction(unit))
    if certified(lo) <= target:  # pragma: no cover - the conversion is looser than the curve
        sigma = lo
    else:
        hi = lo
        for _ in range(200):
            hi *= 1.25
            if certified(hi) <= target:
                break
            lo = hi
        else:  # pragma: no cover
            raise RuntimeError("certified Gaussian calibration did not converge")
        while hi > lo * (1.0 + _SIGMA_RTOL):
            mid = math.sqrt(lo * hi)
            if not lo < mid < hi:
                break
            if certified(mid) <= target:
                hi = mid
            else:
                lo = mid
        sigma = hi
    # the continuous curve at Delta2_eff holds a fortiori (a check, not the argument)
    if analytic_gaussian_delta(eps, sigma, eff) > target:  # pragma: no cover
        raise RuntimeError("certified sigma is below the analytic Gaussian sigma")
    rho = _opendp_map("gaussian", dim, sigma, k, delta2)
    # OpenDP's rounding-inflated sensitivity must not exceed ours: rho <= eff^2 / (2 sigma^2).
    if rho > (eff / sigma) ** 2 / 2.0 * (1.0 + 1e-9):  # pragma: no cover
        raise RuntimeError("OpenDP's zCDP map exceeds the sensitivity used for calibration")
    zcdp_delta = _opendp_zcdp_delta(dim, sigma, k, delta2, eps)
    if not zcdp_delta <= target:  # pragma: no cover - the same map as the search
        raise RuntimeError("OpenDP does not certify the calibrated Gaussian delta")
    return Calibrated("gaussian", eps, delta, eff, sigma, dim, delta2, k, rho, zcdp_delta)


def _check_dim(dim) -> int:
    if isinstance(dim, bool) or not isinstance(dim, (int, np.integer)) or int(dim) < 1:
        raise ValueError(f"dim must be a positive int, got {dim!r}")
    return int(dim)


def calibrate(mechanism: str, lo, hi, epsilon: float, delta: float = 0.0,
              noise_dims=None) -> Calibrated:
    """Calibrate ``mechanism`` for the noised dimensions of the public box ``[lo, hi]``."""
    lo, hi = check_bounds(lo, hi)
    m = _mask(noise_dims, lo.size)
    dim = int(m.sum())
    if mechanism == "laplace":
        if delta not in (0, 0.0, None):
            raise ValueError("laplace is pure epsilon-DP: delta must be 0")
        return calibrate_laplace(epsilon, l1_sensitivity(lo, hi, m), dim)
    if mechanism == "gaussian":
        return calibrate_gaussian(epsilon, delta, l2_sensitivity(lo, hi, m), dim)
    raise ValueError(f"unknown mechanism {mechanism!r}; expected one of {MECHANISMS}")


# --------------------------------------------------------------------------------------------
# sampling


@functools.lru_cache(maxsize=128)
def _measurement(mechanism: str, dim: int, scale: float, k: int):
    """OpenDP measurement for (mechanism, dim, scale, k), built once and reused."""
    return _build_measurement(mechanism, dim, scale, k)


def _build_measurement(mechanism: str, dim: int, scale: float, k: int):
    import opendp.prelude as dp

    dp.enable_features(*OPENDP_FEATURES)
    domain = dp.vector_domain(dp.atom_domain(T=float, nan=False), size=dim)
    if mechanism == "laplace":
        return dp.m.make_laplace(domain, dp.l1_distance(T=float), scale=scale, k=k)
    if mechanism == "gaussian":
        return dp.m.make_gaussian(domain, dp.l2_distance(T=float), scale=scale, k=k)
    raise ValueError(f"unknown mechanism {mechanism!r}")


def _opendp_map(mechanism: str, dim: int, scale: float, k: int, d_in: float) -> float:
    return float(_measurement(mechanism, dim, scale, k).map(d_in))


def _opendp_zcdp_delta(dim: int, scale: float, k: int, d_in: float, epsilon: float) -> float:
    import opendp.prelude as dp

    approx = dp.c.make_zCDP_to_approxDP(_measurement("gaussian", dim, scale, k))
    return float(approx.map(d_in).delta(epsilon))


def _certified_gaussian_delta(dim: int, scale: float, k: int, d_in: float, epsilon: float) -> float:
    """OpenDP's certified delta(epsilon) of its discrete Gaussian measurement (zCDP map, then
    ``make_zCDP_to_approxDP``), without filling the measurement cache (calibration search)."""
    import opendp.prelude as dp

    approx = dp.c.make_zCDP_to_approxDP(_build_measurement("gaussian", dim, scale, k))
    return float(approx.map(d_in).delta(epsilon))


@functools.lru_cache(maxsize=4096)
def certified_gaussian_delta(epsilon: float, sigma: float, sensitivity: float) -> float:
    """OpenDP's certified delta(epsilon) of one discrete Gaussian release with noise ``sigma`` whose
    inputs are at most ``sensitivity`` apart in L2, lattice rounding INCLUDED (as in
    ``Calibrated.sensitivity``, i.e. Delta2_eff). The accountant checks a Gaussian charge with it.

    It is the chain :func:`calibrate_gaussian` uses (``make_gaussian``'s zCDP map, then
    ``make_zCDP_to_approxDP``; :func:`_certified_gaussian_delta`), run on a 1-vector at the finest
    lattice 2^-1074, where OpenDP's rounding slack is 0: OpenDP then certifies
    rho = sensitivity^2 / (2 sigma^2) (by its own map). The sampled release
    (d coordinates, lattice 2^k) is rho_r-zCDP with rho_r = (Delta2 + sqrt(d) * 2^k)^2 / (2 sigma^2)
    <= Delta2_eff^2 / (2 sigma^2), and delta(epsilon) grows with rho, so this delta is at least the
    release's own certified delta (``Calibrated.opendp_zcdp_delta``)."""
    return _certified_gaussian_delta(1, float(sigma), _K_MIN_F64, float(sensitivity), float(epsilon))


def _opendp_sampler_name(mechanism: str) -> str:
    return f"opendp.measurements.make_{mechanism}"


TEST_MODE_SAMPLER = "numpy.random.PCG64 (test mode, NOT DP)"


@dataclass(frozen=True, eq=False)
class Noised:
    """One noisy release. ``z`` is the released (noisy) vector; the rest are facts for the audit.

    ``test_mode`` is True only when the noise came from the seeded, non-DP test path; the audit
    must say so. ``dp_scope`` is set by :class:`LatentMechanism` (subset rule).
    """

    z: np.ndarray = field(repr=False)
    calibrated: Calibrated
    test_mode: bool
    sampler: str
    dp_scope: str = "face-latent"

    def audit_fields(self) -> dict:
        """Parameters only: no latent, no noise, no seed."""
        c = self.calibrated
        return {
            "mechanism": c.mechanism, "epsilon": c.epsilon, "delta": c.delta,
            "sensitivity": c.sensitivity, "noise_scale": c.noise_scale,
            "dp_scope": self.dp_scope, "test_mode": self.test_mode, "sampler": self.sampler,
        }


def add_noise(z_clipped, calibrated: Calibrated, *, test_seed: int | None = None) -> Noised:
    """Add the calibrated noise to an ALREADY CLIPPED vector of length ``calibrated.dim``.

    Default (``test_seed=None``): OpenDP's exact sampler with its OS-seeded CSPRNG; no seed
    exists. ``test_seed=<int>``: numpy PCG64 floating-point noise, deterministic, NOT DP; the
    result carries ``test_mode=True``. Never pass the anonymizer's ``rng`` here.
    """
    z = _as_vector(z_clipped, "z_clipped")
    if z.size != calibrated.dim:
        raise ValueError(f"vector has {z.size} dimensions, calibration is for {calibrated.dim}")
    if not np.all(np.isfinite(z)):
        raise ValueError("add_noise needs a finite (clipped) vector")
    if calibrated.mechanism not in MECHANISMS:
        raise ValueError(f"unknown mechanism {calibrated.mechanism!r}")

    if test_seed is None:
        meas = _measurement(calibrated.mechanism, calibrated.dim, calibrated.noise_scale,
                            calibrated.granularity_exponent)
        out = np.asarray(meas(z.tolist()), dtype=np.float64)
        out.setflags(write=False)
        return Noised(out, calibrated, False, _opendp_sampler_name(calibrated.mechanism))

    if isinstance(test_seed, bool) or not isinstance(test_seed, (int, np.integer)):
        raise TypeError("test_seed must be an int (test mode) or None (DP default)")
    gen = np.random.Generator(np.random.PCG64(int(test_seed)))
    if calibrated.mechanism == "laplace":
        noise = gen.laplace(0.0, calibrated.noise_scale, size=z.size)
    else:
        noise = gen.normal(0.0, calibrated.noise_scale, size=z.size)
    out = z + noise
    out.setflags(write=False)
    return Noised(out, calibrated, True, TEST_MODE_SAMPLER)


class LatentMechanism:
    """Clip -> noise (on ``noise_dims``) -> replace the rest by public values, built once.

    Build it once per anonymizer (bounds checked, calibration and OpenDP measurement made in
    ``__init__``), then call it per face. ``public_values`` (e.g. the public mean) replaces the
    dimensions outside ``noise_dims``; without it those pass through and ``dp_scope`` is
    ``"heuristic"``.
    """

    def __init__(self, lo, hi, *, mechanism: str, epsilon: float, delta: float = 0.0,
                 noise_dims=None, public_values=None):
        self.lo, self.hi = check_bounds(lo, hi)
        self.mask = _mask(noise_dims, self.lo.size)
        self.partial = not bool(self.mask.all())
        self.public_values = None
        if public_values is not None:
            pv = _as_vector(public_values, "public_values")
            if pv.shape != self.lo.shape or not np.all(np.isfinite(pv)):
                raise ValueError("public_values must be finite and shaped like the bounds")
            self.public_values = pv
        self.dp_scope: Scope = scope_for(self.mask, self.public_values is not None)
        self.calibrated = calibrate(mechanism, self.lo, self.hi, epsilon, delta, self.mask)
        _measurement(self.calibrated.mechanism, self.calibrated.dim,
                     self.calibrated.noise_scale, self.calibrated.granularity_exponent)

    def __call__(self, z, *, test_seed: int | None = None) -> Noised:
        c = clip(z, self.lo, self.hi)
        noised = add_noise(c[self.mask], self.calibrated, test_seed=test_seed)
        out = c.copy()
        out[self.mask] = noised.z
        if self.partial and self.public_values is not None:
            out[~self.mask] = self.public_values[~self.mask]
        out.setflags(write=False)
        return Noised(out, self.calibrated, noised.test_mode, noised.sampler, self.dp_scope)

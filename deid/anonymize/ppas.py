"""PPAS: AnonymousNet's privacy-preserving attribute selection (Li & Lin 2019, Algorithm 1),
per face, with a differentially private release of each attribute.

For each attribute E of one face (its estimate from an ``attribute`` plug-in,
:mod:`deid.attributes`) and its PUBLIC reference distribution S (the attribute over a public
reference set, never over the records being anonymized):

1. **t-closeness** (Algorithm 1, lines 4-9): the distance ``d(S, S_E)`` between the reference
   and the face's attribute distribution S_E -- with ``compare: point`` (default) the point mass
   on the estimated value, with ``compare: soft`` the estimator's probabilities -- is
   *total variation* (half the L1 distance) for unordered attributes and the *earth mover's
   distance* for ordered ones (age, yaw, pitch bands: the L1 distance of the cumulative
   distributions divided by k - 1, so both lie in [0, 1]). ``d <= t``: the value is kept
   (E); otherwise it is flipped (not-E): to the reference's most probable value other than the
   estimate (for a binary attribute: the other value).
   With a point estimate, TV is ``1 - S(value)``: a value is kept when at least ``1 - t`` of
   the public population has it.
2. **Perturbation** (line 11): k-ary randomized response with the attribute's epsilon: the
   selected value is released with probability ``e^eps / (e^eps + k - 1)``, each other value
   with ``1 / (e^eps + k - 1)``.

What the epsilon covers: the released value of each attribute is epsilon-DP with respect to
the value that went into step 2, for ANY two values (the discrete metric; OpenDP's
``make_randomized_response`` is proved for this, and any function of the face before it --
the estimator, the t-closeness step -- is pre-processing, so the release is epsilon-DP in the
face's attribute, whatever it is). A face's attributes together are ``sum(eps_i)``-DP (pure
composition), and the ledger composes them with the subject's other releases (dp-image) by
their exact RDP curves (:mod:`deid.privacy.accountant`, mechanism ``kary_rr``). It does NOT
cover anything else of the image: an output image synthesized from the released attributes is
post-processing of them only if nothing else of the face goes into it.

Sampling follows dp-image (:mod:`deid.privacy.mechanisms`): on the default path the draw is
OpenDP's ``make_randomized_response`` (its own CSPRNG, OS-seeded; no seed exists), with the
keep probability calibrated so that OpenDP's privacy map certifies ``<= epsilon`` (float
rounding can put ``log(p (k-1) / (1-p))`` one ulp above it). A deterministic TEST MODE
(``test_seed=<int>``) draws with numpy's PCG64 instead; it is NOT DP and the result says so
(``Selection.test_mode``). The run's ``rng`` is never used for the draw.

Nothing here writes a value anywhere: :func:`attribute_facts` is what a method may put in a
face's facts (names, k, epsilon), never the estimates, the kept/flipped decision (a function
of the true value, released without noise) or a seed.
"""

from __future__ import annotations

import functools
import math
from dataclasses import dataclass
from typing import Literal, Mapping

import numpy as np
from pydantic import BaseModel, ConfigDict, Field

from deid.attributes.base import AttributeSpec, Estimate
from deid.facts import DpRelease

OPENDP_FEATURES = ("contrib",)
SAMPLER = "opendp.measurements.make_randomized_response"
TEST_MODE_SAMPLER = "numpy.random.PCG64 (test mode, NOT DP)"


class AttributePolicy(BaseModel):
    model_config = ConfigDict(extra="forbid")

    epsilon: float = Field(..., gt=0, le=50, description="epsilon of this attribute's randomized response")
    t: float = Field(0.5, ge=0.0, le=1.0, description="t-closeness threshold: the value is kept when its "
                     "distance to the public reference is at most t, else flipped")
    distance: Literal["auto", "tv", "emd"] = Field("auto", description="tv (total variation) or emd (earth "
                                                   "mover's, ordered values); auto: emd for ordered attributes")


class PpasParams(BaseModel):
    model_config = ConfigDict(extra="forbid")

    attributes: dict[str, AttributePolicy] = Field(..., min_length=1, description="the attributes released, "
                                                   "each with its epsilon and t")
    compare: Literal["point", "soft"] = Field("point", description="t-closeness of the point estimate (point) "
                                              "or of the estimator's probabilities (soft)")


@dataclass(frozen=True)
class Reference:
    """A public reference distribution of one attribute (and where it came from, for the docs)."""

    spec: AttributeSpec
    probs: tuple[float, ...]
    source: str = ""

    def __post_init__(self) -> None:
        p = np.asarray(self.probs, dtype=np.float64)
        if p.shape != (self.spec.k,) or np.any(p < 0) or not np.isfinite(p).all() or not abs(p.sum() - 1) < 1e-6:
            raise ValueError(f"reference of {self.spec.name!r}: {self.spec.k} probabilities summing to 1 expected, "
                             f"got {self.probs}")
        object.__setattr__(self, "probs", tuple(float(x) for x in p / p.sum()))


def total_variation(p, q) -> float:
    return float(0.5 * np.abs(np.asarray(p, float) - np.asarray(q, float)).sum())


def earth_movers(p, q) -> float:
    """EMD between two distributions over k ordered values one step apart, divided by k - 1."""
    p, q = np.asarray(p, float), np.asarray(q, float)
    return float(np.abs(np.cumsum(p - q)[:-1]).sum() / (len(p) - 1))


def distance(spec: AttributeSpec, policy: AttributePolicy, p, q) -> float:
    kind = policy.distance if policy.distance != "auto" else ("emd" if spec.ordered else "tv")
    return earth_movers(p, q) if kind == "emd" else total_variation(p, q)


def flip(value: int, reference: Reference) -> int:
    """not-E: the reference's most probable value other than ``value`` (ties: the first)."""
    order = sorted(range(reference.spec.k), key=lambda i: (-reference.probs[i], i))
    return next(i for i in order if i != value)


def keep_probability(epsilon: float, k: int) -> float:
    """The largest keep probability <= e^eps / (e^eps + k - 1) whose OpenDP privacy map is <= eps."""
    return _keep_probability(float(epsilon), int(k))


@functools.lru_cache(maxsize=256)
def _keep_probability(eps: float, k: int) -> float:
    p = math.exp(eps) / (math.exp(eps) + k - 1)
    for _ in range(64):
        if _measurement(k, p).map(1) <= eps:
            return p
        p = math.nextafter(p, 0.0)
    raise RuntimeError(f"OpenDP does not certify randomized response over {k} values at epsilon {eps}")  # pragma: no cover


@functools.lru_cache(maxsize=256)
def _measurement(k: int, p: float):
    import opendp.prelude as dp

    dp.enable_features(*OPENDP_FEATURES)
    return dp.m.make_randomized_response(categories=[str(i) for i in range(k)], prob=p)


def rr_release(epsilon: float, k: int) -> DpRelease:
    """The ledger facts of one k-ary randomized response at ``epsilon``: mechanism ``kary_rr``,
    sensitivity 1, noise_scale = the probability q of a uniform draw (p_keep = 1 - q + q / k)."""
    p = keep_probability(epsilon, k)
    q = (1.0 - p) * k / (k - 1)
    return DpRelease("kary_rr", float(epsilon), 0.0, 1.0, q, int(k))


def randomized_response(value: int, epsilon: float, k: int, *, test_seed: int | None = None,
                        _gen: np.random.Generator | None = None) -> int:
    """One k-ary randomized response of ``value`` (an index in range(k))."""
    if not 0 <= int(value) < k:
        raise ValueError(f"value index {value} out of range for {k} values")
    p = keep_probability(epsilon, k)
    if test_seed is None and _gen is None:
        return int(_measurement(k, p)(str(int(value))))
    gen = _gen if _gen is not None else np.random.Generator(np.random.PCG64(int(test_seed)))
    if gen.random() < p:
        return int(value)
    return int(gen.choice([i for i in range(k) if i != int(value)]))


@dataclass(frozen=True)
class Selection:
    """What PPAS released for one face: ``released`` maps attribute -> released value (a label);
    ``releases`` holds one :class:`DpRelease` per attribute, in ``names`` order, for the ledger."""

    released: Mapping[str, str]
    names: tuple[str, ...]
    releases: tuple[DpRelease, ...]
    test_mode: bool
    sampler: str

    @property
    def epsilon(self) -> float:
        """The face's attributes together: the sum of their epsilons (pure composition)."""
        return math.fsum(r.epsilon for r in self.releases)


def selected(estimate: Estimate | None, reference: Reference, policy: AttributePolicy,
             compare: str = "point") -> int:
    """Steps 1 of PPAS for one attribute: the value kept or flipped (no noise yet). A missing
    estimate is the reference itself (distance 0): its most probable value is kept."""
    spec = reference.spec
    if estimate is None:
        return int(np.argmax(reference.probs))
    if estimate.spec.values != spec.values:
        raise ValueError(f"attribute {spec.name!r}: the estimate's values {estimate.spec.values} are not the "
                         f"reference's {spec.values}")
    mine = estimate.probs if compare == "soft" else Estimate.point(spec, estimate.value).probs
    return estimate.value if distance(spec, policy, reference.probs, mine) <= policy.t else flip(estimate.value,
                                                                                                   reference)


def select(estimates: Mapping[str, Estimate | None], reference: Mapping[str, Reference], params: PpasParams | dict,
           rng=None, *, test_seed: int | None = None) -> tuple[dict[str, str], Selection]:
    """PPAS for one face: ``(released attributes, Selection)``.

    ``estimates``: attribute -> :class:`Estimate` (or None: not estimated); ``reference``:
    attribute -> public :class:`Reference`; ``params``: :class:`PpasParams`. Every attribute of
    ``params.attributes`` is released (a missing estimate releases a draw around the reference's
    mode, so that whether a face was estimated is not revealed without noise). ``rng`` is
    accepted for the method interface and not used: the draw is OpenDP's (see the module
    docstring); ``test_seed`` selects the non-DP test mode. Charge ``Selection.releases`` to the
    face's subject before the values are used."""
    del rng
    params = params if isinstance(params, PpasParams) else PpasParams.model_validate(params)
    gen = None if test_seed is None else np.random.Generator(np.random.PCG64(int(test_seed)))
    released, releases, names = {}, [], []
    for name, policy in params.attributes.items():
        if name not in reference:
            raise ValueError(f"PPAS attribute {name!r} has no public reference distribution "
                             f"(references: {', '.join(sorted(reference)) or 'none'})")
        ref = reference[name]
        value = selected(estimates.get(name), ref, policy, params.compare)
        out = randomized_response(value, policy.epsilon, ref.spec.k, _gen=gen)
        released[name] = ref.spec.values[out]
        releases.append(rr_release(policy.epsilon, ref.spec.k))
        names.append(name)
    sel = Selection(dict(released), tuple(names), tuple(releases), gen is not None,
                    TEST_MODE_SAMPLER if gen is not None else SAMPLER)
    return dict(released), sel


def attribute_facts(selection: Selection) -> tuple[str, list[dict]]:
    """The ``FaceFacts.extra`` entry of a face's attribute release: ``("attributes", [{name,
    categories, epsilon, mechanism}, ...])`` -- never the estimates or the kept/flipped decision."""
    return ("attributes", [{"name": n, "categories": r.categories, "epsilon": r.epsilon, "mechanism": r.mechanism}
                           for n, r in zip(selection.names, selection.releases)])

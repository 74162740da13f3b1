"""What happened to one face: the frozen facts every anonymization method returns.

Contract (the dp-accounting style: plain frozen data that says exactly what happened):

* A method returns one :class:`FaceFacts` per face it was given, in the order of the faces.
* :class:`DpRelease` is the DP part of a face's facts: the mechanism, its (epsilon, delta),
  the L1/L2 sensitivity of the clipped latent and the noise scale. A DP method knows it before
  any noise is drawn (``Anonymizer.release``), so the ledger is charged from the same object
  the facts carry.
* Consumers derive what they need from these facts by one function each, and from nothing
  else: the ledger charge (:meth:`deid.privacy.accountant.Charge.of`), the audit row's face
  entry (:func:`deid.audit.rows.face_row`, through :meth:`FaceFacts.audit_fields`) and the
  run's per-record DP columns (:meth:`FaceFacts.record_fields`).
* ``extra`` holds further facts as (name, JSON value) pairs, for facts later methods add
  (residual faces, attributes); it never holds embeddings, latents, noise or seeds. Released
  attributes are listed by name, number of values and epsilon
  (:func:`deid.anonymize.ppas.attribute_facts`), never with the estimated (true) values.
* A face may be released by several DP releases at once (the ``attribute`` method: one k-ary
  randomized response per attribute): ``releases`` holds them all and ``dp`` is None;
  :attr:`FaceFacts.charges` is the face's charges either way, and the audit's per-face
  ``epsilon`` / ``delta`` are their sums (pure composition; every ``kary_rr`` has delta 0).

This module imports nothing from deid.
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import Any, Mapping

#: What a DP guarantee covers: ``none`` (not DP), ``face-latent`` (the face region that passes
#: through the latent), ``heuristic`` (noise on part of the latent while the rest passes through),
#: ``attributes`` (the released attribute values only, not the image: the ``attribute`` method)
SCOPES = ("none", "face-latent", "heuristic", "attributes")


@dataclass(frozen=True)
class DpRelease:
    """One noisy release of one face, as calibrated: what the ledger is charged.

    ``categories``: k of a ``kary_rr`` release (randomized response of one attribute over k
    values, :mod:`deid.anonymize.ppas`; ``noise_scale`` is then the probability of a uniform
    draw); ``None`` for the latent mechanisms."""

    mechanism: str
    epsilon: float
    delta: float
    sensitivity: float
    noise_scale: float
    categories: int | None = None


_DP_FIELDS = ("epsilon", "delta", "mechanism", "sensitivity", "noise_scale")


def _summary(releases: tuple[DpRelease, ...]) -> dict:
    """The flat facts of several releases of one face: epsilon and delta summed (pure
    composition), the mechanism(s), the common sensitivity; no single noise scale."""
    import math

    mechs = sorted({r.mechanism for r in releases})
    sens = {r.sensitivity for r in releases}
    return {"epsilon": math.fsum(r.epsilon for r in releases), "delta": math.fsum(r.delta for r in releases),
            "mechanism": "+".join(mechs), "sensitivity": sens.pop() if len(sens) == 1 else None,
            "noise_scale": None}


@dataclass(frozen=True)
class FaceFacts:
    method: str
    scope: str = "none"
    dp: DpRelease | None = None
    test_mode: bool = False          # noise from the seeded, non-DP test path (never in a release)
    extra: tuple[tuple[str, Any], ...] = ()
    releases: tuple[DpRelease, ...] = ()  # several releases of one face (then dp is None)

    def __post_init__(self) -> None:
        if self.scope not in SCOPES:
            raise ValueError(f"scope must be one of {SCOPES}, got {self.scope!r}")
        if isinstance(self.extra, Mapping):
            object.__setattr__(self, "extra", tuple(sorted(self.extra.items())))
        object.__setattr__(self, "releases", tuple(self.releases))
        if self.releases and self.dp is not None:
            raise ValueError("a face's facts carry one release (dp) or several (releases), not both")

    @property
    def charges(self) -> tuple[DpRelease, ...]:
        """Every DP release of this face (what the ledger is charged): ``releases``, or ``(dp,)``."""
        return self.releases or ((self.dp,) if self.dp is not None else ())

    # flat views, for code and tests that read one fact
    @property
    def dp_scope(self) -> str:
        return self.scope

    def __getattr__(self, name: str) -> Any:
        """Flat views of the DP release (``facts.epsilon``, ...): None for a non-DP face."""
        if name in _DP_FIELDS:
            if self.releases:
                return _summary(self.releases)[name]
            return None if self.dp is None else getattr(self.dp, name)
        raise AttributeError(name)

    def get(self, name: str, default: Any = None) -> Any:
        """One of the ``extra`` facts."""
        return dict(self.extra).get(name, default)

    def audit_fields(self) -> dict:
        """The facts' columns of the audit's per-face struct (deid.audit.schema.FACE)."""
        out = {name: getattr(self, name) for name in _DP_FIELDS}
        attrs = self.get("attributes")
        out["attributes"] = None if attrs is None else [
            {"name": a["name"], "categories": a["categories"], "epsilon": a["epsilon"], "mechanism": a["mechanism"]}
            for a in attrs]
        return out

    @staticmethod
    def record_fields(facts: "list[FaceFacts]", default_scope: str, dp: bool) -> dict:
        """The record-level audit columns the faces' facts decide: ``dp_scope`` (the first
        face's, else the method's) and, for DP methods, ``dp_test_mode`` (any face's noise
        came from the test path)."""
        return {"dp_scope": facts[0].scope if facts else default_scope,
                "dp_test_mode": any(f.test_mode for f in facts) if dp else None}

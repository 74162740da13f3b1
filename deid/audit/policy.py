"""The release decision: the facts of a record in, its status out.

Contract: :func:`decide` is the only place that turns what happened to a record (its faces,
the identity checks, the methods' facts) into ``released``, ``quarantined`` or ``dropped``.

* no face found (neither by the detector nor by the residual-face gate): ``checks.no_face``;
* a face the residual-face gate found on the output is still there, unhandled (after its
  rounds, or with ``checks.residual: quarantine``): quarantined;
* any face failed its identity check: ``checks.on_fail`` (a face too small for the check,
  ``checks.min_face_px``, was treated irreversibly and has no verdict);
* otherwise the record is released, except that faces whose noise came from the seeded test
  path (``test_mode``) are never released: they are quarantined, whatever the checks said.

For DP methods the checks are measurements made after the draw, which is charged anyway:
quarantining on them is outside the DP guarantee (docs/privacy.md).
"""

from __future__ import annotations

from dataclasses import dataclass

#: manifest action -> audit status
STATUS_OF = {"keep": "released", "quarantine": "quarantined", "drop": "dropped"}


@dataclass(frozen=True)
class Decision:
    status: str              # released | quarantined | dropped
    reason: str | None = None


def decide(checks_cfg, n_faces: int, facts: list, checks: list, uri: str, residual=None) -> Decision:
    """``checks_cfg``: the manifest's ``checks`` section; ``facts`` one FaceFacts per face;
    ``checks`` one FaceCheck (or None where no check ran) per face; ``residual`` the gate's
    :class:`deid.audit.residual.GateResult` (None when the gate is off)."""
    if residual is not None and residual.unresolved:
        return Decision("quarantined", f"{uri}: {residual.unresolved} face(s) on the output that no anonymized region "
                                       "covers (residual-face gate); quarantined, never released")
    if n_faces == 0 and not (residual is not None and residual.handled):
        action = checks_cfg.no_face
    elif any(c is not None and c.passed is False for c in checks):  # not applicable: no verdict
        action = checks_cfg.on_fail
    else:
        action = "keep"
    if action == "keep" and any(f.test_mode for f in facts):
        # seeded test noise carries no guarantee: it never reaches the release
        return Decision("quarantined", f"{uri}: anonymize.params.test_seed is set: the noise is seeded test noise, "
                                       "not DP; quarantined, never released")
    return Decision(STATUS_OF[action])

"""Audit rows: the one place a record's row and a face's entry are made (deid.audit.schema).

* :class:`RunContext`: the run-level columns every row of a run carries.
* :func:`record_row`: a record's row before anything is known about it (``failed`` until a
  stage says otherwise), for the stage and for the driver's rows alike (refused, withheld,
  lost and skipped records).
* :func:`face_row`: a face's entry, from the detection, the method's facts
  (:meth:`deid.facts.FaceFacts.audit_fields`), the identity check and the subject's spent
  budget. Nothing else writes these columns.
"""

from __future__ import annotations

import datetime as _dt
from dataclasses import dataclass, field

from deid import __version__
from deid.audit.schema import AUDIT_SCHEMA
from deid.facts import FaceFacts

_NO_FACTS = FaceFacts(method="").audit_fields()  # a face nothing was done to: every fact null


@dataclass
class RunContext:
    """What every actor needs to know about the run, besides the manifest."""

    run_id: str
    config_sha256: str
    naming_key_id: str | None
    job_sha256: str | None = None
    model_fingerprints: list[dict] = field(default_factory=list)


def now() -> _dt.datetime:
    return _dt.datetime.now(_dt.timezone.utc)


def record_row(ctx: RunContext, record_id: str, uri: str, *, method: str, params_json: str, dp_scope: str | None,
               status: str = "failed", error_code: str | None = None, error: str | None = None) -> dict:
    row = dict.fromkeys(AUDIT_SCHEMA.names)
    row.update(
        run_id=ctx.run_id, record_id=record_id, input_uri=uri, status=status, error_code=error_code, error=error,
        method=method, params_json=params_json, dp_scope=dp_scope, tool_version=__version__,
        config_sha256=ctx.config_sha256, job_sha256=ctx.job_sha256, naming_key_id=ctx.naming_key_id,
        model_fingerprints=ctx.model_fingerprints,
    )
    return row


def face_row(face, facts=None, check=None, spent_after: float | None = None) -> dict:
    """One face's audit entry; ``facts`` is the method's :class:`deid.facts.FaceFacts` (None
    when the face was not anonymized), ``check`` its :class:`deid.audit.check.FaceCheck`."""
    return {
        "box": list(face.box),
        "det_score": face.score,
        "id_distance": None if check is None else check.id_distance,
        "still_detected": None if check is None else check.still_detected,
        "passed": None if check is None else check.passed,
        "check": None if check is None else check.label,
        **(_NO_FACTS if facts is None else facts.audit_fields()),
        "subject_spent_after": spent_after,
        "treatment": treatment_of(facts),
    }


def treatment_of(facts) -> str | None:
    """What was done to a face (the audit's ``treatment``): the method's name, ``mask`` where the
    method masked it instead (its facts say ``masked``), None when nothing was done."""
    if facts is None or not facts.method:
        return None
    return "mask" if facts.get("masked") else facts.method

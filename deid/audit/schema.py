"""The audit manifest schema: one row per input record per run (docs/audit.md).

Invariants: ``count(rows of a run) == count(inputs listed for that run)``; no embedding,
latent, noise, seed or subject name is ever a column; error messages name the file by
its input URI (the audit is the data owner's record, not part of the release).

Columns are only ever added, nullable (``input_target`` came later): a dataset read with
this schema fills a column that an older part lacks with nulls (:func:`deid.audit.writer.read_audit`).
"""

from __future__ import annotations

import pyarrow as pa

STATUSES = ("released", "quarantined", "dropped", "failed", "budget_exhausted", "skipped")

BOX = pa.list_(pa.int32(), 4)

ATTRIBUTE = pa.struct([("name", pa.string()), ("categories", pa.int32()), ("epsilon", pa.float64()),
                       ("mechanism", pa.string())])

FACE = pa.struct(
    [
        ("box", BOX),                       # x0, y0, x1, y1 in input pixels (after EXIF rotation)
        ("det_score", pa.float32()),
        ("id_distance", pa.float32()),      # null when checks are off
        ("still_detected", pa.bool_()),     # null when checks or re-detection are off
        ("passed", pa.bool_()),             # id_distance >= checks.min_identity_distance
        ("check", pa.string()),             # measured | not_applicable (smaller than checks.min_face_px) | cut_by_frame | null: off
        ("epsilon", pa.float64()),          # DP methods only
        ("delta", pa.float64()),
        ("mechanism", pa.string()),
        ("sensitivity", pa.float64()),
        ("noise_scale", pa.float64()),
        ("subject_spent_after", pa.float64()),
        # the attribute method: each released attribute's name, number of values, epsilon and
        # mechanism (never its estimated or released value); null for the other methods
        ("attributes", pa.list_(ATTRIBUTE)),
        # what was done to the face: the run's method (e.g. synthetic-swap), or mask / pixelate (the
        # small-face and frame-cut treatment, or a face the method masked, e.g. no face mesh); null:
        # nothing (a withheld record), or an audit written before the field existed
        ("treatment", pa.string()),
    ]
)

TIMINGS = pa.struct(
    [
        ("read_ms", pa.float32()),
        ("decode_ms", pa.float32()),
        ("detect_ms", pa.float32()),
        ("anonymize_ms", pa.float32()),
        ("check_ms", pa.float32()),
        ("gate_ms", pa.float32()),
        ("write_ms", pa.float32()),
    ]
)

RESIDUAL_FACE = pa.struct(
    [
        ("box", BOX),                       # found on the output by the residual-face gate, output pixels
        ("det_score", pa.float32()),
        ("action", pa.string()),            # anonymized | masked | quarantined | unresolved
    ]
)

FINGERPRINT = pa.struct([("name", pa.string()), ("sha256", pa.string())])

NON_COMMERCIAL = pa.struct(
    [
        ("plugin", pa.string()),            # the plug-in whose weights are licensed for non-commercial use only
        ("field", pa.string()),             # where the manifest names it: detect.backend, latent.backend, ...
        ("weights", pa.string()),           # the weights' licence, as the plug-in declares it
    ]
)

AUDIT_SCHEMA = pa.schema(
    [
        ("run_id", pa.string()),
        ("record_id", pa.string()),
        ("input_uri", pa.string()),
        ("input_target", pa.string()),       # local inputs behind a symbolic link: the real path; else null
        ("input_sha256", pa.string()),
        ("status", pa.string()),
        ("error_code", pa.string()),
        ("error", pa.string()),
        ("output_uri", pa.string()),
        ("output_sha256", pa.string()),
        ("width", pa.int32()),
        ("height", pa.int32()),
        ("source_format", pa.string()),
        ("frames", pa.int32()),
        ("n_faces", pa.int32()),
        ("faces", pa.list_(FACE)),
        ("method", pa.string()),
        ("params_json", pa.string()),
        ("dp_scope", pa.string()),
        ("dp_test_mode", pa.bool_()),        # DP methods: noise came from the seeded, non-DP test path
        ("min_id_distance", pa.float32()),
        ("residual_detector", pa.string()),  # the gate's detector; null when checks.residual is off
        ("residual_faces", pa.list_(RESIDUAL_FACE)),  # faces no anonymized region covered, and what was done
        ("timings", TIMINGS),
        ("processed_at", pa.timestamp("ms", tz="UTC")),
        ("tool_version", pa.string()),
        ("config_sha256", pa.string()),
        ("job_sha256", pa.string()),         # manifest minus its run section: equal -> outputs interchangeable (resume)
        ("resumed_from", pa.string()),       # skipped rows: the run whose row stands for this record
        ("naming_key_id", pa.string()),
        ("model_fingerprints", pa.list_(FINGERPRINT)),
        # plug-ins with non-commercial weights this record went through, each accepted under
        # licences.accept_non_commercial; null: none
        ("non_commercial_accepted", pa.list_(NON_COMMERCIAL)),
    ]
)

AUDIT_COLUMNS = tuple(AUDIT_SCHEMA.names)


def rows_to_table(rows: list[dict]) -> pa.Table:
    return pa.Table.from_pylist(rows, schema=AUDIT_SCHEMA)

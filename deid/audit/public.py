"""A releasable audit: what an outside auditor needs, and nothing that links back to the inputs.

The private audit (``<audit.uri>/records``) is the data owner's record: it names every input
file (``input_uri``, free-text ``error`` messages), holds ``input_sha256`` (anyone with a public
copy of a photo could test whether it is in the dataset), and its ``record_id`` is a plain hash
of the input path. :func:`export_public` writes one Parquet file from it that keeps, per row:

* ``public_id``: HMAC-SHA256 of the record id under the naming secret (the secret
  ``output.naming: hash`` uses), first 32 hex digits: stable across runs of one job, so rows of
  a resumed run line up, and unlinkable to input names without the secret;
* the run and its provenance: ``run_id``, ``processed_at``, ``tool_version``, ``config_sha256``,
  ``job_sha256``, ``naming_key_id``, ``model_fingerprints``, ``resumed_from``;
* what was done: ``status``, ``error_code`` (the stable code, never the message), ``method``,
  ``params_json``, ``dp_scope``, ``dp_test_mode``, ``min_id_distance``, ``residual_detector``,
  ``residual_faces``, ``n_faces``, ``frames``, ``source_format``, ``width``, ``height``;
* per face: box, detector score, identity distance, still-detected, passed, check, epsilon,
  delta, mechanism, sensitivity, noise scale;
* for released rows only: ``output_path`` (the path relative to the release, which is public)
  and ``output_sha256`` (of the released file); null for every other status.

Dropped: ``record_id``, ``input_uri``, ``input_sha256``, ``error``, ``output_uri`` (it names the
quarantine and the store), ``timings``, and each face's ``subject_spent_after`` (running
per-subject totals would show which faces belong to one person).
"""

from __future__ import annotations

import hashlib
import hmac
import io
import posixpath

import fsspec
import pyarrow as pa
import pyarrow.compute as pc
import pyarrow.parquet as pq

from deid.audit.schema import AUDIT_SCHEMA, FACE
from deid.io.write import atomic_write

DROPPED = ("record_id", "input_uri", "input_sha256", "error", "output_uri", "timings")
DROPPED_FACE_FIELDS = ("subject_spent_after",)
PUBLIC_FACE = pa.struct([f for f in FACE if f.name not in DROPPED_FACE_FIELDS])

_KEPT = [f for f in AUDIT_SCHEMA if f.name not in DROPPED and f.name not in ("faces", "output_sha256")]
PUBLIC_SCHEMA = pa.schema(
    [pa.field("public_id", pa.string())]
    + _KEPT
    + [pa.field("faces", pa.list_(PUBLIC_FACE)), pa.field("output_path", pa.string()),
       pa.field("output_sha256", pa.string())],
    metadata={b"deid.audit": b"public",
              b"deid.audit.dropped": ",".join(DROPPED + tuple(f"faces.{f}" for f in DROPPED_FACE_FIELDS)).encode()},
)


def public_id(record_id: str, secret: bytes) -> str:
    return hmac.new(secret, b"deid-public-audit:" + record_id.encode("utf-8"), hashlib.sha256).hexdigest()[:32]


def _release_relative(uri: str | None, release_root: str) -> str | None:
    if not uri:
        return None
    root = release_root.rstrip("/") + "/"
    if uri.startswith(root):
        return uri[len(root):]
    return posixpath.basename(uri)  # a release moved since: keep only the name, never a location


def to_public(table: pa.Table, secret: bytes, release_root: str) -> pa.Table:
    """The public form of audit rows (see the module contract)."""
    table = table.select(AUDIT_SCHEMA.names).cast(AUDIT_SCHEMA)
    released = pc.equal(table.column("status"), "released").to_pylist()
    faces = [[{k: v for k, v in f.items() if k not in DROPPED_FACE_FIELDS} for f in (fs or [])] or fs
             for fs in table.column("faces").to_pylist()]
    out_uri = table.column("output_uri").to_pylist()
    out_sha = table.column("output_sha256").to_pylist()
    cols = {"public_id": pa.array([public_id(r, secret) for r in table.column("record_id").to_pylist()], pa.string())}
    for f in _KEPT:
        cols[f.name] = table.column(f.name)
    cols["faces"] = pa.array(faces, pa.list_(PUBLIC_FACE))
    cols["output_path"] = pa.array([_release_relative(u, release_root) if ok else None
                                    for u, ok in zip(out_uri, released)], pa.string())
    cols["output_sha256"] = pa.array([s if ok else None for s, ok in zip(out_sha, released)], pa.string())
    return pa.table(cols, schema=PUBLIC_SCHEMA)


def export_public(audit_uri: str, out_uri: str, secret: bytes, release_root: str, run_id: str | None = None,
                  storage_options: dict | None = None, out_storage_options: dict | None = None) -> dict:
    """Read the private audit (every run, or ``run_id``), write its public form to ``out_uri``
    (one Parquet file, written whole) and return counts for the caller to print."""
    from deid.audit.writer import read_audit

    table = read_audit(audit_uri, run_id=run_id, storage_options=storage_options)
    if table.num_rows == 0:
        raise ValueError(f"{audit_uri}: no audit rows{f' for run {run_id}' if run_id else ''} to export")
    public = to_public(table, secret, release_root)
    buf = io.BytesIO()
    pq.write_table(public, buf, compression="zstd")
    fs, path = fsspec.core.url_to_fs(out_uri, **(out_storage_options or {}))
    parent = posixpath.dirname(path.rstrip("/"))
    if parent:
        fs.makedirs(parent, exist_ok=True)
    atomic_write(fs, path, buf.getvalue())
    statuses = pc.value_counts(public.column("status")).to_pylist()
    return {"rows": public.num_rows, "runs": len(set(public.column("run_id").to_pylist())),
            "statuses": {d["values"]: d["counts"] for d in statuses}, "out": out_uri,
            "columns": public.column_names, "dropped": list(DROPPED)}

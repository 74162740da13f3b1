"""Resume: what earlier runs of the same job already committed, and what they left behind.

Contract:
* a record is *committed* when an earlier run of the same job (equal ``job_sha256``: the
  manifest without its ``run`` section) wrote a final row for it, and, when that row says
  ``released`` or ``quarantined``, the output it names still exists. A resumed run gives a
  committed record a ``skipped`` row (``resumed_from`` = the run whose row stands) and does
  not process it again, so nothing is charged twice for it;
* rows that do not commit a record: ``failed`` with a transient code (``lost``,
  ``read_error``, ``write_error``, ``internal_error``, and ``too_many_pixels_for_memory``, which
  depends on the workers' memory) or a listing refusal (``bad_name``, ``symlink_outside``,
  ``symlink``: judged again by the new run's listing), ``budget_exhausted`` (a cap may have been
  raised) and ``skipped`` rows themselves; such records are processed again;
* a record that is processed again may have left an output from an attempt whose audit
  row never reached disk (the run was killed in between): those paths travel with the
  record (``stale`` column) and the worker removes whichever of them is not its final
  output, so a record that ends quarantined leaves nothing at the release path;
* temporary files of interrupted local writes (``.deid-tmp-*``) under the release,
  quarantine and audit prefixes are removed before the run starts. Two runs must not write
  one output prefix at the same time (docs/cluster.md).

Resume keys on the input's relative path (``record_id``): after editing inputs in place,
run with ``--no-resume``.
"""

from __future__ import annotations

import logging
import os
import posixpath
from dataclasses import dataclass, field

import fsspec
import pyarrow as pa

from deid.audit.schema import AUDIT_SCHEMA
from deid.config.schema import Manifest
from deid.io.write import TMP_PREFIX, display_uri, is_local

log = logging.getLogger("deid")

#: failed rows that do not commit their record: transient failures, and the listing's refusals
#: (deid.io.listing), which every run judges again from its own listing at no cost (the usual
#: fix, replacing a link by the file it points to, keeps the record's path and id)
LISTING_CODES = frozenset({"bad_name", "symlink_outside", "symlink"})
# too_many_pixels_for_memory depends on the workers' memory, not on the file: a run on bigger workers retries it
RETRY_CODES = frozenset({"lost", "read_error", "write_error", "internal_error", "too_many_pixels_for_memory"}) | LISTING_CODES
_COLUMNS = ["run_id", "record_id", "status", "error_code", "output_uri", "output_sha256", "n_faces", "job_sha256",
            "processed_at"]


@dataclass
class Prior:
    committed: dict[str, dict] = field(default_factory=dict)   # record_id -> its standing row (subset)
    stale: dict[str, list[str]] = field(default_factory=dict)  # output stem -> existing output URIs
    swept_tmp: int = 0


def _ls_outputs(fs, root: str) -> dict[str, list[str]]:
    """Existing files under ``root`` by stem (path relative to root, extension removed)."""
    out: dict[str, list[str]] = {}
    try:
        paths = fs.find(root)
    except (FileNotFoundError, OSError):
        return out
    root = root.rstrip("/")
    for p in paths:
        rel = p[len(root) + 1:] if p.startswith(root + "/") else p
        base = posixpath.basename(rel)
        if base.startswith(TMP_PREFIX):
            continue
        stem = posixpath.splitext(rel)[0]
        out.setdefault(stem, []).append(p)
    return out


def sweep_tmp(manifest: Manifest) -> int:
    """Remove the temporary files that killed local writes leave (object stores leave none)."""
    n = 0
    targets = [(manifest.output.uri, manifest.output.storage_options),
               (manifest.quarantine_uri, manifest.output.storage_options),
               (manifest.audit_uri, manifest.audit.storage_options)]
    for uri, opts in targets:
        fs, root = fsspec.core.url_to_fs(uri, **opts)
        if not is_local(fs) or not os.path.isdir(root):
            continue
        for folder, _dirs, files in os.walk(root):
            for name in files:
                if name.startswith(TMP_PREFIX):
                    try:
                        os.unlink(os.path.join(folder, name))
                        n += 1
                    except FileNotFoundError:
                        pass
    if n:
        log.warning("removed %d temporary file(s) left by an interrupted run", n)
    return n


def standing_rows(audit_uri: str, storage_options: dict | None = None, job_sha256: str | None = None) -> pa.Table:
    """The row that stands for each record: the latest non-``skipped`` row (by run, then time),
    optionally among rows of one job. Columns: see ``_COLUMNS``."""
    import pyarrow.dataset as ds

    fs, root = fsspec.core.url_to_fs(audit_uri, **(storage_options or {}))
    records = f"{root.rstrip('/')}/records"
    empty = pa.schema([AUDIT_SCHEMA.field(c) for c in _COLUMNS]).empty_table()
    if not fs.exists(records):
        return empty
    dataset = ds.dataset(records, format="parquet", filesystem=fs, schema=AUDIT_SCHEMA)
    flt = ds.field("status") != "skipped"
    if job_sha256 is not None:
        flt = flt & (ds.field("job_sha256") == job_sha256)
    table = dataset.to_table(columns=_COLUMNS, filter=flt)
    if table.num_rows == 0:
        return empty
    df = table.to_pandas()
    df = df.sort_values(["run_id", "processed_at"], kind="stable").drop_duplicates("record_id", keep="last")
    return pa.Table.from_pandas(df.reset_index(drop=True), schema=empty.schema, preserve_index=False)


def load_prior(manifest: Manifest, use_audit: bool = True, sweep: bool = True) -> Prior:
    """What earlier runs of this job committed (``use_audit``), and which outputs already exist.
    ``sweep=False`` (dry runs) removes nothing."""
    prior = Prior(swept_tmp=sweep_tmp(manifest) if sweep else 0)
    out_fs, out_root = fsspec.core.url_to_fs(manifest.output.uri, **manifest.output.storage_options)
    q_fs, q_root = fsspec.core.url_to_fs(manifest.quarantine_uri, **manifest.output.storage_options)
    existing = {stem: [display_uri(out_fs, p) for p in ps] for stem, ps in _ls_outputs(out_fs, out_root).items()}
    for stem, paths in _ls_outputs(q_fs, q_root).items():
        existing.setdefault(stem, []).extend(display_uri(q_fs, p) for p in paths)
    present = {u for us in existing.values() for u in us}
    prior.stale = existing
    if not use_audit:
        return prior
    rows = standing_rows(manifest.audit_uri, manifest.audit.storage_options, manifest.job_sha256())
    for r in rows.to_pylist():
        status, code = r["status"], r["error_code"]
        if status in ("released", "quarantined"):
            ok = r["output_uri"] in present
        elif status == "failed":
            ok = code not in RETRY_CODES
        elif status == "dropped":
            ok = True
        else:  # budget_exhausted, or a status this version does not know
            ok = False
        if ok:
            prior.committed[r["record_id"]] = r
    return prior

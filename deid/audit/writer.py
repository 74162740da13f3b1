"""Write audit rows as Parquet parts under ``<audit.uri>/records/`` and the run summary.

Each part is written whole (atomically) under a name that carries the run id, so a
reader never sees half a part, and parts of several runs live side by side:
``pandas.read_parquet("<audit.uri>/records")`` reads every run; filter on ``run_id``.
"""

from __future__ import annotations

import io
import json
import time

import fsspec
import pyarrow as pa
import pyarrow.parquet as pq

from deid.audit.schema import AUDIT_SCHEMA
from deid.config.schema import join_uri
from deid.io.write import atomic_write


class AuditWriter:
    def __init__(self, audit_uri: str, run_id: str, storage_options: dict | None = None, rows_per_part: int = 50_000,
                 flush_seconds: float | None = None):
        self.audit_uri = audit_uri
        self.flush_seconds = flush_seconds
        self._last_flush = time.monotonic()
        self.run_id = run_id
        self.fs, self.root = fsspec.core.url_to_fs(audit_uri, **(storage_options or {}))
        self.rows_per_part = rows_per_part
        self._pending: list[pa.Table] = []
        self._pending_rows = 0
        self.parts: list[str] = []
        self.rows_written = 0

    @property
    def records_uri(self) -> str:
        return join_uri(self.audit_uri, "records")

    def add(self, table: pa.Table) -> None:
        if table.num_rows == 0:
            return
        self._pending.append(table.select(AUDIT_SCHEMA.names).cast(AUDIT_SCHEMA))
        self._pending_rows += table.num_rows
        if self._pending_rows >= self.rows_per_part or (
                self.flush_seconds is not None and time.monotonic() - self._last_flush >= self.flush_seconds):
            self.flush()

    def flush(self) -> None:
        self._last_flush = time.monotonic()
        if not self._pending:
            return
        table = pa.concat_tables(self._pending)
        self._pending, self._pending_rows = [], 0
        buf = io.BytesIO()
        pq.write_table(table, buf, compression="zstd")
        path = f"{self.root.rstrip('/')}/records/{self.run_id}-part-{len(self.parts):05d}.parquet"
        atomic_write(self.fs, path, buf.getvalue())
        self.parts.append(path)
        self.rows_written += table.num_rows

    def write_summary(self, summary: dict) -> None:
        blob = (json.dumps(summary, indent=2, sort_keys=True) + "\n").encode()
        atomic_write(self.fs, f"{self.root.rstrip('/')}/summaries/{self.run_id}.json", blob)
        atomic_write(self.fs, f"{self.root.rstrip('/')}/summary.json", blob)


def read_audit(audit_uri: str, run_id: str | None = None, storage_options: dict | None = None) -> pa.Table:
    """Read the audit dataset (all runs, or one)."""
    import pyarrow.dataset as ds

    fs, root = fsspec.core.url_to_fs(audit_uri, **(storage_options or {}))
    dataset = ds.dataset(f"{root.rstrip('/')}/records", format="parquet", filesystem=fs, schema=AUDIT_SCHEMA)
    if run_id is not None:
        return dataset.to_table(filter=ds.field("run_id") == run_id)
    return dataset.to_table()

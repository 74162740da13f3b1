"""Write audit rows as Parquet parts under ``<audit.uri>/records/`` and the run summary.

Each part is written whole (atomically) under a name that carries the run id, so a
reader never sees half a part, and parts of several runs live side by side:
``pandas.read_parquet("<audit.uri>/records")`` reads every run; filter on ``run_id``.

With a journal (deid.audit.journal) no row the writer accepted is lost when the audit location
fails: it stays in the driver's local journal until a later run replays it. :meth:`AuditWriter.probe`
checks, before a run releases anything, that the location takes a write.
"""

from __future__ import annotations

import io
import json
import logging
import time
import uuid

import fsspec
import pyarrow as pa
import pyarrow.parquet as pq

from deid.audit.schema import AUDIT_SCHEMA
from deid.config.schema import join_uri
from deid.io.write import TMP_PREFIX, atomic_write

log = logging.getLogger("deid")


class AuditWriteError(Exception):
    """The audit location cannot be written; ``uri`` is ``audit.uri``, ``reason`` the storage's own."""

    def __init__(self, uri: str, reason: str, what: str = "write"):
        self.uri, self.reason = uri, reason
        super().__init__(f"cannot {what} the audit at audit.uri = {uri}: {reason}")


def _reason(exc: BaseException) -> str:
    if isinstance(exc, OSError) and exc.strerror:
        where = f": {exc.filename}" if exc.filename else ""
        return f"{exc.strerror}{where}"
    return f"{type(exc).__name__}: {exc}".rstrip(": ")


def part_path(root: str, run_id: str, index: int) -> str:
    """Where audit part ``index`` of ``run_id`` goes (the same name on a replay: written once)."""
    return f"{root.rstrip('/')}/records/{run_id}-part-{index:05d}.parquet"


class AuditWriter:
    """Audit rows to Parquet parts. With a :class:`deid.audit.journal.AuditJournal`, every table
    is journaled before it is accepted, and its segment is dropped once its part is written.

    A failed write raises :class:`AuditWriteError` and leaves the writer *failed*: it writes
    nothing more to the audit location, and tables added later go to the journal only. When the
    journal itself fails (:class:`deid.audit.journal.JournalError`), what is pending is written
    to the audit location at once, and from then on every table is written as it comes."""

    def __init__(self, audit_uri: str, run_id: str, storage_options: dict | None = None, rows_per_part: int = 50_000,
                 flush_seconds: float | None = None, journal=None):
        self.audit_uri = audit_uri
        self.flush_seconds = flush_seconds
        self._last_flush = time.monotonic()
        self.run_id = run_id
        self.fs, self.root = fsspec.core.url_to_fs(audit_uri, **(storage_options or {}))
        self.rows_per_part = rows_per_part
        self.journal = journal
        self._pending: list[pa.Table] = []
        self._pending_rows = 0
        self.parts: list[str] = []
        self.rows_written = 0
        self.failed: AuditWriteError | None = None   # the audit location failed: journal only from here
        self.journal_failed: Exception | None = None  # the journal failed: straight to the audit from here

    @property
    def records_uri(self) -> str:
        return join_uri(self.audit_uri, "records")

    def probe(self) -> None:
        """Write and remove a probe object where the parts go, or raise :class:`AuditWriteError`
        naming ``audit.uri`` and the storage's reason. Local probes use the parts' own atomic
        write (a hidden temporary file, fsync, rename), so a folder that takes the probe takes the parts."""
        path = f"{self.root.rstrip('/')}/records/{TMP_PREFIX}probe-{uuid.uuid4().hex}"
        try:
            atomic_write(self.fs, path, b"deid audit write probe\n")
        except Exception as exc:  # noqa: BLE001 - whatever the storage raises, it is the reason
            raise AuditWriteError(self.audit_uri, _reason(exc)) from None
        try:
            self.fs.rm_file(path)
        except Exception as exc:  # noqa: BLE001 - parts need no delete; a left probe is hidden (dot name)
            log.warning("the audit write probe %s could not be removed (%s)", path, _reason(exc))

    def add(self, table: pa.Table) -> None:
        if table.num_rows == 0:
            return
        table = table.select(AUDIT_SCHEMA.names).cast(AUDIT_SCHEMA)
        if self.journal is not None and self.journal_failed is None:
            try:
                self.journal.append(len(self.parts), table)
            except Exception as exc:
                self.journal_failed = exc
                self._pending.append(table)
                self._pending_rows += table.num_rows
                self.flush()  # nowhere else to keep them
                raise
        self._pending.append(table)
        self._pending_rows += table.num_rows
        if self.journal_failed is not None or self._pending_rows >= self.rows_per_part or (
                self.flush_seconds is not None and time.monotonic() - self._last_flush >= self.flush_seconds):
            self.flush()

    @property
    def pending_rows(self) -> int:
        return self._pending_rows

    def flush(self) -> None:
        self._last_flush = time.monotonic()
        if not self._pending or self.failed is not None:
            return
        table = pa.concat_tables(self._pending)
        buf = io.BytesIO()
        pq.write_table(table, buf, compression="zstd")
        index = len(self.parts)
        path = part_path(self.root, self.run_id, index)
        try:
            atomic_write(self.fs, path, buf.getvalue())
        except Exception as exc:  # noqa: BLE001 - the rows stay pending (and journaled)
            self.failed = AuditWriteError(self.audit_uri, _reason(exc))
            raise self.failed from None
        self._pending, self._pending_rows = [], 0
        self.parts.append(path)
        self.rows_written += table.num_rows
        if self.journal is not None:  # also after the journal failed: its segment holds a subset of this part
            try:
                self.journal.done(index, table.num_rows)
            except OSError as exc:  # a segment left behind replays as this same part: harmless
                log.warning("audit journal segment %d not removed (%s)", index, _reason(exc))

    def write_part(self, run_id: str, index: int, table: pa.Table) -> None:
        """Write ``table`` as part ``index`` of ``run_id`` (the journal's replay)."""
        buf = io.BytesIO()
        pq.write_table(table.select(AUDIT_SCHEMA.names).cast(AUDIT_SCHEMA), buf, compression="zstd")
        try:
            atomic_write(self.fs, part_path(self.root, run_id, index), buf.getvalue())
        except Exception as exc:  # noqa: BLE001
            raise AuditWriteError(self.audit_uri, _reason(exc)) from None

    def write_run_summary(self, run_id: str, summary: dict) -> None:
        """``summaries/<run_id>.json`` alone (a replayed run's summary: summary.json is the latest run's)."""
        blob = (json.dumps(summary, indent=2, sort_keys=True) + "\n").encode()
        try:
            atomic_write(self.fs, f"{self.root.rstrip('/')}/summaries/{run_id}.json", blob)
        except Exception as exc:  # noqa: BLE001
            raise AuditWriteError(self.audit_uri, _reason(exc)) from None

    def write_summary(self, summary: dict) -> None:
        blob = (json.dumps(summary, indent=2, sort_keys=True) + "\n").encode()
        if self.failed is not None:
            raise self.failed
        try:
            atomic_write(self.fs, f"{self.root.rstrip('/')}/summaries/{self.run_id}.json", blob)
            atomic_write(self.fs, f"{self.root.rstrip('/')}/summary.json", blob)
        except Exception as exc:  # noqa: BLE001
            self.failed = AuditWriteError(self.audit_uri, _reason(exc))
            raise self.failed from None


def read_audit(audit_uri: str, run_id: str | None = None, storage_options: dict | None = None) -> pa.Table:
    """Read the audit dataset (all runs, or one)."""
    import pyarrow.dataset as ds

    fs, root = fsspec.core.url_to_fs(audit_uri, **(storage_options or {}))
    dataset = ds.dataset(f"{root.rstrip('/')}/records", format="parquet", filesystem=fs, schema=AUDIT_SCHEMA)
    if run_id is not None:
        return dataset.to_table(filter=ds.field("run_id") == run_id)
    return dataset.to_table()

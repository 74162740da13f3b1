"""The local journal: audit rows the driver holds that have not reached the audit location yet.

Contract:
* every table the driver hands to :class:`deid.audit.writer.AuditWriter` is appended to the
  journal and fsynced *before* the writer accepts it, so from the moment the driver holds a
  released image's row, that row is on local disk until the audit part holding it is written;
* one folder per run under the audit location's journal folder (:func:`journal_folder`:
  ``<run.state_dir>/journal/<key of audit.uri>/<run_id>/``, on the driver's machine, never under
  the release); segment ``part-NNNNN.arrows`` (an Arrow IPC stream, one message per table)
  holds exactly the rows of the run's audit part ``NNNNN`` and is removed once that part is
  written; a run whose audit is complete leaves no folder behind;
* :func:`replay` (the start of every later run against the same audit location) writes each
  segment it finds as the part of that run it stands for (the same name, so a part written
  before a crash and replayed after it is the same part, once), writes a journaled summary,
  and removes the folder; a folder whose run is still alive (its lock is held) is left alone;
* a table torn by a crash in mid-append was never accepted by the writer, so dropping it on
  replay loses no row the writer had taken: the resumed run redoes that record (its output,
  if any, is found by deid.pipeline.resume and replaced or removed).

Nothing else is kept here: the rows are the audit's own (no embeddings, noise, seeds or
latents), and the folder is named by a hash of the audit location, not by input names.
"""

from __future__ import annotations

import errno
import fcntl
import hashlib
import json
import logging
import os
import re
import shutil
from dataclasses import dataclass
from pathlib import Path

import pyarrow as pa

from deid.audit.schema import AUDIT_SCHEMA

log = logging.getLogger("deid")

_SEGMENT = re.compile(r"^part-(\d{5})\.arrows$")
SUMMARY = "summary.json"
LOCK = "lock"


class JournalError(OSError):
    """The journal itself cannot be written (the driver's local disk is full or read-only)."""


def default_state_dir() -> str:
    """Where deid keeps local run state when ``run.state_dir`` is not set:
    ``$XDG_STATE_HOME/deid``, else ``~/.local/state/deid`` (the XDG base directory spec)."""
    base = os.environ.get("XDG_STATE_HOME") or str(Path.home() / ".local" / "state")  # empty means unset
    return str(Path(base) / "deid")


def journal_folder(state_dir: str | None, audit_uri: str) -> Path:
    """The journal folder of one audit location: the same for every run that writes there, so
    a resumed run finds what an earlier one left, whatever its manifest's other fields."""
    from deid.io.locations import location

    key = hashlib.sha256(str(location(audit_uri)).encode()).hexdigest()[:16]
    return Path(os.path.expanduser(state_dir or default_state_dir())) / "journal" / key


def _fsync_dir(path: Path) -> None:
    fd = os.open(path, os.O_RDONLY)
    try:
        os.fsync(fd)
    finally:
        os.close(fd)


def _why(exc: BaseException) -> str:
    return (exc.strerror or str(exc)) if isinstance(exc, OSError) else f"{type(exc).__name__}: {exc}"


class AuditJournal:
    """One run's journal (its folder, its lock, the segment being filled)."""

    def __init__(self, folder: Path, run_id: str, audit_uri: str):
        self.folder = Path(folder) / run_id
        self.run_id = run_id
        self._seg: int | None = None
        self._file = None
        self._writer = None
        self.rows = 0  # rows in the journal now (not yet at the audit location)
        try:
            self.folder.mkdir(parents=True, exist_ok=True)
            (self.folder.parent / "audit_uri.txt").write_text(audit_uri + "\n")
            self._lock = open(self.folder / LOCK, "w")  # noqa: SIM115 - held for the run's life
            fcntl.flock(self._lock.fileno(), fcntl.LOCK_EX | fcntl.LOCK_NB)
            _fsync_dir(self.folder)
        except OSError as exc:
            raise JournalError(exc.errno or errno.EIO, f"cannot create the audit journal {self.folder}: "
                               f"{_why(exc)}") from None

    def segment_path(self, index: int) -> Path:
        return self.folder / f"part-{index:05d}.arrows"

    def append(self, index: int, table: pa.Table) -> None:
        """Append ``table`` (rows of audit part ``index``) and fsync, or raise :class:`JournalError`."""
        try:
            if self._seg != index:
                self._close_segment()
                path = self.segment_path(index)
                # a new segment of this run; "x": never over an existing one (that would lose rows)
                self._file = open(path, "xb")  # noqa: SIM115 - kept open while the part fills
                self._writer = pa.ipc.new_stream(self._file, AUDIT_SCHEMA)
                self._seg = index
                _fsync_dir(self.folder)
            self._writer.write_table(table)
            self._file.flush()
            os.fsync(self._file.fileno())
            self.rows += table.num_rows
        except OSError as exc:
            raise JournalError(exc.errno or errno.EIO, f"cannot write the audit journal {self.folder}: "
                               f"{_why(exc)}") from None

    def done(self, index: int, rows: int) -> None:
        """Audit part ``index`` is written: its segment is no longer needed."""
        if self._seg == index:
            self._close_segment()
        try:
            self.segment_path(index).unlink()
        except FileNotFoundError:
            pass
        except OSError as exc:
            log.warning("audit journal segment %s not removed (%s); a later run replays it as the same part",
                        self.segment_path(index), _why(exc))
        self.rows = max(0, self.rows - rows)

    def save_summary(self, summary: dict) -> None:
        try:
            path = self.folder / SUMMARY
            tmp = self.folder / (SUMMARY + ".tmp")
            with open(tmp, "w") as f:
                f.write(json.dumps(summary, indent=2, sort_keys=True) + "\n")
                f.flush()
                os.fsync(f.fileno())
            os.replace(tmp, path)
        except OSError as exc:
            log.error("cannot keep the run summary in the audit journal %s: %s", self.folder, _why(exc))

    def _close_segment(self) -> None:
        if self._writer is not None:
            try:
                self._writer.close()
                self._file.flush()
                os.fsync(self._file.fileno())
            except OSError:
                pass
        if self._file is not None:
            self._file.close()
        self._writer = self._file = None
        self._seg = None

    def close(self, keep: bool) -> None:
        """End of the run: remove the folder (``keep=False``: the audit holds every row), or
        keep it for the next run to replay."""
        self._close_segment()
        if not keep:
            shutil.rmtree(self.folder, ignore_errors=True)
            try:
                leftover = {p.name for p in self.folder.parent.iterdir()}
                if leftover <= {"audit_uri.txt"}:
                    shutil.rmtree(self.folder.parent, ignore_errors=True)
            except OSError:
                pass
        try:
            self._lock.close()  # releases the lock
        except OSError:
            pass


def read_segment(path: Path) -> pa.Table:
    """The complete tables of a segment; a torn last message (a crash mid-append) is dropped."""
    batches = []
    try:
        with pa.OSFile(str(path), "rb") as f:
            reader = pa.ipc.open_stream(f)
            while True:
                try:
                    batches.append(reader.read_next_batch())
                except StopIteration:
                    break
    except (pa.ArrowInvalid, OSError, EOFError) as exc:
        if batches or path.stat().st_size > 0:
            log.warning("audit journal %s ends in a torn write (%s); %d complete batch(es) kept", path, exc,
                        len(batches))
    return pa.Table.from_batches(batches, schema=AUDIT_SCHEMA) if batches else AUDIT_SCHEMA.empty_table()


@dataclass
class Replayed:
    runs: list[str]
    rows: int
    parts: int


def pending(folder: Path) -> int:
    """Rows waiting in the journal of an audit location (for dry runs; reads, writes nothing)."""
    n = 0
    if folder.is_dir():
        for run in folder.iterdir():
            for seg in sorted(run.glob("part-*.arrows")) if run.is_dir() else ():
                n += read_segment(seg).num_rows
    return n


def replay(folder: Path, write_part, write_summary, skip_run: str | None = None) -> Replayed:
    """Write what earlier runs left in the journal ``folder`` to the audit: each segment through
    ``write_part(run_id, index, table)``, a kept summary through ``write_summary(run_id, dict)``;
    then remove the run's folder. Either callable raising stops the replay (the rest stays)."""
    out = Replayed([], 0, 0)
    if not folder.is_dir():
        return out
    for run in sorted(p for p in folder.iterdir() if p.is_dir() and p.name != skip_run):
        lock = open(run / LOCK, "a")  # noqa: SIM115
        try:
            try:
                fcntl.flock(lock.fileno(), fcntl.LOCK_EX | fcntl.LOCK_NB)
            except BlockingIOError:
                log.warning("audit journal %s belongs to a run that is still going; left alone", run)
                continue
            segments = sorted((int(m.group(1)), p) for p in run.iterdir() if (m := _SEGMENT.match(p.name)))
            n_rows = 0
            for index, path in segments:
                table = read_segment(path)
                if table.num_rows:
                    write_part(run.name, index, table)
                    out.parts += 1
                    n_rows += table.num_rows
                path.unlink()
            summary = run / SUMMARY
            if summary.exists():
                write_summary(run.name, json.loads(summary.read_text()))
            shutil.rmtree(run, ignore_errors=True)
            if n_rows or segments:
                out.runs.append(run.name)
                out.rows += n_rows
        finally:
            lock.close()
    return out

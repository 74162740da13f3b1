"""The driver: plan, run on an engine, commit the audit, summarise.

Contract:
* every listed input gets exactly one audit row in this run (a record that no actor
  answered for becomes a ``failed`` row with ``error_code = lost``);
* results are matched to inputs by ``record_id``, never by order;
* the audit is written in parts while the run goes; the summary is written last;
* the audit location takes a probe write before anything is processed (:func:`open_audit`),
  and what earlier runs left in the local journal is written to it before resume looks;
* every row the driver receives is journaled before the writer takes it; when the audit
  cannot be written, releases stop (:meth:`deid.pipeline.engine.Results.halt`), the batches
  in flight are drained into the journal, and the run ends with :class:`AuditStopped`.

The concerns live in their own modules: :mod:`~deid.pipeline.plan` (listing, names,
refusals, resume), :mod:`~deid.pipeline.engine` (Ray or in-process, pool sizing),
:mod:`~deid.pipeline.budget` (the budget service and withheld records),
:mod:`~deid.pipeline.summary` (collecting results, the summary). This module composes them.
"""

from __future__ import annotations

import logging
import time
import uuid
from collections import Counter
from dataclasses import dataclass, field
from typing import Callable

import pyarrow as pa
import pyarrow.compute as pc

from deid.anonymize import is_dp
from deid.anonymize.registry import wants_subject_keys
from deid.audit.rows import RunContext
from deid.audit.schema import AUDIT_SCHEMA
from deid.audit.journal import AuditJournal, JournalError, journal_folder, pending, replay
from deid.audit.writer import AuditWriteError, AuditWriter
from deid.config.schema import Manifest
from deid.pipeline import engine as engines
from deid.pipeline.errors import AuditStopped, RunError
from deid.pipeline.fingerprints import model_fingerprints
from deid.pipeline.plan import Plan, apply_prior, driver_row, plan_records
from deid.pipeline.resume import load_prior
from deid.pipeline.summary import Tally, consume, run_summary

__all__ = ["AuditStopped", "Plan", "RunError", "RunResult", "dry_run", "new_run_id", "open_audit", "plan_records",
           "run_job"]

log = logging.getLogger("deid")


@dataclass
class RunResult:
    run_id: str
    summary: dict
    audit_uri: str
    records_uri: str
    counts: dict = field(default_factory=dict)


def new_run_id() -> str:
    """The UTC start time to the millisecond plus 8 random hex digits: run ids sort as the runs
    started (the audit's standing row of a record is that of its latest run), also for two runs
    of one job in the same second."""
    now = time.time()
    stamp = time.strftime("%Y%m%dT%H%M%S", time.gmtime(now)) + f".{int(now * 1000) % 1000:03d}Z"
    return stamp + "-" + uuid.uuid4().hex[:8]


def run_job(manifest: Manifest, *, engine: str | None = None, progress: bool | None = None,
            on_batch: Callable[[pa.Table], None] | None = None, resume: bool = True) -> RunResult:
    """Run a job on ``engine`` (``auto``, ``ray``, ``local``; None: ``run.engine``). With
    ``resume`` (the default) records that an earlier run of the same job committed get a
    ``skipped`` row and are not processed again (deid.pipeline.resume)."""
    t0 = time.perf_counter()
    if engine is not None and engine != "auto":
        engines.check_engine(manifest, engine)  # before any work: a wrong engine is the user's to fix
    run_id = new_run_id()
    # plan: listing, names, refusals (the storage and protocol errors of every location come here)
    planned = plan_records(manifest)
    # the audit: a probe write before anything is processed, then what earlier runs left in the journal
    writer = open_audit(manifest, run_id)
    try:
        return _run(manifest, planned, run_id, writer, t0, engine, progress, on_batch, resume)
    finally:
        writer.journal.close(keep=writer.failed is not None or writer.journal.rows > 0)


def _state_dir_check(manifest: Manifest, folder) -> None:
    from deid.io.locations import overlap

    for name, uri in (("input.uri", manifest.input.uri), ("output.uri", manifest.output.uri),
                      ("output.quarantine_uri", manifest.quarantine_uri), ("audit.uri", manifest.audit_uri)):
        if overlap(str(folder), uri):
            raise RunError(f"run.state_dir: the audit journal {folder} would be inside {name} ({uri}); the journal "
                           "holds audit rows (input names) and must stay apart from the data: set run.state_dir "
                           "to a local folder of its own")


def open_audit(manifest: Manifest, run_id: str) -> AuditWriter:
    """The run's audit writer with its journal, once the audit location has taken a probe write
    and every row earlier runs left in the journal has been written to it; else :class:`RunError`
    (nothing processed, nothing released)."""
    folder = journal_folder(manifest.run.state_dir, manifest.audit_uri)
    _state_dir_check(manifest, folder)
    try:
        journal = AuditJournal(folder, run_id, manifest.audit_uri)
    except JournalError as exc:
        raise RunError(f"run.state_dir: {exc.strerror}; deid keeps audit rows there until they reach audit.uri. "
                       "Free space there or set run.state_dir to a writable local folder; nothing was processed "
                       "or released") from None
    writer = AuditWriter(manifest.audit_uri, run_id, manifest.audit.storage_options,
                         flush_seconds=manifest.audit.flush_seconds, journal=journal)
    try:
        writer.probe()
        done = replay(folder, writer.write_part, writer.write_run_summary, skip_run=run_id)
    except AuditWriteError as exc:
        journal.close(keep=False)
        waiting = pending(folder)
        extra = (f"; {waiting} audit rows of an earlier run wait in the local journal {folder} and will be "
                 "written when the audit location takes writes again") if waiting else ""
        raise RunError(f"{exc}. Nothing was processed or released{extra}. Make audit.uri writable (permissions, "
                       "free space, credentials, the bucket) or set it to another location, then run again") from None
    if done.rows:
        log.warning("wrote %d audit row(s) of earlier run(s) %s from the local journal %s to %s", done.rows,
                    ", ".join(done.runs), folder, writer.records_uri)
    return writer


def _run(manifest: Manifest, planned: Plan, run_id: str, writer: AuditWriter, t0: float, engine, progress, on_batch,
         resume: bool) -> "RunResult":
    # resume: what earlier runs of this job committed (the journal is already in the audit)
    ctx = RunContext(run_id=run_id, config_sha256=manifest.config_sha256(), naming_key_id=planned.naming_key_id,
                     job_sha256=manifest.job_sha256(), model_fingerprints=model_fingerprints(manifest))
    prior = load_prior(manifest, use_audit=resume)
    plan, skipped_rows = apply_prior(planned.records, prior, ctx, manifest)
    engine = engines.resolve(manifest, engine, plan.num_rows)
    engines.check_engine(manifest, engine)

    # budget: DP methods reserve through the budget service; labeled subjects that cannot afford
    # another release are withheld here
    budget, withheld = None, []
    if is_dp(manifest.anonymize.method):
        from deid.pipeline.budget import budget_service, plan_budget

        budget = budget_service(manifest, engine)
        plan, withheld = plan_budget(manifest, plan, budget)
    elif wants_subject_keys(manifest.anonymize.method, manifest.anonymize.params):
        plan = keyed_subjects(manifest, plan)  # names never leave the driver: keyed hashes do
    else:
        plan = plan.drop_columns(["subject"])  # names never leave the driver

    # the driver's own rows: skipped, refused, withheld
    counts: Counter = Counter()
    failure: Exception | None = None  # the audit (or the journal) could not be written
    driver_rows = list(skipped_rows)
    driver_rows += [driver_row(r, u, code, msg, ctx, manifest) for r, u, code, msg in planned.refused]
    driver_rows += [driver_row(r, u, None, msg, ctx, manifest, status="budget_exhausted") for r, u, _, msg in withheld]
    if driver_rows:
        counts.update(r["status"] for r in driver_rows)
        try:
            writer.add(pa.Table.from_pylist(driver_rows, schema=AUDIT_SCHEMA))
        except (AuditWriteError, JournalError) as exc:
            failure = exc

    # run: the workers' rows as they come
    expected = set(plan.column("record_id").to_pylist())
    seen: set[str] = set()
    from tqdm import tqdm

    show = manifest.run.progress if progress is None else progress
    bar = tqdm(total=plan.num_rows, unit="rec", disable=not show, dynamic_ncols=True, desc="deid")
    aborted: str | None = None
    tally = Tally()
    stream = engines.results(engine, manifest, plan, ctx, budget) if failure is None else engines.Results(())
    while True:  # after an audit failure: halt, then drain what is in flight into the journal
        try:
            consume(stream, expected, seen, writer, counts, bar, on_batch, tally)
            break
        except KeyboardInterrupt:
            try:
                writer.flush()  # keep what is done; the interrupted records have no row yet
            except AuditWriteError:
                pass  # the rows are in the journal
            raise
        except (AuditWriteError, JournalError) as exc:
            if failure is None:
                failure = exc
                log.error("%s: stopping releases; the rows of what is in flight go to the local journal", exc)
                stream.halt()
            elif writer.failed is not None and writer.journal_failed is not None:
                log.error("audit rows lost: neither the audit nor the local journal can be written (%s)", exc)
        except Exception as exc:  # noqa: BLE001 - the run ends, but every input still gets its row
            first = (str(exc).strip().splitlines() or [""])[0][:300]
            aborted = f"{type(exc).__name__}: {first}"
            log.error("run stopped early: %s", aborted)
            break
    if failure is not None:
        aborted = f"{type(failure).__name__}: {failure}"
    bar.close()

    # commit: a row for every record no worker answered for, then the summary
    missing = expected - seen
    if missing:
        lost = plan.filter(pc.is_in(plan.column("record_id"), pa.array(sorted(missing))))
        why = (f"not processed: the run stopped early ({aborted})" if aborted
               else "no worker returned a result for this record (worker crash?)")
        rows = [driver_row(r, u, "lost", f"{u}: {why}", ctx, manifest)
                for r, u in zip(lost.column("record_id").to_pylist(), lost.column("uri").to_pylist())]
        counts.update(["failed"] * len(rows))
        failure = _add_last(writer, pa.Table.from_pylist(rows, schema=AUDIT_SCHEMA), failure)
    failure = _add_last(writer, None, failure)
    if failure is not None and aborted is None:
        aborted = f"{type(failure).__name__}: {failure}"
    summary = run_summary(run_id=run_id, ctx=ctx, manifest=manifest, inputs=plan.num_rows + len(driver_rows),
                          rows_written=writer.rows_written, counts=counts, tally=tally,
                          wall=time.perf_counter() - t0, engine=engine, resumed=bool(skipped_rows),
                          temp_files_removed=prior.swept_tmp, aborted=aborted, records_uri=writer.records_uri)
    summary["audit_rows_journaled"] = writer.journal.rows
    if writer.failed is None:
        try:
            writer.write_summary(summary)
        except AuditWriteError as exc:
            failure = failure or exc
    if writer.failed is not None:
        writer.journal.save_summary(summary)  # the next run writes it as summaries/<run_id>.json
    if failure is not None:
        raise AuditStopped(_stopped_message(manifest, writer, failure))
    return RunResult(run_id=run_id, summary=summary, audit_uri=manifest.audit_uri, records_uri=writer.records_uri,
                     counts=dict(counts))


def _add_last(writer: AuditWriter, table: pa.Table | None, failure: Exception | None) -> Exception | None:
    """Add the run's last rows (``None``: just the final flush); returns the run's first audit failure."""
    try:
        if table is not None:
            writer.add(table)
        writer.flush()
    except (AuditWriteError, JournalError) as exc:
        return failure or exc
    return failure


def _stopped_message(manifest: Manifest, writer: AuditWriter, failure: Exception) -> str:
    j = writer.journal
    if isinstance(failure, JournalError) and writer.failed is None:
        return (f"the local audit journal could not be written ({failure.strerror}); the run stopped releasing "
                f"images. Every row it holds was written to audit.uri = {manifest.audit_uri} directly. Free space "
                "under run.state_dir (or set it to another local folder), then run `deid run` with this manifest "
                "again: it goes on with the records this run did not finish")
    lost = ""
    if writer.journal_failed is not None:
        lost = (f" The local journal could not be written either ({getattr(writer.journal_failed, 'strerror', '')}): "
                "rows it could not keep are lost, and the next run redoes their records (their outputs are found "
                "and replaced).")
    return (f"{writer.failed or failure}. The run stopped releasing images; {j.rows} audit row(s) not written "
            f"there, the row of every image it released among them, are kept in the local journal {j.folder}."
            f"{lost} Make audit.uri writable again, then run `deid run` with this manifest again: it writes the "
            "journal to the audit first, then goes on with the records this run did not finish")


def keyed_subjects(manifest: Manifest, plan: pa.Table) -> pa.Table:
    """Replace subject names by their keyed subject keys (HMAC under the subject-key secret,
    as the privacy ledger keys them), for methods that keep something per subject (e.g.
    synthetic-swap ``stable: keyed``); unlabeled records get none."""
    from deid.privacy.keys import SubjectKeyer, SubjectKeyError, load_secret

    p = manifest.privacy
    try:
        keyer = SubjectKeyer(load_secret(p.subject_key_env, p.subject_key_file))
    except SubjectKeyError as exc:
        raise RunError(f"anonymize.params.stable: keyed needs the subject-key secret: {exc}") from None
    names = plan.column("subject").to_pylist()
    keys = [None if s is None else keyer.labeled(s) for s in names]
    return plan.drop_columns(["subject"]).append_column("subject_key", pa.array(keys, pa.string()))


def dry_run(manifest: Manifest, resume: bool = True) -> dict:
    """What a run would do, without processing or charging anything: records, refusals,
    and for DP methods the per-subject budget picture (:func:`deid.pipeline.budget.budget_picture`)."""
    planned = plan_records(manifest)
    plan = planned.records
    journaled = pending(journal_folder(manifest.run.state_dir, manifest.audit_uri))
    skipped = 0
    if resume:
        committed = load_prior(manifest, sweep=False).committed
        if committed:
            keep = [r not in committed for r in plan.column("record_id").to_pylist()]
            skipped = keep.count(False)
            plan = plan.filter(pa.array(keep))
    listed = plan.num_rows
    plan = plan.filter(pc.is_null(plan.column("listing_error")))  # refused by the listing: never processed
    refused = len(planned.refused) + listed - plan.num_rows
    out = {"records": listed + len(planned.refused) + skipped, "to_process": plan.num_rows,
           "skipped_committed": skipped, "refused": refused, "method": manifest.anonymize.method,
           "output_uri": manifest.output.uri, "audit_uri": manifest.audit_uri,
           # rows an earlier run could not write to the audit; the next run writes them first (and may skip more)
           "audit_rows_in_journal": journaled}
    if is_dp(manifest.anonymize.method):
        from deid.pipeline.budget import budget_picture

        out.update(budget_picture(manifest, plan))
    return out

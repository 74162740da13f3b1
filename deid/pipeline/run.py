"""The driver: plan, run on an engine, commit the audit, summarise.

Contract:
* every listed input gets exactly one audit row in this run (a record that no actor
  answered for becomes a ``failed`` row with ``error_code = lost``);
* results are matched to inputs by ``record_id``, never by order;
* the audit is written in parts while the run goes; the summary is written last.

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
from deid.audit.rows import RunContext
from deid.audit.schema import AUDIT_SCHEMA
from deid.audit.writer import AuditWriter
from deid.config.schema import Manifest
from deid.pipeline import engine as engines
from deid.pipeline.errors import RunError
from deid.pipeline.fingerprints import model_fingerprints
from deid.pipeline.plan import Plan, apply_prior, driver_row, plan_records
from deid.pipeline.resume import load_prior
from deid.pipeline.summary import Tally, consume, run_summary

__all__ = ["Plan", "RunError", "RunResult", "dry_run", "new_run_id", "plan_records", "run_job"]

log = logging.getLogger("deid")


@dataclass
class RunResult:
    run_id: str
    summary: dict
    audit_uri: str
    records_uri: str
    counts: dict = field(default_factory=dict)


def new_run_id() -> str:
    return time.strftime("%Y%m%dT%H%M%SZ", time.gmtime()) + "-" + uuid.uuid4().hex[:8]


def run_job(manifest: Manifest, *, engine: str | None = None, progress: bool | None = None,
            on_batch: Callable[[pa.Table], None] | None = None, resume: bool = True) -> RunResult:
    """Run a job on ``engine`` (``auto``, ``ray``, ``local``; None: ``run.engine``). With
    ``resume`` (the default) records that an earlier run of the same job committed get a
    ``skipped`` row and are not processed again (deid.pipeline.resume)."""
    t0 = time.perf_counter()
    if engine is not None and engine != "auto":
        engines.check_engine(manifest, engine)  # before any work: a wrong engine is the user's to fix
    run_id = new_run_id()

    # plan: listing, names, refusals, resume
    planned = plan_records(manifest)
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
    else:
        plan = plan.drop_columns(["subject"])  # names never leave the driver

    # the driver's own rows: skipped, refused, withheld
    writer = AuditWriter(manifest.audit_uri, run_id, manifest.audit.storage_options,
                         flush_seconds=manifest.audit.flush_seconds)
    counts: Counter = Counter()
    driver_rows = list(skipped_rows)
    driver_rows += [driver_row(r, u, code, msg, ctx, manifest) for r, u, code, msg in planned.refused]
    driver_rows += [driver_row(r, u, None, msg, ctx, manifest, status="budget_exhausted") for r, u, _, msg in withheld]
    if driver_rows:
        writer.add(pa.Table.from_pylist(driver_rows, schema=AUDIT_SCHEMA))
        counts.update(r["status"] for r in driver_rows)

    # run: the workers' rows as they come
    expected = set(plan.column("record_id").to_pylist())
    seen: set[str] = set()
    from tqdm import tqdm

    show = manifest.run.progress if progress is None else progress
    bar = tqdm(total=plan.num_rows, unit="rec", disable=not show, dynamic_ncols=True, desc="deid")
    aborted: str | None = None
    tally = Tally()
    try:
        consume(engines.results(engine, manifest, plan, ctx, budget), expected, seen, writer, counts, bar,
                on_batch, tally)
    except KeyboardInterrupt:
        writer.flush()  # keep what is done; the interrupted records have no row yet
        raise
    except Exception as exc:  # noqa: BLE001 - the run ends, but every input still gets its row
        first = (str(exc).strip().splitlines() or [""])[0][:300]
        aborted = f"{type(exc).__name__}: {first}"
        log.error("run stopped early: %s", aborted)
    bar.close()

    # commit: a row for every record no worker answered for, then the summary
    missing = expected - seen
    if missing:
        lost = plan.filter(pc.is_in(plan.column("record_id"), pa.array(sorted(missing))))
        why = (f"not processed: the run stopped early ({aborted})" if aborted
               else "no worker returned a result for this record (worker crash?)")
        rows = [driver_row(r, u, "lost", f"{u}: {why}", ctx, manifest)
                for r, u in zip(lost.column("record_id").to_pylist(), lost.column("uri").to_pylist())]
        writer.add(pa.Table.from_pylist(rows, schema=AUDIT_SCHEMA))
        counts.update(["failed"] * len(rows))
    writer.flush()
    summary = run_summary(run_id=run_id, ctx=ctx, manifest=manifest, inputs=plan.num_rows + len(driver_rows),
                          rows_written=writer.rows_written, counts=counts, tally=tally,
                          wall=time.perf_counter() - t0, engine=engine, resumed=bool(skipped_rows),
                          temp_files_removed=prior.swept_tmp, aborted=aborted, records_uri=writer.records_uri)
    writer.write_summary(summary)
    return RunResult(run_id=run_id, summary=summary, audit_uri=manifest.audit_uri, records_uri=writer.records_uri,
                     counts=dict(counts))


def dry_run(manifest: Manifest, resume: bool = True) -> dict:
    """What a run would do, without processing or charging anything: records, refusals,
    and for DP methods the per-subject budget picture (:func:`deid.pipeline.budget.budget_picture`)."""
    planned = plan_records(manifest)
    plan = planned.records
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
           "output_uri": manifest.output.uri, "audit_uri": manifest.audit_uri}
    if is_dp(manifest.anonymize.method):
        from deid.pipeline.budget import budget_picture

        out.update(budget_picture(manifest, plan))
    return out

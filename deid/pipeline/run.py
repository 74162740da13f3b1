"""The driver: discover, plan, run the Ray Data plan, commit the audit, summarise.

Contract:
* every listed input gets exactly one audit row in this run (a record that no actor
  answered for becomes a ``failed`` row with ``error_code = lost``);
* results are matched to inputs by ``record_id``, never by order;
* the audit is written in parts while the run goes; the summary is written last.
"""

from __future__ import annotations

import dataclasses
import logging
import math
import os
import statistics
import time
import uuid
from collections import Counter
from dataclasses import dataclass, field
from typing import Callable

import pyarrow as pa
import pyarrow.compute as pc

from deid import __version__
from deid.anonymize.params import DP_METHODS
from deid.audit.schema import AUDIT_SCHEMA, STATUSES
from deid.audit.writer import AuditWriter
from deid.config.schema import Manifest
from deid.io.listing import discover, load_subjects
from deid.io.write import key_id, naming_key, output_stem
from deid.pipeline.fingerprints import model_fingerprints
from deid.pipeline.resume import Prior, load_prior
from deid.pipeline.stages import ProcessRecords, RunContext

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


class RunError(Exception):
    """The run cannot start as configured (the message says why and what to change)."""


@dataclass
class Plan:
    records: pa.Table            # what the workers process: listing + output_stem
    refused: list[tuple[str, str, str, str]]  # (record_id, uri, error_code, message): failed on the driver
    naming_key_id: str | None


def plan_records(manifest: Manifest) -> Plan:
    """Listing plus the output stem of each record. Names are computed here, on the
    driver, so the naming secret never travels to workers. With ``naming: mirror`` two
    inputs that differ only by extension would write one output: both are refused
    (a ``failed`` row each, ``error_code = name_collision``) and the rest go on."""
    subjects = load_subjects(manifest.input.subjects, manifest.input.storage_options) if manifest.input.subjects else None
    listing = discover(manifest, subjects)
    key = b"" if manifest.output.naming == "mirror" else naming_key(manifest.output.naming_key_env, manifest.output.naming_key_file)
    rels = listing.column("rel_path").to_pylist()
    stems = [output_stem(p, manifest.output.naming, key) for p in rels]
    listing = listing.append_column("output_stem", pa.array(stems, pa.string()))
    refused: list[tuple[str, str, str, str]] = []
    by_stem: dict[str, list[int]] = {}
    for i, stem in enumerate(stems):
        by_stem.setdefault(stem.lower(), []).append(i)
    clash = sorted(i for idx in by_stem.values() if len(idx) > 1 for i in idx)
    if clash:
        ids, uris = listing.column("record_id").to_pylist(), listing.column("uri").to_pylist()
        for i in clash:
            others = ", ".join(rels[j] for j in by_stem[stems[i].lower()] if j != i)
            refused.append((ids[i], uris[i], "name_collision",
                            f"{uris[i]}: output.naming=mirror gives it the same output name as {others}; "
                            "rename one, or use naming: hash"))
        mask = pa.array([i not in set(clash) for i in range(len(stems))])
        listing = listing.filter(mask)
    return Plan(records=listing, refused=refused, naming_key_id=key_id(key) if key else None)


def ray_address(manifest: Manifest) -> str:
    """The cluster to join: ``run.ray_address``, else ``$RAY_ADDRESS`` (what `ray job submit`
    sets for its entrypoint); empty means an embedded local Ray."""
    return manifest.run.ray_address.strip() or os.environ.get("RAY_ADDRESS", "").strip()


def _check_engine(manifest: Manifest, engine: str) -> None:
    if engine != "ray":
        return
    address = ray_address(manifest)
    if address.lower().startswith("ray://"):
        # Measured with Ray 2.60 and ray[client]: the client connects, then Ray Data's
        # streaming executor fails (it needs a core worker in the driver process).
        raise RunError(f"the Ray address is {address}: Ray Client (ray://) cannot run Ray Data "
                       "pipelines. Run deid on a cluster node instead: `ray job submit --address http://HEAD:8265 "
                       "--working-dir . -- deid run JOB.yaml` (docs/cluster.md), or run.ray_address: auto / HOST:6379 "
                       "from a machine that has joined the cluster")
    for name, uri in (("input.uri", manifest.input.uri), ("output.uri", manifest.output.uri),
                      ("audit.uri", manifest.audit_uri), ("output.quarantine_uri", manifest.quarantine_uri)):
        if uri.lower().startswith("memory://"):
            raise RunError(f"{name} is {uri}: memory:// lives inside one process and Ray workers cannot see it; "
                           "use a local path or object storage, or run with --inline")


# ------------------------------------------------------------------------------ Ray
def _init_ray(manifest: Manifest):
    import ray

    address = ray_address(manifest)
    os.environ.setdefault("RAY_USAGE_STATS_ENABLED", "0")
    if not address:
        # embedded, loopback-only Ray; a cluster keeps its own auth mode (token by default)
        os.environ.setdefault("RAY_AUTH_MODE", "disabled")
    logging.getLogger("ray.data").setLevel(logging.ERROR)
    if ray.is_initialized():
        return ray
    kwargs = dict(include_dashboard=False, logging_level=logging.WARNING, log_to_driver=True,
                  ignore_reinit_error=True)
    if address:
        ray.init(address=address, **kwargs)
    else:
        kwargs["num_cpus"] = manifest.run.cpus or os.cpu_count() or 1
        if manifest.run.object_store_memory:
            kwargs["object_store_memory"] = manifest.run.object_store_memory
        ray.init(**kwargs)
    return ray


def pool_plan(manifest: Manifest, resources: dict) -> tuple[int, dict]:
    """Actor pool size and each actor's Ray resources, from the cluster's resources.

    Every actor takes one CPU (its model work); with ``run.gpus_per_actor`` it also holds
    that share of a GPU (``0.25``: four actors per GPU), the default pool is one actor per
    GPU share, and the CPUs left over stay free for the driver, the budget service and
    reading. Inputs are read inside the actor by ``run.read_threads`` threads, which take
    no CPU slot from other actors. Without GPUs the default is one actor per CPU."""
    gpa = manifest.run.gpus_per_actor
    cpus = int(resources.get("CPU", 1))
    if gpa > 0:
        gpus = float(resources.get("GPU", 0))
        if gpus < gpa and not ray_address(manifest):
            raise RunError(f"run.gpus_per_actor is {gpa} but this machine's Ray sees {gpus:g} GPUs; "
                           "set run.gpus_per_actor: 0 to run on CPUs, or run on a machine (or run.ray_address "
                           "cluster) with GPUs")
        size = manifest.run.actors or max(1, min(int(gpus / gpa + 1e-9), max(1, cpus)))
    else:
        size = manifest.run.actors or max(1, cpus)
    return size, {"num_cpus": 1, "num_gpus": gpa or None}


#: Plans up to this many records are handed to Ray Data row by row (see _ray_results).
FROM_ITEMS_MAX_ROWS = 200_000


def _ray_results(manifest: Manifest, plan: pa.Table, ctx: RunContext, budget=None):
    """Yield audit tables from the Ray Data plan as actors finish batches."""
    ray = _init_ray(manifest)
    import ray.data
    from ray.data import ActorPoolStrategy, DataContext

    for name in ("ray.data", "ray.data._internal"):
        logging.getLogger(name).setLevel(logging.ERROR)
    dctx = DataContext.get_current()
    dctx.enable_progress_bars = False
    dctx.print_on_execution_start = False

    actors, per_actor = pool_plan(manifest, ray.cluster_resources())
    bs = manifest.run.batch_size
    n = plan.num_rows
    # Blocks are the unit an actor takes. About eight per actor keep the pool balanced
    # (measured: one block per batch made many tiny tasks, a/c 1.05 -> 1.39 with this);
    # whole batches per block and at most ~1k rows keep retries cheap after an actor dies.
    rows_per_block = max(bs, min(math.ceil(n / (8 * actors)), 1024))
    rows_per_block = math.ceil(rows_per_block / bs) * bs
    n_blocks = math.ceil(n / rows_per_block)
    if n <= FROM_ITEMS_MAX_ROWS:
        # Built on the driver: no metadata task per block, so no task workers start while the
        # actors do (measured on 2 CPUs, 3,000 records: first batch 2.2-2.4 s vs 3.1-5.3 s).
        ds = ray.data.from_items(plan.to_pylist(), override_num_blocks=n_blocks)
    else:  # from_items costs ~9 us a row on the driver; past this, one task per block costs less
        ds = ray.data.from_arrow([plan.slice(i, rows_per_block) for i in range(0, n, rows_per_block)])
    ds = ds.map_batches(
        ProcessRecords,
        fn_constructor_kwargs={"manifest": manifest.model_dump(mode="json"), "ctx": ctx.__dict__, "budget": budget},
        batch_size=bs,
        batch_format="pyarrow",
        compute=ActorPoolStrategy(size=actors),
        **per_actor,
    )
    for batch in ds.iter_batches(batch_format="pyarrow", batch_size=None):
        yield batch


def _inline_results(manifest: Manifest, plan: pa.Table, ctx: RunContext, budget=None):
    """The same stage, in this process, without Ray (benchmark baseline, debugging)."""
    stage = ProcessRecords(manifest.model_dump(mode="json"), ctx.__dict__, budget)
    bs = manifest.run.batch_size
    for i in range(0, plan.num_rows, bs):
        yield stage(plan.slice(i, bs))


# ------------------------------------------------------------------------------ run
def run_job(manifest: Manifest, *, engine: str = "ray", progress: bool | None = None,
            on_batch: Callable[[pa.Table], None] | None = None, resume: bool = True) -> RunResult:
    """Run a job. With ``resume`` (the default) records that an earlier run of the same job
    committed get a ``skipped`` row and are not processed again (deid.pipeline.resume)."""
    t0 = time.perf_counter()
    _check_engine(manifest, engine)
    run_id = new_run_id()
    planned = plan_records(manifest)
    ctx = RunContext(run_id=run_id, config_sha256=manifest.config_sha256(), naming_key_id=planned.naming_key_id,
                     job_sha256=manifest.job_sha256(), model_fingerprints=model_fingerprints(manifest))
    prior = load_prior(manifest, use_audit=resume)
    plan, skipped_rows = _apply_prior(planned.records, prior, ctx, manifest)
    writer = AuditWriter(manifest.audit_uri, run_id, manifest.audit.storage_options,
                         flush_seconds=manifest.audit.flush_seconds)
    counts: Counter = Counter()
    budget = None
    withheld: list[tuple[str, str, str, str]] = []
    if manifest.anonymize.method in DP_METHODS:
        budget = _budget_service(manifest, engine)
        plan, withheld = _plan_budget(manifest, plan, budget)
    else:
        plan = plan.drop_columns(["subject"])  # names never leave the driver
    driver_rows = list(skipped_rows)
    driver_rows += [_driver_row(r, u, code, msg, ctx, manifest) for r, u, code, msg in planned.refused]
    driver_rows += [_driver_row(r, u, None, msg, ctx, manifest, status="budget_exhausted") for r, u, _, msg in withheld]
    if driver_rows:
        writer.add(pa.Table.from_pylist(driver_rows, schema=AUDIT_SCHEMA))
        counts.update(r["status"] for r in driver_rows)
    expected = set(plan.column("record_id").to_pylist())
    seen: set[str] = set()

    show = manifest.run.progress if progress is None else progress
    from tqdm import tqdm

    bar = tqdm(total=plan.num_rows, unit="rec", disable=not show, dynamic_ncols=True, desc="deid")
    results = (_ray_results if engine == "ray" else _inline_results)(manifest, plan, ctx, budget) if plan.num_rows else iter(())
    aborted: str | None = None
    tally = _Tally()
    try:
        _consume(results, expected, seen, writer, counts, bar, on_batch, tally)
    except KeyboardInterrupt:
        writer.flush()  # keep what is done; the interrupted records have no row yet
        raise
    except Exception as exc:  # noqa: BLE001 - the run ends, but every input still gets its row
        first = (str(exc).strip().splitlines() or [""])[0][:300]
        aborted = f"{type(exc).__name__}: {first}"
        log.error("run stopped early: %s", aborted)
    bar.close()
    n_faces, distances = tally.faces, tally.distances

    missing = expected - seen
    if missing:
        lost = plan.filter(pc.is_in(plan.column("record_id"), pa.array(sorted(missing))))
        why = (f"not processed: the run stopped early ({aborted})" if aborted
               else "no worker returned a result for this record (worker crash?)")
        rows = [_driver_row(r, u, "lost", f"{u}: {why}", ctx, manifest)
                for r, u in zip(lost.column("record_id").to_pylist(), lost.column("uri").to_pylist())]
        writer.add(pa.Table.from_pylist(rows, schema=AUDIT_SCHEMA))
        counts.update(["failed"] * len(rows))
    writer.flush()

    wall = time.perf_counter() - t0
    summary = {
        "run_id": run_id,
        "tool_version": __version__,
        "config_sha256": ctx.config_sha256,
        "inputs": plan.num_rows + len(driver_rows),
        "audit_rows": writer.rows_written,
        "counts": {k: counts.get(k, 0) for k in STATUSES},
        "faces": n_faces,
        "id_distance": {
            "min": min(distances) if distances else None,
            "median": statistics.median(distances) if distances else None,
            "n": len(distances),
        },
        "wall_seconds": round(wall, 3),
        "records_per_second": round((plan.num_rows + len(driver_rows)) / wall, 3) if wall > 0 else None,
        "engine": engine,
        "resumed": bool(skipped_rows),
        "temp_files_removed": prior.swept_tmp,
        "aborted": aborted,
        "output_uri": manifest.output.uri,
        "quarantine_uri": manifest.quarantine_uri,
        "audit_uri": manifest.audit_uri,
        "audit_records_uri": writer.records_uri,
        "method": manifest.anonymize.method,
    }
    writer.write_summary(summary)
    return RunResult(run_id=run_id, summary=summary, audit_uri=manifest.audit_uri, records_uri=writer.records_uri,
                     counts=dict(counts))


@dataclass
class _Tally:
    faces: int = 0
    distances: list = field(default_factory=list)


def _consume(results, expected, seen, writer, counts, bar, on_batch, tally: _Tally) -> None:
    for table in results:
        ids = table.column("record_id").to_pylist()
        keep = [i for i, r in enumerate(ids) if r in expected and r not in seen]
        if len(keep) != len(ids):  # duplicates from a retried task: first answer wins
            table = table.take(pa.array(keep, pa.int64()))
            ids = [ids[i] for i in keep]
        seen.update(ids)
        writer.add(table)
        counts.update(table.column("status").to_pylist())
        tally.faces += int(pc.sum(table.column("n_faces")).as_py() or 0)
        flat = pc.list_flatten(table.column("faces"))
        tally.distances += [d for d in pc.struct_field(flat, "id_distance").to_pylist() if d is not None]
        if on_batch:
            on_batch(table)
        bar.update(table.num_rows)
        bar.set_postfix({k: counts[k] for k in STATUSES if counts[k]}, refresh=False)


def dry_run(manifest: Manifest, resume: bool = True) -> dict:
    """What a run would do, without processing or charging anything: records, refusals,
    and for DP methods the per-subject budget picture (one charge per face; labeled
    subjects are assumed to have one face per record, unlabeled faces are charged to
    their own content keys). Opens no ledger that does not exist yet."""
    planned = plan_records(manifest)
    plan = planned.records
    skipped = 0
    if resume:
        committed = load_prior(manifest, sweep=False).committed
        if committed:
            keep = [r not in committed for r in plan.column("record_id").to_pylist()]
            skipped = keep.count(False)
            plan = plan.filter(pa.array(keep))
    out = {"records": plan.num_rows + len(planned.refused) + skipped, "to_process": plan.num_rows,
           "skipped_committed": skipped, "refused": len(planned.refused), "method": manifest.anonymize.method,
           "output_uri": manifest.output.uri, "audit_uri": manifest.audit_uri}
    if manifest.anonymize.method not in DP_METHODS:
        return out
    from collections import Counter as _Counter

    from deid.anonymize import make_anonymizer
    from deid.privacy.accountant import would_exceed
    from deid.privacy.keys import SubjectKeyer, load_secret

    charge = make_anonymizer(manifest.anonymize.method, manifest.anonymize.params, manifest.latent.spec()).charge()
    p = manifest.privacy
    names = plan.column("subject").to_pylist()
    per_subject = _Counter(n for n in names if n is not None)
    history: dict[str, list] = {}
    ledger_exists = "://" in p.ledger or os.path.exists(p.ledger)
    if ledger_exists and per_subject:
        from deid.privacy.ledger import Ledger

        keyer = SubjectKeyer(load_secret(p.subject_key_env, p.subject_key_file))
        with Ledger.open(p.ledger, p.max_epsilon, p.max_delta, create=False) as led:
            history = {s: led.history(keyer.labeled(s)) for s in per_subject}
    exhausted = 0
    withheld = 0
    for s, n in per_subject.items():
        hist = list(history.get(s, []))
        fits = 0
        while fits < n and not would_exceed(hist, [charge] * (fits + 1), p.max_epsilon, p.max_delta):
            fits += 1
        if fits < n:
            exhausted += 1
            withheld += n - fits
    out.update({
        "epsilon_per_face": charge.epsilon, "delta_per_face": charge.delta, "mechanism": charge.mechanism,
        "max_epsilon": p.max_epsilon, "ledger": p.ledger, "ledger_exists": ledger_exists,
        "labeled_records": sum(per_subject.values()), "labeled_subjects": len(per_subject),
        "unlabeled_records": sum(1 for n in names if n is None),
        "subjects_exhausted_by_this_run": exhausted, "labeled_records_withheld": withheld,
    })
    return out


def _budget_service(manifest: Manifest, engine: str):
    """The budget service (deid.privacy.service): a Ray actor pinned to this node, or a plain object."""
    from deid.privacy.service import BudgetService

    p = manifest.privacy
    args = (p.ledger, p.max_epsilon, p.max_delta, p.subject_key_env, p.subject_key_file, p.create_subject_key)
    if engine != "ray":
        return BudgetService(*args)
    ray = _init_ray(manifest)
    from ray.util.scheduling_strategies import NodeAffinitySchedulingStrategy

    from deid.privacy.keys import SubjectKeyError, load_secret, write_new_secret

    # The secret is read here, on the driver: on a cluster the actor's process does not
    # share the driver's environment. It reaches the actor by a direct call (use_key), not
    # as an actor argument or a runtime_env variable, which Ray stores or logs.
    try:
        if (p.create_subject_key and p.subject_key_file and not os.environ.get(p.subject_key_env, "").strip()
                and not os.path.exists(p.subject_key_file)):
            write_new_secret(p.subject_key_file)
        secret = load_secret(p.subject_key_env, p.subject_key_file)
    except SubjectKeyError as exc:
        raise RunError(str(exc)) from None
    here = ray.get_runtime_context().get_node_id()
    actor = ray.remote(BudgetService).options(
        num_cpus=0, max_concurrency=8, scheduling_strategy=NodeAffinitySchedulingStrategy(here, soft=False),
    ).remote(*args[:5], False, True)
    try:
        ray.get(actor.use_key.remote(secret))  # also surfaces a bad ledger before the run starts
    except ray.exceptions.RayError as exc:
        raise RunError(f"the budget service could not start on the driver's node: {_root_cause(exc)}") from None
    return actor


def _root_cause(exc: BaseException) -> str:
    """The user's error inside a Ray error, in one line. An actor whose ``__init__`` failed
    comes back as ``ActorDiedError`` carrying only the text of the remote traceback, whose
    last ``SomeError: message`` line is the cause."""
    import re

    while isinstance(getattr(exc, "cause", None), BaseException):
        exc = exc.cause
    lines = [re.sub(r"\x1b\[[0-9;]*m", "", ln).strip() for ln in str(exc).splitlines()]
    lines = [ln for ln in lines if ln]
    for i in range(len(lines) - 1, -1, -1):
        if re.match(r"^[A-Za-z_][\w.]*(Error|Exception)\b[^:]*: ", lines[i]):
            return " ".join(lines[i:])[:600]
    return f"{type(exc).__name__}: {' '.join(lines)[:600]}"


def _plan_budget(manifest: Manifest, plan: pa.Table, budget) -> tuple[pa.Table, list]:
    """Replace subject names by keyed subject keys (names never leave the driver) and
    withhold labeled records whose subject could not afford even one more release."""
    from deid.anonymize import make_anonymizer
    from deid.privacy.service import call

    charge = dataclasses.asdict(make_anonymizer(manifest.anonymize.method, manifest.anonymize.params,
                                                manifest.latent.spec()).charge())
    names = plan.column("subject").to_pylist()
    key_of = {s: call(budget, "labeled_key", s) for s in set(names) if s is not None}
    broke = {k for k in key_of.values() if call(budget, "would_exceed", k, charge)}
    keys = [key_of.get(s) if s is not None else None for s in names]
    plan = plan.drop_columns(["subject"]).append_column("subject_key", pa.array(keys, pa.string()))
    out = [i for i, k in enumerate(keys) if k in broke]
    withheld = []
    if out:
        ids, uris = plan.column("record_id").to_pylist(), plan.column("uri").to_pylist()
        withheld = [(ids[i], uris[i], "", f"{uris[i]}: withheld: the labeled subject's privacy budget "
                     f"(privacy.max_epsilon={manifest.privacy.max_epsilon}) cannot afford another release; "
                     "not processed, nothing charged") for i in out]
        drop = set(out)
        plan = plan.filter(pa.array([i not in drop for i in range(plan.num_rows)]))
    return plan, withheld


def _driver_row(record_id: str, uri: str, code: str | None, message: str, ctx: RunContext, manifest: Manifest,
                status: str = "failed") -> dict:
    """A row made on the driver for a record no worker processes (refused, withheld or lost)."""
    import datetime as _dt
    import json

    row = {name: None for name in AUDIT_SCHEMA.names}
    row.update(
        run_id=ctx.run_id, record_id=record_id, input_uri=uri, status=status, error_code=code, error=message,
        method=manifest.anonymize.method, params_json=json.dumps(manifest.anonymize.params, sort_keys=True),
        dp_scope="none" if manifest.anonymize.method not in DP_METHODS else None,
        processed_at=_dt.datetime.now(_dt.timezone.utc), tool_version=__version__,
        config_sha256=ctx.config_sha256, job_sha256=ctx.job_sha256, naming_key_id=ctx.naming_key_id,
        model_fingerprints=ctx.model_fingerprints,
    )
    return row


def _apply_prior(plan: pa.Table, prior: Prior, ctx: RunContext, manifest: Manifest) -> tuple[pa.Table, list[dict]]:
    """Skip committed records (a ``skipped`` row each) and attach, to the rest, the outputs
    that already exist under their name (``stale``: removed unless they are the final output)."""
    ids = plan.column("record_id").to_pylist()
    rows: list[dict] = []
    if prior.committed:
        uris = plan.column("uri").to_pylist()
        keep = []
        for i, rid in enumerate(ids):
            c = prior.committed.get(rid)
            if c is None:
                keep.append(True)
                continue
            keep.append(False)
            row = _driver_row(rid, uris[i], None, None, ctx, manifest, status="skipped")
            row.update(output_uri=c["output_uri"], output_sha256=c["output_sha256"], resumed_from=c["run_id"])
            rows.append(row)
        plan = plan.filter(pa.array(keep))
    stems = plan.column("output_stem").to_pylist()
    stale = [prior.stale.get(s, []) for s in stems]
    plan = plan.append_column("stale", pa.array(stale, pa.list_(pa.string())))
    return plan, rows

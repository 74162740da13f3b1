"""Engines: where the stage runs. ``ray``: a Ray Data plan over an actor pool (embedded local
Ray, or a cluster); ``local``: the same stage in this process. Both yield audit tables.
``auto`` (``run.engine``'s default, :func:`resolve`) runs small local jobs in-process, where
Ray's start-up and shutdown (~9 s) would cost more than the work, and everything else on Ray.

Also: joining Ray (address, embedded start-up), sizing the actor pool from the cluster's
resources, and reading the user's error out of a Ray error.
"""

from __future__ import annotations

import logging
import math
import os

import pyarrow as pa

from deid.audit.rows import RunContext
from deid.config.schema import Manifest
from deid.pipeline.errors import RunError
from deid.pipeline.stages import ProcessRecords


def ray_address(manifest: Manifest) -> str:
    """The cluster to join: ``run.ray_address``, else ``$RAY_ADDRESS`` (what `ray job submit`
    sets for its entrypoint); empty means an embedded local Ray."""
    return manifest.run.ray_address.strip() or os.environ.get("RAY_ADDRESS", "").strip()


def check_engine(manifest: Manifest, engine: str) -> None:
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
                           "use a local path or object storage, or run.engine: local")


# ------------------------------------------------------------------------------ Ray
def init_ray(manifest: Manifest):
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


class Results:
    """The audit tables of a run as they come, and :meth:`halt`: stop releasing. After a halt
    the tables keep coming until every batch has answered (those already written carry
    their rows; the rest come back ``lost``, writing nothing), so iterate to the end."""

    def __init__(self, tables, stop=None):
        self._tables = iter(tables)
        self.stop = stop
        self.halted = False

    def __iter__(self):
        return self

    def __next__(self) -> pa.Table:
        return next(self._tables)

    def halt(self) -> None:
        if self.halted:
            return
        self.halted = True
        if self.stop is not None:
            from deid.privacy.service import call

            call(self.stop, "stop")  # returns once the switch is set: no write starts after this


def ray_results(manifest: Manifest, plan: pa.Table, ctx: RunContext, budget=None, stop=None):
    """Yield audit tables from the Ray Data plan as actors finish batches."""
    ray = init_ray(manifest)
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
        fn_constructor_kwargs={"manifest": manifest.model_dump(mode="json"), "ctx": ctx.__dict__, "budget": budget,
                               "stop": stop, "workers": actors},
        batch_size=bs,
        batch_format="pyarrow",
        compute=ActorPoolStrategy(size=actors),
        **per_actor,
    )
    for batch in ds.iter_batches(batch_format="pyarrow", batch_size=None):
        yield batch


def local_results(manifest: Manifest, plan: pa.Table, ctx: RunContext, budget=None, stop=None):
    """The same stage, in this process, without Ray (benchmark baseline, debugging). Batches
    run one at a time as they are asked for, so after a halt no further batch starts."""
    stage = ProcessRecords(manifest.model_dump(mode="json"), ctx.__dict__, budget, stop=stop, workers=None)
    bs = manifest.run.batch_size
    for i in range(0, plan.num_rows, bs):
        if stop is not None and stop.stopped():
            return  # the driver gives the records never started their rows
        yield stage(plan.slice(i, bs))


def root_cause(exc: BaseException) -> str:
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




def results(engine: str, manifest: Manifest, plan: pa.Table, ctx: RunContext, budget=None) -> Results:
    """The audit tables of ``plan`` run on ``engine`` (``ray`` or ``local``), with the switch
    that stops releases (:class:`Results`)."""
    if not plan.num_rows:
        return Results(())
    from deid.pipeline.stages import StopSignal

    if engine == "ray":
        ray = init_ray(manifest)
        from ray.util.scheduling_strategies import NodeAffinitySchedulingStrategy

        # a tiny actor every stage actor asks before each write, set by the driver; on the
        # driver's node, so it lives as long as the driver (if it is gone, the stage releases nothing)
        here = ray.get_runtime_context().get_node_id()
        stop = ray.remote(StopSignal).options(
            num_cpus=0, max_concurrency=64, scheduling_strategy=NodeAffinitySchedulingStrategy(here, soft=False),
        ).remote()
        return Results(ray_results(manifest, plan, ctx, budget, stop), stop)
    stop = StopSignal()
    return Results(local_results(manifest, plan, ctx, budget, stop), stop)


ENGINES = ("auto", "ray", "local")


def resolve(manifest: Manifest, engine: str | None, n_records: int) -> str:
    """``ray`` or ``local`` for a run of ``n_records`` (``engine`` None: ``run.engine``).

    ``auto`` is ``local`` when no cluster is named (``run.ray_address``, ``$RAY_ADDRESS``), no
    GPU is asked for, and the job has at most ``run.local_max_records`` records to process, or
    uses ``memory://`` locations (which Ray's workers cannot see); else ``ray``."""
    engine = engine or manifest.run.engine
    if engine not in ENGINES:
        raise RunError(f"unknown engine {engine!r} (engines: {', '.join(ENGINES)})")
    if engine != "auto":
        return engine
    if ray_address(manifest) or manifest.run.gpus_per_actor > 0:
        return "ray"
    in_memory = any(u.lower().startswith("memory://") for u in (manifest.input.uri, manifest.output.uri,
                                                                 manifest.audit_uri, manifest.quarantine_uri))
    return "local" if in_memory or n_records <= manifest.run.local_max_records else "ray"

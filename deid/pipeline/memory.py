"""How much memory one stage worker may count on, for the decode bounds (deid.io.decode.PixelBounds).

Contract: :func:`worker_memory` is the memory of the machine the worker runs on (Ray's
``memory`` resource of its node when it is a Ray actor, else the machine's RAM), within the
container's limit (cgroup v2 ``memory.max`` or v1 ``memory.limit_in_bytes``), divided by the
number of deid workers that can run on that node at once: each actor holds 1 CPU (and
``run.gpus_per_actor`` GPUs), so at most ``min(pool size, node CPUs, node GPUs / gpus_per_actor)``.
A worker processes one record at a time, so its peak is one image's working set; with every
worker of a node at its bound, the node uses ``run.worker_memory_fraction`` of its memory.
"""

from __future__ import annotations

import logging

log = logging.getLogger("deid")

_CGROUP_FILES = ("/sys/fs/cgroup/memory.max", "/sys/fs/cgroup/memory/memory.limit_in_bytes")


def container_limit() -> int | None:
    """The memory limit of this process's container (cgroup), or None when there is none."""
    for path in _CGROUP_FILES:
        try:
            with open(path) as f:
                text = f.read().strip()
        except OSError:
            continue
        if text.isdigit() and int(text) < 1 << 60:  # "max" / 2**63-ish: no limit
            return int(text)
    return None


def _ray_node() -> dict | None:
    """This Ray worker's node resources, or None when not in a Ray worker."""
    try:
        import ray

        if not ray.is_initialized():
            return None
        node_id = ray.get_runtime_context().get_node_id()
        return next((n.get("Resources", {}) for n in ray.nodes() if n.get("NodeID") == node_id), None)
    except Exception:  # noqa: BLE001 - without Ray's view, the machine's own numbers are used
        return None


def worker_memory(workers: int | None, gpus_per_actor: float = 0.0) -> tuple[int, str]:
    """(bytes one worker may count on, where that number comes from). ``workers``: the size of
    the Ray actor pool, or None for the in-process engine (one worker, this machine)."""
    import psutil

    total = psutil.virtual_memory().total
    limit = container_limit()
    mem, source = total, "this machine's memory"
    if limit is not None and limit < mem:
        mem, source = limit, "this container's memory limit"
    if workers is None:
        return mem, source
    node = _ray_node() or {}
    if node.get("memory") and node["memory"] < mem:
        mem, source = int(node["memory"]), "the node's Ray memory"
    per_node = max(1, min(workers, int(node.get("CPU", workers) or 1)))
    if gpus_per_actor > 0 and node.get("GPU"):
        per_node = max(1, min(per_node, int(node["GPU"] / gpus_per_actor + 1e-9)))
    if per_node > 1:
        source += f" shared by {per_node} workers"
    return mem // per_node, source

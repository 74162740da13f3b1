"""The Ray Data plan that composes the stages; the driver-side planner and committer.

Names below are imported lazily: a Ray actor unpickles ``deid.pipeline.stages`` and
should not pay for the driver's modules.
"""

from __future__ import annotations

import importlib

_EXPORTS = {name: "deid.pipeline.run" for name in ("Plan", "RunError", "RunResult", "dry_run", "plan_records", "run_job")}

__all__ = sorted(_EXPORTS)


def __getattr__(name: str):
    module = _EXPORTS.get(name)
    if module is None:
        raise AttributeError(f"module 'deid.pipeline' has no attribute {name!r}")
    return getattr(importlib.import_module(module), name)


def __dir__() -> list[str]:
    return sorted(set(globals()) | set(__all__))

"""The Ray Data plan that composes the stages; the driver-side planner and committer."""

from deid.pipeline.run import Plan, RunError, RunResult, dry_run, plan_records, run_job

__all__ = ["Plan", "RunError", "RunResult", "dry_run", "plan_records", "run_job"]

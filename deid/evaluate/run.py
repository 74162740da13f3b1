"""Entry points: evaluate a run and write ``metrics.json`` and ``report.html``."""

from __future__ import annotations

import json
import posixpath

import fsspec

from deid.evaluate.core import Evaluator


def write_outputs(out_dir: str, metrics: dict, groups, originals: bool = True, storage_options: dict | None = None) -> dict:
    """Write ``metrics.json`` and ``report.html`` atomically under ``out_dir``; return their URIs."""
    from deid.evaluate.report import render
    from deid.io.write import atomic_write, display_uri

    fs, root = fsspec.core.url_to_fs(out_dir, **(storage_options or {}))
    fs.makedirs(root, exist_ok=True)
    m_path = posixpath.join(root, "metrics.json")
    r_path = posixpath.join(root, "report.html")
    metrics = dict(metrics, report={"originals_included": bool(originals)})
    atomic_write(fs, m_path, (json.dumps(metrics, indent=2, sort_keys=False, allow_nan=False) + "\n").encode())
    atomic_write(fs, r_path, render(metrics, groups, originals=originals).encode("utf-8"))
    return {"metrics": display_uri(fs, m_path), "report": display_uri(fs, r_path)}


def evaluate_run(audit_uri: str, subjects_uri: str, out_dir: str, *, run_ids: list[str] | None = None,
                 all_runs: bool = False, include_quarantined: bool = False, originals: bool = True,
                 mobilefacenet: str | None = None, detector: str | None = None, second_detector: str = "auto",
                 second_detector_max: int | None = None, evaluator: Evaluator | None = None,
                 public_ref: str | None = None, public_n: int | None = None, manifest=None,
                 progress: bool | None = None, adaptive_on: str = "independent",
                 dp_audit: bool = True, recognizers: list[str] | None = None) -> tuple[dict, dict]:
    from deid.evaluate.aware import DEFAULT_N

    ev = evaluator or Evaluator(mobilefacenet=mobilefacenet, second_detector=second_detector,
                                second_detector_max=second_detector_max, public_ref=public_ref,
                                public_n=public_n or DEFAULT_N, manifest=manifest, progress=progress,
                                adaptive_on=adaptive_on, dp_audit=dp_audit,
                                recognizers={r: None for r in recognizers} if recognizers else None)
    metrics, groups, _ = ev.evaluate(audit_uri, subjects_uri, run_ids=run_ids, all_runs=all_runs,
                                     include_quarantined=include_quarantined, detector=detector)
    return metrics, write_outputs(out_dir, metrics, groups, originals=originals)

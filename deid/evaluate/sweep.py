"""``deid sweep``: run a grid of method strengths on the same inputs, evaluate every run,
and plot privacy-utility curves (T1 top-1 against detection rate and against face SSIM).

Grid syntax (``--param``, repeatable): ``[METHOD:]KEY=V1,V2,...``. ``KEY`` is a dotted
manifest path (``anonymize.params.sigma``); values are YAML scalars. Axes with the same
METHOD prefix form one grid (their cartesian product) run with ``anonymize.method =
METHOD`` (its parameters start from that method's defaults); axes without a prefix apply
to the manifest's own method and parameters. Every point is a real run: its outputs go to
``OUT/runs/NN-<method>/``, all runs share the audit ``OUT/audit`` and, for DP methods, are
charged to the manifest's ledger like any release (use a scratch ledger for sweeps).
"""

from __future__ import annotations

import itertools
import posixpath
from dataclasses import dataclass

import yaml

from deid.config.schema import Manifest


class SweepError(ValueError):
    """A malformed ``--param`` or a grid point the manifest schema refuses."""


@dataclass(frozen=True)
class Axis:
    method: str | None
    key: str
    values: tuple


def parse_param(spec: str) -> Axis:
    if "=" not in spec:
        raise SweepError(f"--param {spec!r}: expected [METHOD:]KEY=V1,V2,...")
    left, right = spec.split("=", 1)
    method = None
    if ":" in left:
        method, left = left.split(":", 1)
        method = method.strip()
    key = left.strip()
    if not key or any(not p for p in key.split(".")):
        raise SweepError(f"--param {spec!r}: empty key")
    try:
        values = tuple(yaml.safe_load(v.strip()) for v in right.split(",") if v.strip() != "")
    except yaml.YAMLError as exc:
        raise SweepError(f"--param {spec!r}: cannot parse a value ({exc})") from None
    if not values:
        raise SweepError(f"--param {spec!r}: no values")
    return Axis(method=method, key=key, values=values)


def _set(d: dict, dotted: str, value) -> None:
    parts = dotted.split(".")
    for p in parts[:-1]:
        d = d.setdefault(p, {})
        if not isinstance(d, dict):
            raise SweepError(f"{dotted}: {p} is not a section")
    d[parts[-1]] = value


def grid(base: Manifest, axes: list[Axis]) -> list[tuple[str, dict]]:
    """The grid points as ``(slug, manifest dict)``; validation happens when each is built."""
    by_method: dict[str | None, list[Axis]] = {}
    for a in axes:
        by_method.setdefault(a.method, []).append(a)
    points = []
    for method, group in by_method.items():
        for combo in itertools.product(*[a.values for a in group]):
            m = base.model_dump(mode="json")
            if method is not None:
                m["anonymize"] = {"method": method, "params": {}}
            for a, v in zip(group, combo):
                _set(m, a.key, v)
            slug = "-".join([m["anonymize"]["method"]] + [f"{a.key.rsplit('.', 1)[-1]}{v}" for a, v in zip(group, combo)])
            points.append((slug, m))
    return points


def sweep(base: Manifest, params: list[str], out_dir: str, *, subjects: str | None = None, engine: str | None = None,
          originals: bool = True, mobilefacenet: str | None = None, second_detector: str = "auto",
          second_detector_max: int | None = None, progress: bool = False, echo=print, public_ref: str | None = None,
          public_n: int | None = None, recognizers: list[str] | None = None) -> tuple[dict, dict]:
    from deid.config import ManifestError, manifest_from_dict
    from deid.evaluate.core import Evaluator
    from deid.evaluate.run import write_outputs
    from deid.pipeline import run_job

    axes = [parse_param(p) for p in params]
    if not axes:
        raise SweepError("give at least one --param")
    subjects = subjects or base.input.subjects
    if not subjects:
        raise SweepError("subject labels are needed to measure re-identification: --subjects CSV or input.subjects")
    out = out_dir.rstrip("/")
    audit = posixpath.join(out, "audit")
    built = []
    for i, (slug, m) in enumerate(grid(base, axes)):
        run_dir = posixpath.join(out, "runs", f"{i:02d}-{slug}")
        m["output"]["uri"] = posixpath.join(run_dir, "release")
        m["output"]["quarantine_uri"] = posixpath.join(run_dir, "quarantine")
        m["audit"]["uri"] = audit
        try:
            built.append((slug, manifest_from_dict(m, source=f"sweep point {slug}")))
        except ManifestError as exc:
            raise SweepError(str(exc)) from None
    run_ids = []
    for slug, m in built:
        res = run_job(m, engine=engine, progress=progress)
        run_ids.append(res.run_id)
        echo(f"  {slug}: run {res.run_id}, " + ", ".join(f"{k} {v}" for k, v in res.summary["counts"].items() if v))
    from deid.evaluate.aware import DEFAULT_N

    # the base manifest gives the aware attacker the detector and the latent model of every point
    ev = Evaluator(mobilefacenet=mobilefacenet, second_detector=second_detector, second_detector_max=second_detector_max,
                   public_ref=public_ref, public_n=public_n or DEFAULT_N, manifest=base, progress=progress,
                   recognizers={r: None for r in recognizers} if recognizers else None)
    metrics, groups, _ = ev.evaluate(audit, subjects, run_ids=run_ids, include_quarantined=True)
    metrics["sweep"] = {"params": list(params), "points": [s for s, _ in built]}
    uris = write_outputs(out, metrics, groups, originals=originals)
    from deid.evaluate.report import curves_figure

    fig = curves_figure(metrics)
    fig.savefig(posixpath.join(out, "sweep.png"), dpi=120, bbox_inches="tight")
    uris["curves"] = posixpath.join(out, "sweep.png")
    return metrics, uris


def summary_lines(metrics: dict) -> list[str]:
    """One line per group: the numbers a user picks an operating point from."""
    recs = [r["name"] for r in metrics["recognizers"]]
    strong = metrics["adaptive"]["recognizers"][0]
    lines = [f"{'group':<34} {'n':>4} " + " ".join(f"{'T1@1 ' + r[:6]:>12}" for r in recs)
             + f" {'strongest@1 ' + strong[:6]:>26} {'chance':>7} {'detected':>9} {'SSIM face':>9}"]
    for g in metrics["groups"]:
        t1 = [g["privacy"][r]["attacks"]["T1"]["top1"] for r in recs]
        name, top = strongest(g["privacy"][strong]["attacks"])
        u = g["utility"]
        lines.append(f"{g['label'][:34]:<34} {g['n_records']:>4} " + " ".join(f"{_p(x):>12}" for x in t1)
                     + f" {name + ' ' + _p(top):>26} {_p(g['privacy'][strong]['attacks']['T1']['chance_top1']):>7}"
                     + f" {_p(u['detection_rate']['configured']['rate']):>9} {_f(u['face']['ssim']):>9}")
    return lines


def strongest(attacks: dict) -> tuple[str, float | None]:
    """The attack with the highest top-1 (same-source excluded: it is read against the reference,
    not chance alone) and its rate."""
    rates = {k: v["top1"] for k, v in attacks.items() if k != "same_source" and v.get("top1") is not None}
    if not rates:
        return "-", None
    k = max(rates, key=rates.get)
    return k, rates[k]


def _p(x) -> str:
    return "-" if x is None else f"{100 * x:.1f}%"


def _f(x) -> str:
    return "-" if x is None else f"{x:.3f}"


__all__ = ["Axis", "SweepError", "grid", "parse_param", "summary_lines", "sweep"]

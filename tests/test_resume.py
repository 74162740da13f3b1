"""Resume after a crash: the whole run (its process group) is SIGKILLed at seeded random
points of a 40-image DP run, then run again until it finishes. Checked on disk afterwards:
one standing audit row per input, every released file exists once and matches its
audit sha256, no temporary files, and the ledger holds at least the released charges."""

from __future__ import annotations

import hashlib
import os
import random
import signal
import subprocess
import sys
import time
from pathlib import Path

import numpy as np
import pandas as pd
import psutil
import pytest
import yaml
from PIL import Image

from conftest import REPO, base_manifest, lfw_images
from deid.config import manifest_from_dict
from deid.io.write import TMP_PREFIX
from deid.pipeline import run_job
from deid.pipeline.resume import standing_rows

SECRET = "0123456789abcdef0123456789abcdef-resume-secret"
N_IMAGES = 40


def _corpus(dst: Path, n: int) -> Path:
    """n distinct real-face photos: the bundled LFW faces, mirrored, shifted and re-toned."""
    src = [np.asarray(Image.open(p).convert("RGB")) for p in lfw_images()]
    for i in range(n):
        img = src[i % len(src)]
        k = i // len(src)
        if k % 2:
            img = img[:, ::-1]
        dx, dy = (k * 3) % 17, (k * 5) % 13
        img = img[dy:dy + 230, dx:dx + 230]
        img = np.clip(img.astype(np.float32) * (0.9 + 0.01 * (k % 20)), 0, 255).astype(np.uint8)
        folder = dst / f"batch{i % 4}"
        folder.mkdir(parents=True, exist_ok=True)
        Image.fromarray(img).save(folder / f"img{i:04d}.jpg", quality=92)
    return dst


def _manifest(tmp: Path, inp: Path, engine: str = "ray") -> Path:
    m = base_manifest(
        inp, tmp,
        anonymize={"method": "dp-image", "params": {"epsilon": 2.0}},
        privacy={"ledger": str(tmp / "ledger.sqlite"), "max_epsilon": 1000.0},
        checks={"enabled": False, "no_face": "keep"},
        audit={"flush_seconds": 0.5},
        run={"batch_size": 4, "actors": 2, "cpus": 2, "engine": engine},
    )
    path = tmp / f"job-{engine}.yaml"
    path.write_text(yaml.safe_dump(m))
    return path


def _deid(manifest: Path) -> subprocess.Popen:
    env = dict(os.environ, DEID_SUBJECT_KEY=SECRET, PYTHONUNBUFFERED="1")
    env["PYTHONPATH"] = os.pathsep.join([str(REPO), env.get("PYTHONPATH", "")])
    return subprocess.Popen([sys.executable, "-m", "deid.cli.app", "run", str(manifest), "--no-progress"],
                            cwd=REPO, env=env, start_new_session=True,
                            stdout=subprocess.DEVNULL, stderr=subprocess.PIPE)


def _kill_run(proc: subprocess.Popen) -> None:
    """SIGKILL the run's process group, and any Ray process of it that left the group."""
    try:
        tree = psutil.Process(proc.pid).children(recursive=True)
    except psutil.NoSuchProcess:
        tree = []
    try:
        os.killpg(proc.pid, signal.SIGKILL)
    except ProcessLookupError:
        pass
    for p in tree:
        try:
            p.kill()
        except psutil.NoSuchProcess:
            pass
    proc.wait(timeout=30)
    psutil.wait_procs(tree, timeout=30)


def _n_files(root: Path) -> int:
    return sum(1 for p in root.rglob("*") if p.is_file()) if root.exists() else 0


def test_sigkill_at_random_points_then_resume(tmp_path):
    inp = _corpus(tmp_path / "in", N_IMAGES)
    # the same job on both engines (a run resumes whichever engine wrote the audit): the kill
    # mid-run is of a run on Ray (its workers with it); the start-up kill and the run that
    # completes are in-process, as `engine: auto` runs a small job (a start on Ray costs ~16 s)
    ray_job, local_job = _manifest(tmp_path, inp, "ray"), _manifest(tmp_path, inp, "local")
    release, quarantine, audit = tmp_path / "release", tmp_path / "quarantine", tmp_path / "audit"
    rng = random.Random(20261123)
    # Kill points: once during start-up (before any output), then after a random number of outputs
    points = [("seconds", rng.uniform(1.0, 4.0), local_job), ("outputs", rng.randint(5, 30), ray_job)]
    kills = 0
    for kind, at, job in points:
        proc = _deid(job)
        deadline = time.monotonic() + 240
        while time.monotonic() < deadline and proc.poll() is None:
            if kind == "seconds" and time.monotonic() > deadline - 240 + at:
                break
            if kind == "outputs" and _n_files(release) >= at:
                break
            time.sleep(0.05)
        if proc.poll() is None:
            _kill_run(proc)
            kills += 1
    assert kills >= 2, "the run finished before the kill points: the test did not test a crash"
    partial = _n_files(release)
    assert 0 < partial < N_IMAGES

    proc = _deid(local_job)
    _, err = proc.communicate(timeout=600)
    assert proc.returncode == 0, err.decode()[-2000:]

    rows = pd.read_parquet(audit / "records")
    last_run = rows.run_id.max()
    last = rows[rows.run_id == last_run]
    assert len(last) == N_IMAGES and last.record_id.is_unique  # the final run: one row per input
    assert (last.status == "skipped").sum() > 0                # it resumed
    stand = standing_rows(str(audit)).to_pandas()
    assert len(stand) == N_IMAGES and stand.record_id.is_unique
    assert set(stand.status) == {"released"}, stand.status.value_counts()
    # Every standing release exists exactly once and holds the bytes the audit names.
    files = sorted(str(p) for p in release.rglob("*") if p.is_file())
    assert sorted(stand.output_uri) == files
    for uri, sha in zip(stand.output_uri, stand.output_sha256):
        assert hashlib.sha256(Path(uri).read_bytes()).hexdigest() == sha
    # Skipped rows point at the row that stands.
    sk = last[last.status == "skipped"].merge(stand, on="record_id", suffixes=("", "_s"))
    assert (sk.resumed_from == sk.run_id_s).all() and (sk.output_sha256 == sk.output_sha256_s).all()
    # Nothing temporary or partial anywhere under the prefixes.
    for root in (release, quarantine, audit):
        assert not [p for p in root.rglob("*") if p.name.startswith(TMP_PREFIX)] if root.exists() else True
    # The ledger: at least one charge per released face (a killed draw may be charged twice, never less).
    from deid.privacy.ledger import Ledger

    with Ledger.open(str(tmp_path / "ledger.sqlite"), 1000.0, 1e-6, create=False) as led:
        charged = sum(s.n_charges for s in led.summary())
    released_faces = int(stand.n_faces.sum())
    assert released_faces > 0 and charged >= released_faces


def test_rerun_skips_committed_and_no_resume_redoes(tmp_path, photos):
    m = manifest_from_dict(base_manifest(photos, tmp_path, checks={"enabled": False, "no_face": "keep"}))
    first = run_job(m, engine="local", progress=False)
    assert first.summary["counts"]["released"] == 6
    from deid.pipeline import dry_run

    plan = dry_run(m)
    assert plan["records"] == 6 and plan["skipped_committed"] == 6 and plan["to_process"] == 0
    assert dry_run(m, resume=False)["to_process"] == 6
    again = run_job(m, engine="local", progress=False)
    assert again.summary["counts"]["skipped"] == 6 and again.summary["audit_rows"] == 6
    # A changed run section (actors, batch size) is the same job; a changed method is not.
    m2 = manifest_from_dict(base_manifest(photos, tmp_path, checks={"enabled": False, "no_face": "keep"},
                                          run={"batch_size": 3}))
    assert run_job(m2, engine="local", progress=False).summary["counts"]["skipped"] == 6
    m3 = manifest_from_dict(base_manifest(photos, tmp_path, checks={"enabled": False, "no_face": "keep"},
                                          anonymize={"method": "pixelate"}))
    assert run_job(m3, engine="local", progress=False).summary["counts"]["released"] == 6
    fresh = run_job(m, engine="local", progress=False, resume=False)
    assert fresh.summary["counts"]["released"] == 6
    # A deleted output is not committed any more: only that record is redone.
    victim = next(p for p in (tmp_path / "release").rglob("*") if p.is_file())
    victim.unlink()
    redo = run_job(m, engine="local", progress=False)
    assert redo.summary["counts"]["released"] == 1 and redo.summary["counts"]["skipped"] == 5
    assert victim.exists()


def test_transient_failures_are_retried_and_stale_outputs_reconciled(tmp_path, photos):
    """A record that ended quarantined on the retry leaves nothing at the release path,
    even when an earlier, unaudited attempt had released it; lost rows are retried."""
    sections = dict(checks={"enabled": False, "no_face": "keep"})
    m = manifest_from_dict(base_manifest(photos, tmp_path, **sections))
    run_job(m, engine="local", progress=False)
    released = {p.stem for p in (tmp_path / "release").rglob("*") if p.is_file()}
    assert len(released) == 6
    # The audit of that run never reached disk (killed before its flush); the retry's
    # checks quarantine every face (an impossible distance), and no-face photos are dropped.
    import shutil

    shutil.rmtree(tmp_path / "audit")
    m2 = manifest_from_dict(base_manifest(photos, tmp_path, checks={"min_identity_distance": 1.99,
                                                                   "on_fail": "quarantine", "no_face": "drop"}))
    res = run_job(m2, engine="local", progress=False)
    df = pd.read_parquet(res.records_uri)
    assert set(df.status) <= {"quarantined", "dropped"} and (df.status == "quarantined").any()
    left = [p for p in (tmp_path / "release").rglob("*") if p.is_file()]
    assert left == [], f"stale releases left behind: {left}"
    q = {p.stem for p in (tmp_path / "quarantine").rglob("*") if p.is_file()}
    assert q == {Path(u).stem for u in df.output_uri.dropna()}

    # A lost row (the engine died) does not commit its record: the next run does it.
    import pyarrow as pa
    import pyarrow.parquet as pq

    from deid.audit.schema import AUDIT_SCHEMA

    lost = pa.Table.from_pandas(df, schema=AUDIT_SCHEMA, preserve_index=False).to_pylist()
    for r in lost[:2]:
        r.update(run_id="99991231T000000Z-lost", status="failed", error_code="lost", output_uri=None)
    pq.write_table(pa.Table.from_pylist(lost[:2], schema=AUDIT_SCHEMA),
                   tmp_path / "audit" / "records" / "99991231T000000Z-lost-part-00000.parquet")
    again = run_job(m2, engine="local", progress=False).summary["counts"]
    assert again["skipped"] == 4 and again["quarantined"] + again["dropped"] == 2


def test_two_runs_in_one_second_the_later_stands(tmp_path):
    """Run ids sort as the runs started, also within one second (a fast second run after a
    failed one: CI found the failed row standing when ids were to the second)."""
    import pyarrow as pa
    import pyarrow.parquet as pq

    from deid.audit.schema import AUDIT_SCHEMA
    from deid.pipeline.run import new_run_id

    ids = []
    while len(ids) < 20:
        ids.append(new_run_id())
        time.sleep(0.002)
    assert ids == sorted(ids) and len(set(ids)) == len(ids)
    first, second = next((a, b) for a, b in zip(ids, ids[1:]) if a[:15] == b[:15])  # the same second
    records = tmp_path / "audit" / "records"
    records.mkdir(parents=True)
    for run_id, status in ((second, "released"), (first, "failed")):  # written out of order
        row = dict.fromkeys(AUDIT_SCHEMA.names) | {"run_id": run_id, "record_id": "r0", "status": status,
                                                    "input_uri": "/in/0.jpg"}
        if status == "failed":
            row["error_code"] = "lost"
        pq.write_table(pa.Table.from_pylist([row], schema=AUDIT_SCHEMA), records / f"{run_id}-part-00000.parquet")
    stand = standing_rows(str(tmp_path / "audit")).to_pandas()
    assert list(stand.status) == ["released"] and stand.run_id[0] == second

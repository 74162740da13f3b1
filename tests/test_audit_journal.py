"""When the audit cannot be written: the probe before the first release, the local journal,
stopping mid-run, and the resumed run that completes the audit (deid.audit.journal).

Every failure here is a real filesystem condition (or a real S3 bucket that does not exist),
never a mocked writer. Tests run as root on CI, and chmod does not stop root, so the
mid-run failure replaces the audit folder by a regular file: a path component that is a file
gives ENOTDIR to everyone. The read-only (chmod) variant runs when the tests are not root.
"""

from __future__ import annotations

import os
import shutil
from collections import Counter
from pathlib import Path

import pandas as pd
import pyarrow as pa
import pytest
from typer.testing import CliRunner

from conftest import base_manifest, lfw_images
from deid.audit.journal import AuditJournal, journal_folder, read_segment, replay
from deid.audit.schema import AUDIT_SCHEMA
from deid.audit.writer import AuditWriter, read_audit
from deid.config import manifest_from_dict
from deid.pipeline import RunError, run_job
from deid.pipeline.errors import AuditStopped
from deid.pipeline.resume import standing_rows

pytestmark = pytest.mark.timeout(300)
QUICK = {"checks": {"enabled": False, "no_face": "keep", "residual": "off"}}


@pytest.fixture
def faces(tmp_path: Path) -> Path:
    """8 real LFW faces."""
    src = tmp_path / "in"
    src.mkdir()
    for p in lfw_images()[:8]:
        shutil.copy(p, src / p.name)
    return src


def _manifest(inp: Path, tmp: Path, **sections):
    sec = {**QUICK, **sections}
    sec.setdefault("run", {})
    sec["run"] = {"batch_size": 2, "state_dir": str(tmp / "state"), **sec["run"]}
    sec["audit"] = {"flush_seconds": 0.001, **sec.get("audit", {})}  # a part per batch
    return manifest_from_dict(base_manifest(inp, tmp, **sec))


def _files(root: Path) -> list[str]:
    return sorted(str(p) for p in root.rglob("*") if p.is_file()) if root.exists() else []


def _journal_rows(m) -> pd.DataFrame:
    folder = journal_folder(m.run.state_dir, m.audit_uri)
    tables = [read_segment(p) for p in sorted(folder.rglob("part-*.arrows"))]
    return pa.concat_tables(tables).to_pandas() if tables else AUDIT_SCHEMA.empty_table().to_pandas()


def _parts(audit: Path) -> pd.DataFrame:
    parts = sorted((audit / "records").glob("*.parquet")) if (audit / "records").is_dir() else []
    return pd.concat([pd.read_parquet(p) for p in parts]) if parts else AUDIT_SCHEMA.empty_table().to_pandas()


# ----------------------------------------------------------------------------- before the run
def test_audit_under_a_file_is_refused_before_anything_is_released(tmp_path, faces):
    """The audit's parent is a regular file (ENOTDIR, for root too): a clear error naming
    audit.uri and the reason, from the API and from `deid run`; nothing released, no journal."""
    blocker = tmp_path / "blocker"
    blocker.write_text("a file where the audit folder should be\n")
    m = _manifest(faces, tmp_path, audit={"uri": str(blocker / "audit")})
    with pytest.raises(RunError) as exc:
        run_job(m, engine="local", progress=False)
    msg = str(exc.value)
    assert f"audit.uri = {blocker / 'audit'}" in msg and "Not a directory" in msg, msg
    assert "Nothing was processed or released" in msg
    assert not isinstance(exc.value, AuditStopped)
    assert _files(tmp_path / "release") == [] and _files(tmp_path / "quarantine") == []
    assert _files(tmp_path / "state") == []

    import yaml

    from deid.cli.app import app

    job = tmp_path / "job.yaml"
    job.write_text(yaml.safe_dump(m.model_dump(mode="json")))
    res = CliRunner().invoke(app, ["run", str(job), "--no-progress"])
    assert res.exit_code == 2, res.output
    assert "error: cannot write the audit at audit.uri" in res.output and "Not a directory" in res.output
    assert "Traceback" not in res.output
    assert _files(tmp_path / "release") == []


@pytest.mark.skipif(os.geteuid() == 0, reason="chmod does not stop root; the ENOTDIR test covers root")
def test_read_only_audit_folder_is_refused_before_anything_is_released(tmp_path, faces):
    audit = tmp_path / "audit"
    (audit / "records").mkdir(parents=True)
    (audit / "records").chmod(0o555)
    try:
        m = _manifest(faces, tmp_path)
        with pytest.raises(RunError) as exc:
            run_job(m, engine="local", progress=False)
        assert "audit.uri" in str(exc.value) and "Permission denied" in str(exc.value)
        assert _files(tmp_path / "release") == []
    finally:
        (audit / "records").chmod(0o755)


def test_s3_audit_bucket_missing_is_refused_and_the_probe_leaves_nothing(tmp_path, faces, s3):
    """On S3 the probe is one PUT and one DELETE under audit/records/: a bucket that does not
    exist is refused before any image is written; a good one is left with parts only."""
    dst = s3.new_bucket("rel")
    opts = s3.storage_options("audit-key")
    job = {**QUICK, "input": {"uri": str(faces)},
           "output": {"uri": f"s3://{dst}/release", "quarantine_uri": f"s3://{dst}/quarantine",
                      "storage_options": s3.storage_options("output-key")},
           "audit": {"uri": "s3://no-such-audit-bucket/audit", "storage_options": opts},
           "run": {"batch_size": 4, "progress": False, "state_dir": str(tmp_path / "state")}}
    mark = s3.mark()
    with pytest.raises(RunError) as exc:
        run_job(manifest_from_dict(job), engine="local", progress=False)
    assert "audit.uri = s3://no-such-audit-bucket/audit" in str(exc.value), exc.value
    assert not s3.objects(dst), "an image was released although the audit could not be written"
    assert not [r for r in s3.since(mark) if r.writes and r.bucket == dst]

    job["audit"]["uri"] = f"s3://{dst}/audit"
    mark = s3.mark()
    res = run_job(manifest_from_dict(job), engine="local", progress=False)
    probes = [r for r in s3.since(mark) if "probe" in r.key and r.writes]
    assert [r.method for r in probes] == ["PUT", "DELETE"] and probes[0].key.startswith("audit/records/.deid-tmp-")
    assert probes[0].access_key == "audit-key"
    keys = set(s3.objects(dst, "audit/"))
    assert not [k for k in keys if "probe" in k]
    assert len(read_audit(f"s3://{dst}/audit", res.run_id, storage_options=opts)) == 8


# ----------------------------------------------------------------------------- mid-run
def _break_after_first_part(audit: Path, away: Path):
    """on_batch: once the first part is on disk, the audit folder becomes a regular file."""
    state = {"done": False}

    def on_batch(_table):
        if not state["done"] and list((audit / "records").glob("*-part-00000.parquet")):
            state["done"] = True
            audit.rename(away)
            audit.write_text("the audit folder was replaced by a file\n")
    return on_batch


def _heal(audit: Path, away: Path) -> None:
    audit.unlink()
    away.rename(audit)


def _assert_every_release_has_one_row(release: Path, rows: pd.DataFrame) -> None:
    files = _files(release)
    named = rows[rows.status == "released"].output_uri
    assert named.is_unique
    assert sorted(named) == files, (sorted(named), files)


@pytest.mark.parametrize("engine", ["local", "ray"])
def test_audit_failure_mid_run_stops_releases_and_the_next_run_completes_it(tmp_path, faces, engine, request):
    if engine == "ray":
        request.getfixturevalue("ray_local")
    audit, away, release = tmp_path / "audit", tmp_path / "audit.away", tmp_path / "release"
    m = _manifest(faces, tmp_path, run={"actors": 1} if engine == "ray" else {})
    with pytest.raises(AuditStopped) as exc:
        run_job(m, engine=engine, progress=False, on_batch=_break_after_first_part(audit, away))
    msg = str(exc.value)
    folder = journal_folder(m.run.state_dir, m.audit_uri)
    assert f"audit.uri = {audit}" in msg and "Not a directory" in msg, msg
    assert "deid run" in msg and str(folder) in msg and "stopped releasing" in msg
    assert exc.value.exit_code == 1

    # every released image has its row, in the audit or in the journal; and exactly one
    written, journaled = _parts(away), _journal_rows(m)
    assert len(written) >= 2 and len(journaled) >= 1
    run1 = pd.concat([written, journaled])
    assert run1.record_id.is_unique and len(run1) == 8  # the failed run still has one row per input
    _assert_every_release_has_one_row(release, run1)
    stopped = run1[run1.error_code == "lost"]
    assert not any(Path(u).exists() for u in stopped.output_uri.dropna())
    if engine == "local":  # in-process: nothing at all after the failing batch
        assert len(stopped) == 8 - 4 and (run1.status == "released").sum() == 4
    assert list(folder.glob("*/summary.json")), "the failed run's summary is kept for the next run"

    # the next run writes the journal first, then finishes the rest
    _heal(audit, away)
    res = run_job(m, engine=engine, progress=False)
    assert not folder.exists(), list(folder.rglob("*"))
    rows = pd.read_parquet(audit / "records")
    first = rows[rows.run_id != res.run_id]
    assert len(first) == 8 and first.record_id.is_unique  # run 1: exactly one row per input
    assert (audit / "summaries" / f"{first.run_id.iloc[0]}.json").exists()
    second = rows[rows.run_id == res.run_id]
    assert len(second) == 8 and second.record_id.is_unique
    assert Counter(second.status)["skipped"] == (first.status == "released").sum()
    stand = standing_rows(str(audit)).to_pandas()
    assert len(stand) == 8 and set(stand.status) == {"released"}
    _assert_every_release_has_one_row(release, stand)


def test_cli_exits_non_zero_and_the_second_deid_run_completes(tmp_path, faces):
    """The same through `deid run`: the audit folder is swapped for a file by a watcher
    thread as soon as the first part appears (one record per batch, so parts keep coming)."""
    import threading
    import time

    import yaml

    from deid.cli.app import app

    audit, away, release = tmp_path / "audit", tmp_path / "audit.away", tmp_path / "release"
    m = _manifest(faces, tmp_path, run={"batch_size": 1})
    job = tmp_path / "job.yaml"
    job.write_text(yaml.safe_dump(m.model_dump(mode="json")))
    stop = threading.Event()

    def watch():
        while not stop.is_set():
            if list((audit / "records").glob("*-part-00000.parquet")):
                audit.rename(away)
                audit.write_text("not a folder\n")
                return
            time.sleep(0.002)

    t = threading.Thread(target=watch, daemon=True)
    t.start()
    res = CliRunner().invoke(app, ["run", str(job), "--no-progress"])
    stop.set()
    t.join()
    assert away.exists(), "the run finished before the audit folder was swapped"
    assert res.exit_code == 1, res.output
    assert "audit.uri" in res.output and "deid run" in res.output and "Traceback" not in res.output
    run1 = pd.concat([_parts(away), _journal_rows(m)])
    _assert_every_release_has_one_row(release, run1)

    _heal(audit, away)
    res = CliRunner().invoke(app, ["run", str(job), "--no-progress"])
    assert res.exit_code == 0, res.output
    stand = standing_rows(str(audit)).to_pandas()
    assert len(stand) == 8 and set(stand.status) == {"released"}
    _assert_every_release_has_one_row(release, stand)
    assert not journal_folder(m.run.state_dir, m.audit_uri).exists()


def test_journal_failure_mid_run_writes_straight_to_the_audit(tmp_path, faces):
    """The driver's journal folder becomes a file mid-run (its disk "fails"): the rows go to
    the audit directly, releases stop, and the error says so; the next run finishes."""
    release = tmp_path / "release"
    m = _manifest(faces, tmp_path)
    folder = journal_folder(m.run.state_dir, m.audit_uri)
    state = {"done": False}

    def on_batch(_table):
        if not state["done"]:
            state["done"] = True
            run_dir = next(p for p in folder.iterdir() if p.is_dir())
            shutil.rmtree(run_dir)
            run_dir.write_text("not a folder\n")

    with pytest.raises(AuditStopped) as exc:
        run_job(m, engine="local", progress=False, on_batch=on_batch)
    assert "journal could not be written" in str(exc.value) and "written to audit.uri" in str(exc.value)
    rows = _parts(tmp_path / "audit")
    assert len(rows) == 8 and rows.record_id.is_unique
    _assert_every_release_has_one_row(release, rows)
    for p in folder.iterdir():  # what the broken journal left (a file) is the user's to remove
        p.unlink()
    res = run_job(m, engine="local", progress=False)
    assert res.summary["counts"]["released"] + res.summary["counts"]["skipped"] == 8
    _assert_every_release_has_one_row(release, standing_rows(str(tmp_path / "audit")).to_pandas())


# ----------------------------------------------------------------------------- the journal itself
def _table(n: int, run_id: str = "r1", start: int = 0) -> pa.Table:
    rows = [dict.fromkeys(AUDIT_SCHEMA.names) | {"run_id": run_id, "record_id": f"rec{start + i}",
                                                   "input_uri": f"/in/{start + i}.jpg", "status": "failed",
                                                   "error_code": "lost"} for i in range(n)]
    return pa.Table.from_pylist(rows, schema=AUDIT_SCHEMA)


def test_a_part_replayed_after_it_was_written_is_still_one_part(tmp_path):
    """A crash between writing part N and removing its segment: the replay writes part N
    again under the same name, so its rows are in the audit once."""
    audit, state = tmp_path / "audit", tmp_path / "state"
    folder = journal_folder(str(state), str(audit))
    journal = AuditJournal(folder, "r1", str(audit))
    writer = AuditWriter(str(audit), "r1", journal=journal)
    writer.add(_table(3))
    kept = tmp_path / "segment-copy"
    shutil.copy(journal.segment_path(0), kept)
    writer.flush()
    assert not journal.segment_path(0).exists()
    shutil.copy(kept, journal.segment_path(0))  # as if the process died before the unlink
    journal.close(keep=True)
    other = AuditWriter(str(audit), "r2")
    done = replay(folder, other.write_part, other.write_run_summary)
    assert done.rows == 3 and done.runs == ["r1"]
    df = read_audit(str(audit)).to_pandas()
    assert len(df) == 3 and df.record_id.is_unique
    assert [p.name for p in folder.iterdir()] == ["audit_uri.txt"]  # no run left in the journal


def test_a_torn_append_keeps_the_complete_tables(tmp_path):
    audit = tmp_path / "audit"
    journal = AuditJournal(journal_folder(str(tmp_path / "state"), str(audit)), "r1", str(audit))
    journal.append(0, _table(2))
    journal.append(0, _table(2, start=2))
    path = journal.segment_path(0)
    size = path.stat().st_size
    journal.close(keep=True)
    with open(path, "r+b") as f:  # a crash in the middle of the second append
        f.truncate(size - 40)
    t = read_segment(path)
    assert t.column("record_id").to_pylist() == ["rec0", "rec1"]


def test_a_live_runs_journal_is_left_alone(tmp_path):
    audit = tmp_path / "audit"
    folder = journal_folder(str(tmp_path / "state"), str(audit))
    live = AuditJournal(folder, "live", str(audit))
    live.append(0, _table(1))
    writer = AuditWriter(str(audit), "other")
    assert replay(folder, writer.write_part, writer.write_run_summary).rows == 0
    assert live.segment_path(0).exists() and not (audit / "records").exists()
    live.close(keep=True)
    assert replay(folder, writer.write_part, writer.write_run_summary).rows == 1


def test_state_dir_inside_the_release_is_refused(tmp_path, faces):
    m = _manifest(faces, tmp_path, run={"state_dir": str(tmp_path / "release" / "state")})
    with pytest.raises(RunError, match="run.state_dir.*output.uri"):
        run_job(m, engine="local", progress=False)
    assert _files(tmp_path / "release") == []

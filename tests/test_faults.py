"""Worker faults: an actor process SIGKILLed mid-run is restarted by Ray Data and its batch
is redone, with no duplicate outputs and no double charges for records it had finished."""

from __future__ import annotations

import hashlib
import os
import signal
from pathlib import Path

import pandas as pd
import psutil

from conftest import base_manifest
from deid.config import manifest_from_dict
from deid.pipeline import run_job
from test_resume import _corpus


def _stage_actor_pids() -> set[int]:
    """Stage actor processes of this test session's Ray (children of this process; other
    Ray instances on the machine are not ours to kill)."""
    out = set()
    for p in psutil.Process(os.getpid()).children(recursive=True):
        try:
            if "MapWorker(MapBatches(ProcessRecords))" in " ".join(p.cmdline()):
                out.add(p.pid)
        except psutil.Error:
            pass
    return out


def test_actor_killed_mid_run_is_restarted_without_duplicates_or_double_charges(tmp_path, ray_local):
    n = 48
    inp = _corpus(tmp_path / "in", n)
    ledger = tmp_path / "ledger.sqlite"
    m = manifest_from_dict(base_manifest(
        inp, tmp_path,
        anonymize={"method": "dp-image", "params": {"epsilon": 2.0}},
        # a key file: the session's Ray workers started before any env var of this test
        privacy={"ledger": str(ledger), "max_epsilon": 1000.0, "subject_key_file": str(tmp_path / "subject.key"),
                 "create_subject_key": True, "subject_key_env": "DEID_TEST_UNSET_KEY"},
        checks={"enabled": False, "no_face": "keep"},
        run={"batch_size": 4, "actors": 2},
    ))
    killed: list[int] = []
    before: set[int] = set()
    seen_after: set[int] = set()

    def kill_one(table):  # after the first results: kill an actor that is working on a batch
        pids = _stage_actor_pids()
        if killed:
            seen_after.update(pids)
            return
        assert pids, "no stage actor process found to kill"
        before.update(pids)
        victim = sorted(pids)[0]
        os.kill(victim, signal.SIGKILL)
        killed.append(victim)

    res = run_job(m, engine="ray", progress=False, on_batch=kill_one)
    assert killed
    # Ray restarted the actor: a stage process that did not exist before the kill came up.
    assert seen_after - before, "no restarted stage actor was seen"
    df = pd.read_parquet(res.records_uri)
    assert len(df) == n and df.record_id.is_unique
    assert (df.status == "released").all(), df[["status", "error_code", "error"]].value_counts()
    # No duplicate outputs: one file per released row, holding the audited bytes.
    files = sorted(str(p) for p in (tmp_path / "release").rglob("*") if p.is_file())
    assert files == sorted(df.output_uri)
    for uri, sha in zip(df.output_uri, df.output_sha256):
        assert hashlib.sha256(Path(uri).read_bytes()).hexdigest() == sha
    # Charges: every released face once; a record the dead actor had finished is adopted on
    # retry (no new draw, no new charge). Only the draw in flight when it died may be charged twice.
    from deid.privacy.ledger import Ledger

    with Ledger.open(str(ledger), 1000.0, 1e-6, create=False) as led:
        charged = sum(s.n_charges for s in led.summary())
    faces = int(df.n_faces.sum())
    assert faces <= charged <= faces + int(df.n_faces.max()) * len(killed)


def test_a_redone_batch_adopts_finished_dp_records_and_charges_nothing_new(tmp_path, monkeypatch):
    """The retry of a batch, as Ray Data gives it to a restarted actor: same run, same records.
    Finished records are adopted (same bytes, no new charge); a record whose output vanished
    is drawn again and charged as a new attempt."""
    from deid.pipeline.run import plan_records
    from deid.pipeline.stages import ProcessRecords, RunContext
    from deid.privacy.service import BudgetService

    monkeypatch.setenv("DEID_SUBJECT_KEY", "0123456789abcdef0123456789abcdef-adopt-secret")
    inp = _corpus(tmp_path / "in", 6)
    ledger = tmp_path / "ledger.sqlite"
    m = manifest_from_dict(base_manifest(
        inp, tmp_path, anonymize={"method": "dp-image", "params": {"epsilon": 2.0}},
        privacy={"ledger": str(ledger), "max_epsilon": 1000.0}, checks={"no_face": "keep", "on_fail": "keep"}))
    batch = plan_records(m).records.drop_columns(["subject"])
    ctx = RunContext(run_id="20261123T000000Z-adopt", config_sha256="c", naming_key_id="k", job_sha256="j")
    service = BudgetService(str(ledger), 1000.0, 1e-6, "DEID_SUBJECT_KEY", None)
    first = ProcessRecords(m.model_dump(mode="json"), ctx.__dict__, service)(batch).to_pandas()
    assert (first.status == "released").all()
    charged = lambda: sum(s.n_charges for s in service._ledger.summary())  # noqa: E731
    n1 = charged()
    assert n1 == int(first.n_faces.sum())
    gone = first.output_uri.iloc[0]
    Path(gone).unlink()
    again = ProcessRecords(m.model_dump(mode="json"), ctx.__dict__, service)(batch).to_pandas()
    assert (again.status == "released").all()
    same = again.iloc[1:]
    assert list(same.output_sha256) == list(first.output_sha256.iloc[1:])      # adopted: the same bytes
    assert same.min_id_distance.notna().all()                                   # re-measured on the file
    assert again.output_sha256.iloc[0] != first.output_sha256.iloc[0]           # redrawn
    assert charged() == n1 + int(first.n_faces.iloc[0])                         # only the redraw is charged
    assert Path(gone).exists()

"""`deid run` end to end: real Ray, real dlib, real Parquet, on real faces."""

from __future__ import annotations

import hashlib
import json
import os
import shutil
import subprocess
import sys
from pathlib import Path

import numpy as np
import pandas as pd
import pyarrow.parquet as pq
import pytest
from PIL import Image

from conftest import LFW, REPO, base_manifest, lfw_images
from deid.audit import AUDIT_SCHEMA, read_audit
from deid.config import ManifestError, manifest_from_dict
from deid.io.listing import discover, load_subjects, record_id_for
from deid.pipeline import run_job


def _run(inp, tmp, engine="local", **sections):
    m = manifest_from_dict(base_manifest(inp, tmp, **sections))
    res = run_job(m, engine=engine, progress=False)
    return m, res, pd.read_parquet(res.records_uri)


def _files(root: Path) -> list[Path]:
    return sorted(p for p in root.rglob("*") if p.is_file()) if root.exists() else []


def test_ray_run_writes_outputs_audit_and_summary(photos, tmp_path, ray_local):
    m, res, df = _run(photos, tmp_path, engine="ray")
    inputs = sorted(p for p in photos.rglob("*.jpg"))
    # one row per input, keyed by the record id of its relative path
    assert len(df) == len(inputs) == res.summary["inputs"]
    assert set(df.record_id) == {record_id_for(str(p.relative_to(photos))) for p in inputs}
    assert (df.run_id == res.run_id).all()
    assert (df.status == "released").all(), df[["input_uri", "status", "error"]]
    assert df.n_faces.tolist() and (df.n_faces >= 1).all()
    # every released file exists once, matches its hash, and is a decodable image
    released = _files(tmp_path / "release")
    assert sorted(map(str, released)) == sorted(df.output_uri)
    for uri, digest in zip(df.output_uri, df.output_sha256):
        data = Path(uri).read_bytes()
        assert hashlib.sha256(data).hexdigest() == digest
        Image.open(uri).verify()
    # no input name leaks into released names (hash naming is the default)
    for p in inputs:
        assert not any(p.stem in str(r) for r in released)
    assert not any(".deid-tmp-" in str(p) for p in _files(tmp_path))
    # identity distances recorded for every face, and the summary agrees
    dists = [f["id_distance"] for faces in df.faces for f in faces]
    assert len(dists) == df.n_faces.sum() == res.summary["faces"]
    assert all(d is not None and d > 0 for d in dists)
    assert res.summary["id_distance"]["min"] == pytest.approx(min(dists), rel=1e-5)
    # and counts the faces by what was done to them, as the audit says
    from collections import Counter

    assert res.summary["face_treatments"] == dict(Counter(f["treatment"] for faces in df.faces for f in faces))
    assert sum(res.summary["face_treatments"].values()) == res.summary["faces"]
    summary = json.loads((tmp_path / "audit" / "summary.json").read_text())
    assert summary["run_id"] == res.run_id and summary["counts"]["released"] == len(inputs)
    assert (tmp_path / "audit" / "summaries" / f"{res.run_id}.json").exists()


def test_audit_schema_and_privacy(photos, tmp_path):
    _, res, df = _run(photos, tmp_path)
    table = pq.read_table(str(tmp_path / "audit" / "records"))
    assert table.schema.equals(AUDIT_SCHEMA, check_metadata=False)
    assert read_audit(str(tmp_path / "audit"), run_id=res.run_id).num_rows == len(df)
    # nothing that could rebuild a face: no float vectors anywhere in the schema
    face_fields = {f.name for f in AUDIT_SCHEMA.field("faces").type.value_type}
    assert face_fields == {"box", "det_score", "id_distance", "still_detected", "passed", "check", "epsilon", "delta",
                           "mechanism", "sensitivity", "noise_scale", "subject_spent_after", "attributes", "treatment"}
    for name in AUDIT_SCHEMA.names:
        assert not any(w in name for w in ("embed", "latent", "noise_sample", "seed", "subject_name"))
    row = df.iloc[0]
    assert row.tool_version and len(row.config_sha256) == 64 and len(row.input_sha256) == 64
    names = {fp["name"] for fp in row.model_fingerprints}
    assert {"dlib-hog", "dlib-shape5", "dlib-resnet128"} <= names
    assert json.loads(row.params_json)["strength"] > 0 and row.method == "blur" and row.dp_scope == "none"
    assert set(row.timings) >= {"decode_ms", "detect_ms", "anonymize_ms", "check_ms", "write_ms"}


@pytest.mark.parametrize("method", ["blur", "pixelate", "mask"])
def test_identity_distance_recorded_for_each_method(tmp_path, method):
    inp = tmp_path / "in"
    inp.mkdir()
    for p in lfw_images():
        shutil.copy(p, inp / p.name)
    _, _, df = _run(inp, tmp_path, anonymize={"method": method})
    faces = [f for fs in df.faces for f in fs]
    assert len(faces) == len(lfw_images())
    d = np.array([f["id_distance"] for f in faces])
    assert (d > 0.45).all()
    assert all(f["passed"] == (f["id_distance"] >= 0.6) for f in faces)
    assert df.method.eq(method).all()
    if method == "mask":
        assert not any(f["still_detected"] for f in faces)


def test_failed_checks_are_quarantined_never_released(photos, tmp_path):
    # an impossible threshold: every face fails its check
    _, _, df = _run(photos, tmp_path, checks={"min_identity_distance": 1.9, "on_fail": "quarantine"})
    assert (df.status == "quarantined").all()
    assert _files(tmp_path / "release") == []
    q = _files(tmp_path / "quarantine")
    assert sorted(map(str, q)) == sorted(df.output_uri)
    assert all(not f["passed"] for fs in df.faces for f in fs)


def test_drop_and_keep_policies(photos, tmp_path):
    _, _, df = _run(photos, tmp_path / "a", checks={"min_identity_distance": 1.9, "on_fail": "drop"})
    assert (df.status == "dropped").all() and df.output_uri.isna().all()
    assert _files(tmp_path / "a" / "release") == [] and _files(tmp_path / "a" / "quarantine") == []
    _, _, df = _run(photos, tmp_path / "b", checks={"min_identity_distance": 1.9, "on_fail": "keep"})
    assert (df.status == "released").all()


@pytest.mark.parametrize("policy,status", [("quarantine", "quarantined"), ("drop", "dropped"), ("keep", "released")])
def test_no_face_policy(tmp_path, policy, status):
    inp = tmp_path / "in"
    inp.mkdir()
    # a real photo region with no face in it (the rose, below both faces of kit_with_rose)
    from conftest import GROUP

    Image.open(GROUP / "kit_with_rose.jpg").crop((0, 520, 500, 700)).save(inp / "noface.jpg")
    _, _, df = _run(inp, tmp_path, checks={"no_face": policy})
    assert df.n_faces.tolist() == [0] and df.status.tolist() == [status]


def test_mirror_naming_keeps_relative_paths(photos, tmp_path):
    _, _, df = _run(photos, tmp_path, output={"naming": "mirror", "format": "png"}, checks={"enabled": False})
    got = sorted(str(Path(u).relative_to(tmp_path / "release")) for u in df.output_uri)
    want = sorted(str(p.relative_to(photos).with_suffix(".png")) for p in photos.rglob("*.jpg"))
    assert got == want


def test_hashed_names_are_stable_and_keyed(photos, tmp_path, monkeypatch):
    _, _, a = _run(photos, tmp_path / "a", checks={"enabled": False})
    _, _, b = _run(photos, tmp_path / "b", checks={"enabled": False})
    rel = lambda df, root: sorted(str(Path(u).relative_to(root)) for u in df.output_uri)  # noqa: E731
    assert rel(a, tmp_path / "a" / "release") == rel(b, tmp_path / "b" / "release")
    assert a.naming_key_id.nunique() == 1
    monkeypatch.setenv("DEID_NAMING_KEY", "another-key")
    _, _, c = _run(photos, tmp_path / "c", checks={"enabled": False})
    assert set(rel(a, tmp_path / "a" / "release")).isdisjoint(rel(c, tmp_path / "c" / "release"))
    assert c.naming_key_id.iloc[0] != a.naming_key_id.iloc[0]


def test_memory_filesystem_end_to_end(tmp_path):
    import fsspec

    fs = fsspec.filesystem("memory")
    for p in lfw_images()[:3]:
        fs.pipe_file(f"/deid-test/in/{p.parent.name}/{p.name}", p.read_bytes())
    m = manifest_from_dict({
        "input": {"uri": "memory://deid-test/in"},
        "output": {"uri": "memory://deid-test/release", "quarantine_uri": "memory://deid-test/q"},
        "run": {"progress": False},
    })
    res = run_job(m, engine="local", progress=False)
    t = read_audit(m.audit_uri)
    assert t.num_rows == 3 and set(t.column("status").to_pylist()) == {"released"}
    outs = t.column("output_uri").to_pylist()
    assert all(u.startswith("memory://") and "/deid-test/release/" in u for u in outs)
    assert all(fs.exists(u) for u in outs)
    assert res.summary["audit_records_uri"].startswith("memory://")
    fs.rm("/deid-test", recursive=True)


def test_listing_glob_hidden_files_subjects_and_outputs_inside_the_input_refused(tmp_path):
    inp = tmp_path / "in"
    (inp / "a" / "b").mkdir(parents=True)
    (inp / ".cache").mkdir()
    for rel in ("x.jpg", "a/y.JPG", "a/b/z.png", "a/b/notes.txt", ".cache/h.jpg", "a/.hidden.jpg"):
        (inp / rel).write_bytes(b"x")
    nested = inp / "release"  # an output nested inside the input is refused, naming the overlap
    with pytest.raises(ManifestError, match=r"output.uri .* overlaps input.uri .*never writes under its input"):
        manifest_from_dict({"input": {"uri": str(inp)}, "output": {"uri": str(nested)}})
    out = tmp_path / "release"
    sub = tmp_path / "subjects.csv"
    sub.write_text("path,subject\nx.jpg,alice\na/y.JPG,bob\n")
    m = manifest_from_dict({"input": {"uri": str(inp), "subjects": str(sub)}, "output": {"uri": str(out)}})
    t = discover(m, load_subjects(str(sub)))
    assert t.column("rel_path").to_pylist() == ["a/b/z.png", "a/y.JPG", "x.jpg"]
    assert t.column("subject").to_pylist() == [None, "bob", "alice"]
    m2 = manifest_from_dict({"input": {"uri": str(inp), "glob": ["a/**/*.{png,jpg}"]}, "output": {"uri": str(out)}})
    assert discover(m2).column("rel_path").to_pylist() == ["a/b/z.png", "a/y.JPG"]
    m3 = manifest_from_dict({"input": {"uri": str(inp), "glob": "*.jpg"}, "output": {"uri": str(out)}})
    assert discover(m3).column("rel_path").to_pylist() == ["x.jpg"]
    bad = tmp_path / "bad.csv"
    bad.write_text("file,person\nx.jpg,alice\n")
    from deid.io.listing import ListingError

    with pytest.raises(ListingError, match="needs columns path, subject"):
        load_subjects(str(bad))


def test_cli_run_prints_summary(tmp_path):
    inp = tmp_path / "photos"
    inp.mkdir()
    for p in lfw_images()[:2]:
        shutil.copy(p, inp / p.name)
    (inp / "broken.jpg").write_bytes(b"\xff\xd8\xff\xe0 nope")
    (tmp_path / "job.yaml").write_text(
        "input: {uri: photos}\noutput: {uri: out/release}\nrun: {cpus: 2, batch_size: 1}\n"
    )
    env = {**os.environ, "PYTHONPATH": str(REPO)}
    proc = subprocess.run([sys.executable, "-m", "deid.cli.app", "run", str(tmp_path / "job.yaml"), "--no-progress"],
                          capture_output=True, text=True, env=env, timeout=300)
    assert proc.returncode == 0, proc.stderr[-3000:]
    assert "released 2, failed 1" in proc.stdout
    assert str(tmp_path / "out" / "release") in proc.stdout
    summary = json.loads((tmp_path / "out" / "release-audit" / "summary.json").read_text())
    assert summary["counts"]["failed"] == 1 and summary["audit_rows"] == 3
    # the demo manifest's input folder and subjects side table are real
    assert (LFW / "subjects.csv").exists()


def test_a_run_that_stops_early_still_gives_every_input_a_row(photos, tmp_path):
    """If the engine dies mid-run, the records it never answered for get `lost` rows."""
    from deid.pipeline import engine as run_mod

    real = run_mod.local_results

    def dies_after_first_batch(*args):
        gen = real(*args)
        yield next(gen)
        raise RuntimeError("worker node lost\nlong traceback here")

    m = manifest_from_dict(base_manifest(photos, tmp_path, checks={"enabled": False}))
    run_mod.local_results = dies_after_first_batch
    try:
        res = run_job(m, engine="local", progress=False)
    finally:
        run_mod.local_results = real
    df = pd.read_parquet(res.records_uri)
    n = len(list(photos.rglob("*.jpg")))
    assert len(df) == n and df.record_id.is_unique
    assert (df.status == "released").sum() == 2  # batch_size 2: the first batch landed
    lost = df[df.error_code == "lost"]
    assert len(lost) == n - 2 and (lost.status == "failed").all()
    assert all("stopped early (RuntimeError: worker node lost)" in e for e in lost.error)
    assert res.summary["aborted"] == "RuntimeError: worker node lost"


def test_mirror_name_collisions_are_refused_and_the_rest_goes_on(tmp_path):
    inp = tmp_path / "in"
    inp.mkdir()
    src = lfw_images()
    shutil.copy(src[0], inp / "a.jpg")
    Image.open(src[1]).save(inp / "a.png")
    shutil.copy(src[2], inp / "b.jpg")
    _, res, df = _run(inp, tmp_path, output={"naming": "mirror"}, checks={"enabled": False})
    by = {Path(u).name: r for u, r in zip(df.input_uri, df.itertuples())}
    assert len(df) == 3 == res.summary["inputs"]
    assert by["a.jpg"].error_code == by["a.png"].error_code == "name_collision"
    assert "a.png" in by["a.jpg"].error and "naming: hash" in by["a.jpg"].error
    assert by["b.jpg"].status == "released"
    assert [p.name for p in _files(tmp_path / "release")] == ["b.jpg"]


def test_memory_uris_are_refused_for_ray_with_a_reason():
    from deid.pipeline import RunError

    m = manifest_from_dict({"input": {"uri": "memory://x/in"}, "output": {"uri": "/tmp/never-written"}})
    with pytest.raises(RunError, match="memory:// lives inside one process"):
        run_job(m, engine="ray", progress=False)


@pytest.mark.parametrize("write_threads", [4, 0])
def test_a_failed_write_is_one_failed_row_and_rows_come_only_after_their_files(photos, tmp_path, write_threads):
    """Writes run in the background (run.write_threads) or in line: the same outcome either
    way, and a batch's rows are handed back only once its released files exist."""
    blocked = tmp_path / "release" / "people" / (lfw_images()[1].stem + ".png")
    blocked.mkdir(parents=True)  # a folder where that output file must go: the rename fails
    seen_missing: list[str] = []

    def on_batch(table):
        for r in table.to_pylist():
            if r["status"] == "released" and not os.path.isfile(r["output_uri"]):
                seen_missing.append(r["output_uri"])

    m = manifest_from_dict(base_manifest(photos, tmp_path, output={"naming": "mirror", "format": "png"},
                                         checks={"enabled": False}, run={"write_threads": write_threads}))
    res = run_job(m, engine="local", progress=False, on_batch=on_batch)
    df = pd.read_parquet(res.records_uri)
    assert len(df) == 6 and not seen_missing
    bad = df[df.status == "failed"]
    assert bad.error_code.tolist() == ["write_error"]
    assert bad.input_uri.iloc[0].endswith(lfw_images()[1].name)
    assert "cannot write output" in bad.error.iloc[0] and str(blocked) in bad.error.iloc[0]
    assert bad.output_uri.isna().all()
    ok = df[df.status == "released"]
    assert len(ok) == 5
    for uri, sha in zip(ok.output_uri, ok.output_sha256):
        assert hashlib.sha256(Path(uri).read_bytes()).hexdigest() == sha
    assert all(t["write_ms"] is not None and t["write_ms"] >= 0 for t in df.timings)
    assert not [p for p in (tmp_path / "release").rglob(".deid-tmp-*")]  # no temporary file left behind


def test_auto_engine_runs_small_local_jobs_in_process_and_the_rest_on_ray(photos, tmp_path, monkeypatch):
    """run.engine: auto skips Ray's start-up for a small job on this machine, with the same
    rows; a cluster address, a GPU or more records than run.local_max_records mean Ray."""
    from deid.pipeline.engine import resolve

    monkeypatch.delenv("RAY_ADDRESS", raising=False)
    m = manifest_from_dict(base_manifest(photos, tmp_path))
    assert m.run.engine == "auto"
    assert resolve(m, None, 200) == "local" and resolve(m, None, 201) == "ray"
    assert resolve(m, "ray", 1) == "ray" and resolve(m, "local", 10**6) == "local"
    assert resolve(manifest_from_dict(base_manifest(photos, tmp_path, run={"ray_address": "auto"})), None, 1) == "ray"
    assert resolve(manifest_from_dict(base_manifest(photos, tmp_path, run={"gpus_per_actor": 1})), None, 1) == "ray"
    assert resolve(manifest_from_dict(base_manifest(photos, tmp_path, run={"local_max_records": 0})), None, 1) == "ray"
    monkeypatch.setenv("RAY_ADDRESS", "127.0.0.1:6379")
    assert resolve(m, None, 1) == "ray"
    monkeypatch.delenv("RAY_ADDRESS")
    res = run_job(m, progress=False)
    assert res.summary["engine"] == "local"
    df = pd.read_parquet(res.records_uri)
    assert len(df) == res.summary["inputs"] == 6 and (df.status == "released").all()

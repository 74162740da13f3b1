"""`deid audit export --public`: a releasable audit with nothing that links back to the inputs."""

from __future__ import annotations

import hashlib
import shutil
from pathlib import Path

import numpy as np
import pyarrow.parquet as pq
import pytest
import yaml
from PIL import Image
from typer.testing import CliRunner

from conftest import GROUP, base_manifest, lfw_images
from deid.audit import read_audit
from deid.audit.public import DROPPED, public_id
from deid.cli.app import app
from deid.config import load_manifest
from deid.io.write import naming_key
from deid.pipeline import run_job


@pytest.fixture(scope="module")
def job(tmp_path_factory):
    tmp = tmp_path_factory.mktemp("public")
    inp = tmp / "in"
    (inp / "Jane_Doe").mkdir(parents=True)
    for i, p in enumerate(lfw_images()[:3]):
        shutil.copy(p, inp / "Jane_Doe" / f"Jane_Doe_passport_{i}.jpg")
    shutil.copy(GROUP / "two_people.jpg", inp / "Smith_family.jpg")
    # no face in it: checks.no_face quarantines it
    Image.fromarray(np.tile(np.linspace(0, 255, 320, dtype=np.uint8), (240, 1))[..., None].repeat(3, 2)) \
        .save(inp / "Smith_garden.jpg")
    (inp / "John_Smith_scan.jpg").write_bytes(b"\xff\xd8\xff\xe0 not really a jpeg")
    # a strict check quarantines some faces: quarantined rows must not say where they went
    m = base_manifest(inp, tmp, output={"naming": "hash", "naming_key_file": str(tmp / "naming.key")},
                      anonymize={"method": "blur", "params": {"strength": 0.12}},
                      checks={"on_fail": "quarantine", "no_face": "quarantine"}, detect={"backend": "centerface"}, run={"engine": "local"})
    path = tmp / "job.yaml"
    path.write_text(yaml.safe_dump(m))
    manifest = load_manifest(path)
    run_job(manifest, engine="local", progress=False)
    private = read_audit(manifest.audit_uri).to_pylist()
    return tmp, path, manifest, private


def _export(path: Path, out: Path, *extra: str):
    return CliRunner().invoke(app, ["audit", "export", str(path), "--public", str(out), *extra])


def test_public_audit_has_one_row_per_record_and_nothing_that_names_an_input(job):
    tmp, path, manifest, private = job
    out = tmp / "release" / "audit-public.parquet"  # it may sit in the release: that is where it goes
    res = _export(path, out)
    assert res.exit_code == 0, res.output
    table = pq.read_table(out)
    assert table.num_rows == len(private) == 6
    assert not set(DROPPED) & set(table.column_names)
    assert "subject_spent_after" not in table.schema.field("faces").type.value_type.names
    blob = out.read_bytes() + str(table.to_pylist()).encode()
    for row in private:
        for secret_bit in (row["input_uri"], row["input_sha256"], row["record_id"], Path(row["input_uri"]).stem):
            assert secret_bit.encode() not in blob, secret_bit
    for word in (b"Jane_Doe", b"Smith", str(tmp).encode()):
        assert word not in blob
    by_status = {}
    for r in table.to_pylist():
        by_status.setdefault(r["status"], []).append(r)
    assert {"released", "quarantined", "failed"} <= set(by_status), set(by_status)
    assert by_status["failed"][0]["error_code"] == "truncated"  # the code, never the message


def test_released_rows_point_into_the_release_and_no_other_row_says_where_it_went(job):
    tmp, path, manifest, private = job
    out = tmp / "pub" / "a.parquet"
    assert _export(path, out).exit_code == 0
    release = Path(manifest.output.uri)
    for r in pq.read_table(out).to_pylist():
        if r["status"] == "released":
            f = release / r["output_path"]
            assert hashlib.sha256(f.read_bytes()).hexdigest() == r["output_sha256"]
            assert r["method"] == "blur" and 0.12 == __import__("json").loads(r["params_json"])["strength"]
            assert all(face["id_distance"] is not None for face in r["faces"] if face["check"] == "measured")
        else:
            assert r["output_path"] is None and r["output_sha256"] is None


def test_public_ids_are_keyed_by_the_naming_secret(job):
    tmp, path, manifest, private = job
    a, b = tmp / "k1.parquet", tmp / "k2.parquet"
    assert _export(path, a).exit_code == 0 and _export(path, b).exit_code == 0
    ids = pq.read_table(a).column("public_id").to_pylist()
    assert ids == pq.read_table(b).column("public_id").to_pylist()  # stable
    secret = naming_key(manifest.output.naming_key_env, manifest.output.naming_key_file)
    assert sorted(ids) == sorted(public_id(r["record_id"], secret) for r in private)
    assert sorted(ids) != sorted(public_id(r["record_id"], b"another secret") for r in private)
    assert not {hashlib.sha256(r["input_uri"].encode()).hexdigest()[:32] for r in private} & set(ids)


@pytest.mark.parametrize("where", ["input", "audit", "quarantine"])
def test_public_audit_is_refused_under_the_input_the_private_audit_or_the_quarantine(job, where):
    tmp, path, manifest, private = job
    base = {"input": manifest.input.uri, "audit": manifest.audit_uri, "quarantine": manifest.quarantine_uri}[where]
    out = Path(base) / "public.parquet"
    res = _export(path, out)
    assert res.exit_code == 2
    assert "overlaps" in res.output and str(out) in res.output
    assert not out.exists()


def test_an_unknown_run_is_a_clear_error(job):
    tmp, path, manifest, private = job
    res = _export(path, tmp / "none.parquet", "--run", "no-such-run")
    assert res.exit_code == 2 and "no audit rows for run no-such-run" in res.output
    assert not (tmp / "none.parquet").exists()

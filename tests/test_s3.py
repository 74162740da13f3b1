"""S3 end to end: input, release, quarantine and audit on s3:// through s3fs, against
moto's S3 server on 127.0.0.1 (tests/s3server.py). Real faces, real dlib, real Ray.

"Identical to a local run" means: the same records, statuses, error codes, face counts
and boxes, output names and output bytes (sha256) as the same job on local folders.
"""

from __future__ import annotations

import hashlib
import re
import shutil
import sys
from collections import Counter
from pathlib import Path

import numpy as np
import pandas as pd
import pytest
from PIL import Image
from typer.testing import CliRunner

from conftest import GROUP, base_manifest, lfw_images
from deid.audit import read_audit
from deid.config import manifest_from_dict
from deid.io.listing import ListingError
from deid.pipeline import run_job
from s3server import MotoS3

pytestmark = pytest.mark.timeout(240)


@pytest.fixture(scope="module")
def inputs(tmp_path_factory) -> Path:
    """Faces in a sub-folder, a group photo, an image without a face, a file that is not an image."""
    root = tmp_path_factory.mktemp("s3-inputs") / "photos"
    (root / "people").mkdir(parents=True)
    for p in lfw_images()[:2]:
        shutil.copy(p, root / "people" / p.name)
    shutil.copy(lfw_images()[2], root / "people" / "Zoë Ångström 01.jpg")  # a key that needs URL-encoding
    shutil.copy(GROUP / "two_people.jpg", root / "two_people.jpg")
    ramp = np.linspace(40, 220, 160 * 120, dtype=np.float32).reshape(120, 160)
    Image.fromarray(np.stack([ramp, ramp[::-1], np.full_like(ramp, 128)], -1).astype(np.uint8)).save(root / "wall.png")
    (root / "broken.jpg").write_bytes(b"this is not a jpeg, whatever the name says")
    return root


def _outcome(df: pd.DataFrame, m) -> dict:
    """What must not depend on where the files live, per record_id."""
    roots = {"release": m.output.uri.rstrip("/") + "/", "quarantine": m.quarantine_uri.rstrip("/") + "/"}
    out = {}
    for r in df.itertuples():
        where = None
        if isinstance(r.output_uri, str):
            where = next((kind, r.output_uri[len(root):]) for kind, root in roots.items() if r.output_uri.startswith(root))
        boxes = [tuple(f["box"]) for f in r.faces] if r.faces is not None else None
        facts = (r.status, r.error_code, r.n_faces, r.input_sha256, r.width, r.height, boxes, where, r.output_sha256)
        out[r.record_id] = tuple(None if (not isinstance(v, (list, tuple)) and pd.isna(v)) else v for v in facts)
    return out


@pytest.fixture(scope="module")
def local_run(inputs, tmp_path_factory):
    """The reference: the same job on local folders, in this process (no Ray)."""
    tmp = tmp_path_factory.mktemp("s3-local")
    m = manifest_from_dict(base_manifest(inputs, tmp))
    res = run_job(m, engine="local", progress=False)
    df = pd.read_parquet(res.records_uri)
    # the fixture set covers every path a record can take
    assert Counter(df.status) == {"released": 4, "quarantined": 1, "failed": 1}, df[["input_uri", "status", "error"]]
    return _outcome(df, m)


def _s3_manifest(src: str, dst: str, opts: dict[str, dict] | None) -> dict:
    """``opts``: storage_options per section (input, output, audit), or None for the environment's."""
    so = {k: {"storage_options": v} for k, v in (opts or {}).items()}
    return {
        "input": {"uri": f"s3://{src}/photos", **so.get("input", {})},
        "output": {"uri": f"s3://{dst}/release", "quarantine_uri": f"s3://{dst}/quarantine", **so.get("output", {})},
        "audit": {"uri": f"s3://{dst}/audit", **so.get("audit", {})},
        "run": {"batch_size": 2, "progress": False},
        "detect": {"backend": "dlib-hog"},  # as base_manifest: the local run it is compared with
    }


def _check_writes(s3: MotoS3, reqs, src: str, dst: str, df: pd.DataFrame) -> None:
    """Atomic on S3: one PUT per object, no multipart, no copy, no delete but the audit's
    write probe (removed before any image is written), nothing under the input bucket, nothing but the outputs under the release/quarantine prefixes."""
    # the audit's write probe (one PUT and one DELETE of a hidden key, before anything else)
    probe = [r for r in reqs if r.writes and r.key.startswith("audit/records/.deid-tmp-probe-")]
    assert [r.method for r in probe] == ["PUT", "DELETE"] and probe[0].key == probe[1].key, probe
    assert reqs.index(probe[1]) < min(i for i, r in enumerate(reqs) if r.writes and r.key.startswith("release/"))
    writes = [r for r in reqs if r.writes and r not in probe]
    assert writes and all(r.method == "PUT" and r.bucket == dst for r in writes), \
        [r for r in writes if r.method != "PUT" or r.bucket != dst]
    assert not any(("uploads" in r.query or "uploadId" in r.query or "partNumber" in r.query) for r in reqs)
    assert not any(r.copy_source for r in reqs)
    puts = Counter(r.key for r in writes)
    released = {u.split(f"s3://{dst}/", 1)[1]: h for u, h, s in zip(df.output_uri, df.output_sha256, df.status) if s == "released"}
    quarantined = {u.split(f"s3://{dst}/", 1)[1]: h for u, h, s in zip(df.output_uri, df.output_sha256, df.status) if s == "quarantined"}
    assert released and quarantined
    assert all(puts[k] == 1 for k in [*released, *quarantined]), puts
    assert set(s3.objects(dst, "release/")) == set(released)
    assert set(s3.objects(dst, "quarantine/")) == set(quarantined)
    run_id = df.run_id.iloc[0]
    audit = set(s3.objects(dst, "audit/"))
    parts = {k for k in audit if re.fullmatch(rf"audit/records/{run_id}-part-\d{{5}}\.parquet", k)}
    assert parts and audit - parts == {f"audit/summaries/{run_id}.json", "audit/summary.json"}
    assert all(puts[k] == 1 for k in parts)
    # what is at rest on S3 is what the audit says was written
    c = s3.client()
    for key, digest in {**released, **quarantined}.items():
        assert hashlib.sha256(c.get_object(Bucket=dst, Key=key)["Body"].read()).hexdigest() == digest


def test_ray_run_on_s3_with_storage_options_matches_a_local_run(s3, inputs, local_run, ray_local):
    src, dst = s3.new_bucket("raw"), s3.new_bucket("release")
    s3.upload_tree(inputs, src, "photos")
    s3.client().put_object(Bucket=src, Key="photos/people/", Body=b"")  # a console-made "folder" marker: not an input
    before = s3.objects(src)
    # each section its own credentials: the S3 server's log shows which one signed what
    opts = {sec: s3.storage_options(f"{sec}-key") for sec in ("input", "output", "audit")}
    job = _s3_manifest(src, dst, opts)
    job["run"]["actors"] = 1  # one worker process loading the models is enough to show the path
    m = manifest_from_dict(job)
    mark = s3.mark()
    res = run_job(m, engine="ray", progress=False)
    reqs = s3.since(mark)
    df = read_audit(m.audit_uri, run_id=res.run_id, storage_options=opts["audit"]).to_pandas()

    assert len(df) == res.summary["inputs"] == len(before) - 1 == 6
    assert _outcome(df, m) == local_run
    assert all(u.startswith(f"s3://{src}/photos/") for u in df.input_uri)
    broken = df[df.status == "failed"].iloc[0]
    assert broken.error_code == "not_an_image" and f"s3://{src}/photos/broken.jpg" in broken.error
    # every request, from the driver and from every Ray worker, used its section's credentials:
    # input.storage_options to list and read, output.storage_options for the release and the
    # quarantine, audit.storage_options for the audit
    assert {r.access_key for r in reqs} == {"input-key", "output-key", "audit-key"}
    assert {r.access_key for r in reqs if r.bucket == src} == {"input-key"}
    for r in reqs:
        if r.writes:
            assert r.access_key == {"release": "output-key", "quarantine": "output-key",
                                    "audit": "audit-key"}[r.key.split("/")[0]], r
    assert {r.method for r in reqs if r.bucket == src} <= {"GET", "HEAD"}
    assert s3.objects(src) == before
    _check_writes(s3, reqs, src, dst, df)


def test_credentials_and_endpoint_from_aws_environment(s3, inputs, local_run, monkeypatch):
    import s3fs

    src, dst = s3.new_bucket("raw"), s3.new_bucket("release")
    s3.upload_tree(inputs, src, "photos")
    before = s3.objects(src)
    for k, v in s3.env("env-key").items():
        monkeypatch.setenv(k, v)
    s3fs.S3FileSystem.clear_instance_cache()  # an instance made before the env changed would be reused
    try:
        m = manifest_from_dict(_s3_manifest(src, dst, None))
        assert m.input.storage_options == {} and m.output.storage_options == {}
        mark = s3.mark()
        res = run_job(m, engine="local", progress=False)
        reqs = s3.since(mark)
        df = read_audit(m.audit_uri, run_id=res.run_id).to_pandas()
    finally:
        s3fs.S3FileSystem.clear_instance_cache()
    assert _outcome(df, m) == local_run
    assert {r.access_key for r in reqs} == {"env-key"}
    assert s3.objects(src) == before
    _check_writes(s3, reqs, src, dst, df)


def test_missing_bucket_and_missing_protocol_package_are_clear_errors(s3, tmp_path, monkeypatch):
    from deid.cli.app import app

    m = manifest_from_dict(_s3_manifest("no-such-bucket-deid", "also-missing-deid", {"input": s3.storage_options()}))
    with pytest.raises(ListingError, match="s3://no-such-bucket-deid/photos: input.uri does not exist"):
        run_job(m, engine="local", progress=False)

    # gs:// and az:// are fsspec protocols: they validate without their packages installed ...
    gs = {"input": {"uri": "gs://photos-bucket/2024", "storage_options": {"project": "p", "token": "anon"}},
          "output": {"uri": str(tmp_path / "release")}}
    az = {"input": {"uri": str(tmp_path)}, "output": {"uri": "az://release/2024", "quarantine_uri": "abfs://q/2024",
                                                      "storage_options": {"account_name": "acct", "anon": True}}}
    assert manifest_from_dict(gs).input.uri == "gs://photos-bucket/2024"
    assert manifest_from_dict(az).quarantine_uri == "abfs://q/2024"
    # ... and a run without the package stops on the driver with the field, the URI and the package
    monkeypatch.setitem(sys.modules, "gcsfs", None)
    monkeypatch.setitem(sys.modules, "adlfs", None)
    with pytest.raises(ListingError, match=r"input.uri = gs://photos-bucket/2024: the gs:// protocol needs .*gcsfs"):
        run_job(manifest_from_dict(gs), engine="local", progress=False)
    with pytest.raises(ListingError, match=r"output.uri = az://release/2024: the az:// protocol needs .*adlfs"):
        run_job(manifest_from_dict(az), engine="local", progress=False)
    f = tmp_path / "job.yaml"
    f.write_text("input: {uri: gs://photos-bucket/2024}\noutput: {uri: out}\n")
    result = CliRunner().invoke(app, ["run", str(f), "--no-progress"])
    assert result.exit_code == 2 and "gcsfs" in result.output and "Traceback" not in result.output
    assert not (tmp_path / "out").exists()

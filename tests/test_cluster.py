"""deid on an existing multi-node Ray cluster (``run.ray_address``).

A head and a worker node are started with ``ray start`` (one CPU each, token auth on, as
``ray start`` does by default), each with its own temp dir and its own S3 credentials in
its environment, the way nodes get credentials from an instance role. ``deid run`` runs
as a separate driver process (a process joins one Ray cluster, and this test session
already has its own). The job is a DP method, so the budget service runs too.

What proves where the work ran: moto's request log records which access key signed each
request, so reads of inputs and writes of outputs signed by the head's key and by the
worker's key show that both nodes processed records; Ray's actor table shows the budget
service on the driver's node.
"""

from __future__ import annotations

import json
import os
import secrets
import shutil
import signal
import socket
import subprocess
import sys
import tempfile
from collections import Counter
from pathlib import Path

import pandas as pd
import pytest
import yaml

from conftest import GROUP, REPO, base_manifest, lfw_images
from deid.audit import read_audit
from deid.config import manifest_from_dict
from deid.pipeline import run_job
from deid.privacy.ledger import Ledger

pytestmark = pytest.mark.timeout(300)

RAY = str(Path(sys.executable).with_name("ray"))
SUBJECT_SECRET = "cluster-test-subject-secret-" + secrets.token_hex(8)
NAMING_SECRET = "cluster-test-naming-secret-" + secrets.token_hex(8)
SUBJECT_NAME = "person-" + secrets.token_hex(6)  # a labeled subject: its name must stay with the driver


def _free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


def _clean_env() -> dict:
    """This machine's environment without AWS, deid and Ray settings."""
    env = {k: v for k, v in os.environ.items() if not k.startswith(("AWS_", "DEID_", "RAY_"))}
    env["PYTHONPATH"] = os.pathsep.join([str(REPO), *filter(None, [os.environ.get("PYTHONPATH")])])
    env["RAY_USAGE_STATS_ENABLED"] = "0"
    return env


class RayCluster:
    """``ray start --head`` plus one ``ray start --address`` worker, stopped by process group."""

    def __init__(self, node_env: dict[str, dict]):
        self.token = secrets.token_hex(32)
        self.auth = {"RAY_AUTH_MODE": "token", "RAY_AUTH_TOKEN": self.token}
        self.address = f"127.0.0.1:{_free_port()}"
        self.dirs = {n: tempfile.mkdtemp(prefix=f"deid-{n}-", dir="/tmp") for n in ("head", "worker")}
        common = ["--block", "--num-cpus=1", "--disable-usage-stats", "--object-store-memory=100000000",
                  "--include-log-monitor=false"]
        args = {"head": ["--head", f"--port={self.address.split(':')[1]}", "--include-dashboard=false"],
                "worker": [f"--address={self.address}"]}
        self.procs: dict[str, subprocess.Popen] = {}
        for name in ("head", "worker"):  # the worker retries until the head's GCS answers
            self.procs[name] = subprocess.Popen(
                [RAY, "start", *args[name], f"--temp-dir={self.dirs[name]}", *common],
                env={**_clean_env(), **self.auth, **node_env[name]},
                start_new_session=True, stdout=subprocess.PIPE, stderr=subprocess.STDOUT, text=True)
        for name, p in self.procs.items():
            seen = []
            for line in p.stdout:
                seen.append(line)
                if "Ray runtime started" in line:
                    break
            else:
                self.stop()
                raise RuntimeError(f"ray start ({name}) failed:\n{''.join(seen[-30:])}")

    def stop(self) -> None:
        for p in self.procs.values():
            try:
                os.killpg(p.pid, signal.SIGKILL)  # the whole node: its raylet, GCS, workers
            except ProcessLookupError:
                pass
        for p in self.procs.values():
            p.wait(30)
            if p.stdout:
                p.stdout.close()
        for d in self.dirs.values():
            shutil.rmtree(d, ignore_errors=True)

    def files(self):
        for d in self.dirs.values():
            for p in Path(d).rglob("*"):
                if p.is_file() and not p.is_symlink():
                    yield p


@pytest.fixture(scope="module")
def cluster(s3):
    c = RayCluster({"head": s3.env("head-node"), "worker": s3.env("worker-node")})
    yield c
    c.stop()


def _inputs(root: Path) -> Path:
    (root / "people").mkdir(parents=True)
    for p in lfw_images()[:3]:
        shutil.copy(p, root / "people" / p.name)
    shutil.copy(GROUP / "two_people.jpg", root / "two_people.jpg")
    (root / "notes.jpg").write_bytes(b"not an image")
    return root


def _manifest(src: str, dst: str, prefix: str, ledger: Path, ray_address: str) -> dict:
    # no storage_options: every process uses the credentials of its own environment
    return {
        "input": {"uri": f"s3://{src}/photos", "subjects": f"s3://{src}/meta/subjects.csv"},
        "output": {"uri": f"s3://{dst}/{prefix}/release", "quarantine_uri": f"s3://{dst}/{prefix}/quarantine"},
        "audit": {"uri": f"s3://{dst}/{prefix}/audit"},
        "anonymize": {"method": "dp-image", "params": {"epsilon": 8.0}},
        "privacy": {"ledger": str(ledger), "max_epsilon": 100.0},
        # HOG: one face per LFW photo (CenterFace also finds the half faces at their edges), so
        # the labeled subject's spend below is one charge per photo
        "detect": {"backend": "dlib-hog"},
        "checks": {"on_fail": "keep"},
        "run": {"ray_address": ray_address, "actors": 2, "batch_size": 1, "progress": False},
    }


#: The driver process: ``deid run JOB --json`` (the CLI itself), then, still connected to the
#: cluster, Ray's actor table (where did the actors run?) and the other address forms.
_DRIVER = """
import json, os, sys
from deid.cli.app import app
try:
    app(["run", sys.argv[1], "--json", "--no-progress"])
    code = 0
except SystemExit as exc:
    code = exc.code or 0
import ray
from ray._private import state
from deid.config import manifest_from_dict
from deid.pipeline.engine import init_ray as _init_ray
out = {"actors": [{"cls": a["ActorClassName"], "node": a["Address"]["NodeID"], "owner": a["OwnerAddress"]["NodeID"]}
                  for a in state.actors().values()],
       "explicit": sorted(n["NodeID"] for n in ray.nodes() if n["Alive"])}
ray.shutdown()
os.environ["RAY_ADDRESS"] = sys.argv[2]  # what `ray job submit` sets for its entrypoint
for label, addr in (("auto", "auto"), ("empty", "")):
    r = _init_ray(manifest_from_dict({"input": {"uri": "/in"}, "output": {"uri": "/out"}, "run": {"ray_address": addr}}))
    out[label] = sorted(n["NodeID"] for n in r.nodes() if n["Alive"])
    r.shutdown()
print("@@inspect@@", json.dumps(out))
sys.exit(code)
"""


def test_job_on_a_two_node_cluster_matches_a_local_run(cluster, s3, tmp_path, monkeypatch):
    src, dst = s3.new_bucket("raw"), s3.new_bucket("out")
    photos = _inputs(tmp_path / "photos")
    s3.upload_tree(photos, src, "photos")
    labels = "path,subject\n" + "".join(f"people/{p.name},{SUBJECT_NAME}\n" for p in sorted((photos / "people").iterdir()))
    s3.client().put_object(Bucket=src, Key="meta/subjects.csv", Body=labels.encode())
    before = s3.objects(src)
    driver_env = {**_clean_env(), **cluster.auth, **s3.env("driver-key"),
                  "DEID_SUBJECT_KEY": SUBJECT_SECRET, "DEID_NAMING_KEY": NAMING_SECRET}
    job = tmp_path / "job.yaml"
    job.write_text(yaml.safe_dump(_manifest(src, dst, "cluster", tmp_path / "cluster-ledger.sqlite", cluster.address)))

    # Ray Data may start a pool before all its actors are up; wait for both, so that the
    # work is spread over both nodes however slow one node is to load the models
    driver_env["RAY_DATA_DEFAULT_WAIT_FOR_MIN_ACTORS_S"] = "180"
    mark = s3.mark()
    proc = subprocess.Popen([sys.executable, "-c", _DRIVER, str(job), cluster.address],
                            env=driver_env, cwd=tmp_path, stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True)

    # meanwhile, the same manifest run locally (in this process, no Ray), credentials from the environment
    for k, v in {**s3.env("local-key"), "DEID_SUBJECT_KEY": SUBJECT_SECRET, "DEID_NAMING_KEY": NAMING_SECRET}.items():
        monkeypatch.setenv(k, v)
    import s3fs

    s3fs.S3FileSystem.clear_instance_cache()
    try:
        local = manifest_from_dict(_manifest(src, dst, "local", tmp_path / "local-ledger.sqlite", ""))
        res = run_job(local, engine="local", progress=False)
        stdout, stderr = proc.communicate(timeout=240)
        assert proc.returncode == 0, stderr[-4000:]
        summary_text, _, inspect = stdout.partition("@@inspect@@")
        summary, info = json.loads(summary_text), json.loads(inspect)
        assert summary["engine"] == "ray" and summary["aborted"] is None
        m = manifest_from_dict(_manifest(src, dst, "cluster", tmp_path / "cluster-ledger.sqlite", cluster.address))
        df = read_audit(m.audit_uri, run_id=summary["run_id"]).to_pandas().sort_values("record_id")
        ldf = read_audit(local.audit_uri, run_id=res.run_id).to_pandas().sort_values("record_id")
    finally:
        if proc.poll() is None:
            proc.kill()
        s3fs.S3FileSystem.clear_instance_cache()
    reqs = [r for r in s3.since(mark) if r.access_key != "local-key"]

    assert summary["counts"] == res.summary["counts"]
    assert Counter(df.status) == {"released": 4, "failed": 1}
    assert df.record_id.tolist() == ldf.record_id.tolist()
    assert df.status.tolist() == ldf.status.tolist() and df.error_code.tolist() == ldf.error_code.tolist()
    assert df.n_faces.fillna(-1).tolist() == ldf.n_faces.fillna(-1).tolist()
    assert [r.rsplit("/", 2)[-2:] for r in df.output_uri.dropna()] == [r.rsplit("/", 2)[-2:] for r in ldf.output_uri.dropna()]
    assert summary["faces"] == res.summary["faces"] == int(df.n_faces.sum()) >= 5

    # both nodes read inputs and wrote outputs; the driver only listed, and wrote the audit
    by_key = {k: [r for r in reqs if r.access_key == k] for k in ("head-node", "worker-node", "driver-key")}
    assert {r.access_key for r in reqs} == set(by_key)
    for node in ("head-node", "worker-node"):
        assert any(r.method == "GET" and r.bucket == src and r.key for r in by_key[node]), node
        assert any(r.method == "PUT" and "/cluster/release/" in f"/{r.key}" for r in by_key[node]), node
    assert not any(r.method == "PUT" and r.key.startswith("cluster/release/") for r in by_key["driver-key"])
    assert {r.key.split("/")[1] for r in by_key["driver-key"] if r.method == "PUT"} == {"audit"}
    assert s3.objects(src) == before

    # the ledger (a file on the driver's node) holds one committed charge per face
    with Ledger.open(str(tmp_path / "cluster-ledger.sqlite")) as led:
        rows = led.summary()
    assert sum(r.n_charges for r in rows) == summary["faces"] and all(r.n_reserved_uncommitted == 0 for r in rows)
    # the three labeled photos were charged to one subject, in whatever order the nodes took them
    spent = [f["subject_spent_after"] for u, fs in zip(df.input_uri, df.faces) if "/people/" in u for f in fs]
    assert sorted(spent) == pytest.approx([8.0, 16.0, 24.0])

    # where the actors ran, and how the other address forms resolve
    assert len(info["explicit"]) == 2 and info["auto"] == info["empty"] == info["explicit"]
    workers = [a for a in info["actors"] if "ProcessRecords" in a["cls"]]
    assert {a["node"] for a in workers} == set(info["explicit"])
    budget = [a for a in info["actors"] if a["cls"] == "BudgetService"]
    assert len(budget) == 1 and budget[0]["node"] == budget[0]["owner"]  # pinned to the driver's node

    # secrets and subject names stay with the driver: not in the audit, not in any Ray log or spill file
    audit_blobs = b"".join(s3.client().get_object(Bucket=dst, Key=k)["Body"].read() for k in s3.objects(dst, "cluster/audit/"))
    for secret in (SUBJECT_SECRET, NAMING_SECRET, SUBJECT_NAME):
        assert secret.encode() not in audit_blobs
        hits = [str(p) for p in cluster.files() if secret.encode() in p.read_bytes()]
        assert hits == [], hits


def test_budget_service_problems_stop_the_run_before_any_work(photos, tmp_path, monkeypatch, ray_local):
    """Under Ray the budget service is an actor: its failures must still read like deid's own errors."""
    from deid.pipeline import RunError

    def dp(ledger):
        return manifest_from_dict(base_manifest(photos, tmp_path, anonymize={"method": "dp-image"},
                                                privacy={"ledger": str(ledger), "max_epsilon": 20.0}))

    monkeypatch.delenv("DEID_SUBJECT_KEY", raising=False)
    with pytest.raises(RunError, match=r"no subject-key secret: \$DEID_SUBJECT_KEY is not set"):
        run_job(dp(tmp_path / "ledger.sqlite"), engine="ray", progress=False)
    monkeypatch.setenv("DEID_SUBJECT_KEY", SUBJECT_SECRET)
    (tmp_path / "ledger-dir").mkdir()  # a folder where the ledger file should be
    with pytest.raises(RunError, match=r"budget service could not start on the driver's node: \S*LedgerError: "
                                       r".*ledger-dir: cannot open as a deid ledger \(unable to open database file\)"):
        run_job(dp(tmp_path / "ledger-dir"), engine="ray", progress=False)
    assert not (tmp_path / "release").exists() and not (tmp_path / "quarantine").exists()


def test_ray_client_addresses_are_refused_before_anything_starts(photos, tmp_path, monkeypatch):
    from deid.pipeline import RunError

    m = manifest_from_dict(base_manifest(photos, tmp_path, run={"ray_address": "ray://head.example:10001"}))
    with pytest.raises(RunError, match=r"Ray Client \(ray://\) cannot run Ray Data pipelines.*ray job submit"):
        run_job(m, engine="ray", progress=False)
    monkeypatch.setenv("RAY_ADDRESS", "ray://head.example:10001")  # the same address from the environment
    with pytest.raises(RunError, match=r"the Ray address is ray://head.example:10001"):
        run_job(manifest_from_dict(base_manifest(photos, tmp_path)), engine="ray", progress=False)
    assert not (tmp_path / "audit").exists() and not (tmp_path / "release").exists()

"""Shared fixtures: the bundled sample photos (real faces), manifests, and a local Ray."""

from __future__ import annotations

import atexit
import os
import shutil
import tempfile
from pathlib import Path

import pytest

REPO = Path(__file__).resolve().parents[1]
SAMPLES = REPO / "manifests" / "samples"
LFW = SAMPLES / "lfw"
GROUP = SAMPLES / "group"
VOC = GROUP / "voc"

# Tests must never touch the user's real naming key.
os.environ.setdefault("DEID_NAMING_KEY", "test-naming-key-not-secret")
os.environ.setdefault("RAY_USAGE_STATS_ENABLED", "0")
# ... nor the user's cache (generator statistics): one kept beside the tests, across sessions
os.environ.setdefault("DEID_CACHE_DIR", str(REPO / ".pytest_cache" / "deid-cache"))
# ... nor its local run state (the audit journal, deid.audit.journal): one folder per test session
os.environ["XDG_STATE_HOME"] = tempfile.mkdtemp(prefix="deid-test-state-")
atexit.register(shutil.rmtree, os.environ["XDG_STATE_HOME"], True)


# ------------------------------------------------------------------ side by side (pytest-xdist)
# `make test` runs the suite in one pytest-xdist worker process per core, a test file per worker
# at a time (--dist loadfile). What each worker has of its own: its XDG_STATE_HOME (above), its
# tmp_path, its moto server (a free port: tests/s3server.py), its embedded Ray (ray_local: a new
# local instance with a free GCS port and its own session folder). What they share, the cache in
# DEID_CACHE_DIR, is written through a temp name and a rename, so a worker reads a whole file or
# none and two workers that build the same file at once both leave a whole one.
def _share_the_cpus() -> None:
    """In worker i of n: CPUs i*k..(i+1)*k-1 of the k*n this process may use, and thread pools
    sized to them (torch/OpenMP, BLAS, OpenCV; onnxruntime and LiteRT through deid's
    session_options, which reads OMP_NUM_THREADS), so n workers keep to the core count rather
    than n x it. Children (Ray's raylet and workers, `deid run` subprocesses) inherit both.
    Nothing changes outside xdist."""
    worker = os.environ.get("PYTEST_XDIST_WORKER", "")  # gw0, gw1, ...
    if not worker.startswith("gw"):
        return
    n = max(1, int(os.environ.get("PYTEST_XDIST_WORKER_COUNT", "1")))
    cpus = sorted(os.sched_getaffinity(0))
    i = int(worker[2:])
    if 1 < n <= len(cpus):
        cpus = cpus[i * len(cpus) // n:(i + 1) * len(cpus) // n]
        os.sched_setaffinity(0, cpus)
        n = 1
    threads = str(max(1, len(cpus) // n))
    for var in ("OMP_NUM_THREADS", "MKL_NUM_THREADS", "OPENBLAS_NUM_THREADS", "OPENCV_FOR_THREADS_NUM"):
        os.environ.setdefault(var, threads)


_share_the_cpus()

#: Test files that take a minute or more (serial, on 2 CPUs), longest first. Side by side they
#: go first: `make test` passes --no-loadscope-reorder, so xdist hands out the files in the
#: order collected, and the run does not end on one worker still in a long file.
SLOW_FILES = ("test_attribute_method.py", "test_resume.py", "test_pipeline.py", "test_evaluate.py",
              "test_synthetic_swap.py", "test_dp_pipeline.py", "test_cluster.py", "test_plugins_e2e.py",
              "test_audit_dp.py", "test_attributes.py", "test_encoder.py", "test_generator_methods.py", "test_uap.py")


def pytest_collection_modifyitems(config, items):
    if os.environ.get("PYTEST_XDIST_WORKER"):
        rank = {name: i for i, name in enumerate(SLOW_FILES)}
        items.sort(key=lambda item: rank.get(item.path.name, len(rank)))  # stable: the rest keep their order


def lfw_images() -> list[Path]:
    return sorted(LFW.glob("*/*.jpg"))


@pytest.fixture
def photos(tmp_path: Path) -> Path:
    """A small input folder: 4 LFW faces in a sub-folder and 2 group photos."""
    src = tmp_path / "in"
    (src / "people").mkdir(parents=True)
    for p in lfw_images()[:4]:
        shutil.copy(p, src / "people" / p.name)
    for name in ("kit_with_rose.jpg", "two_people.jpg"):
        shutil.copy(GROUP / name, src / name)
    return src


def base_manifest(inp: Path, tmp_path: Path, default_gate: bool = False, **sections) -> dict:
    """A manifest for tests of everything but the default detector: it names dlib HOG, which
    finds exactly the one frontal face of an LFW photo (CenterFace, the default, also finds the
    partial faces at their edges), so counts and statuses stay those the tests were written
    for, and, behind it, the upright CenterFace as the residual-face gate (:data:`UPRIGHT_GATE`;
    ``default_gate=True``: the gate a user gets). Tests of the default name ``detect`` themselves
    (test_residual_gate, test_config)."""
    m = {
        "detect": {"backend": "dlib-hog"},
        "input": {"uri": str(inp)},
        "output": {"uri": str(tmp_path / "release"), "quarantine_uri": str(tmp_path / "quarantine")},
        "audit": {"uri": str(tmp_path / "audit")},
        "run": {"batch_size": 2, "progress": False},
    }
    for k, v in sections.items():
        m.setdefault(k, {}).update(v)
    if not default_gate and m["detect"].get("backend") == "dlib-hog" and "residual_detector" not in m.get("checks", {}):
        m.setdefault("checks", {})["residual_detector"] = dict(UPRIGHT_GATE)
    return m


#: the residual-face gate of :func:`base_manifest`: CenterFace upright (one pass where the
#: default gate behind HOG runs five, with the turned views). The gate with its default views is
#: tested where it is the subject: test_residual_gate, test_centerface_backend, test_config.
UPRIGHT_GATE = {"backend": "centerface", "rotations": [], "edge_pad": 0, "small_verify": 0}


@pytest.fixture(scope="session")
def ray_local():
    """One embedded Ray for the whole session (start-up costs ~6 s)."""
    import ray

    if not ray.is_initialized():
        # address "local": always a new instance of this process's own, never one that
        # /tmp/ray/ray_current_cluster names (the last `ray start` on this machine)
        ray.init(address="local", num_cpus=2, include_dashboard=False, log_to_driver=False, logging_level="ERROR")
    yield ray
    ray.shutdown()


@pytest.fixture(scope="module")
def s3():
    """moto's S3 served on 127.0.0.1 for one test module (tests/s3server.py)."""
    from s3server import MotoS3

    server = MotoS3()
    yield server
    server.stop()

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


def base_manifest(inp: Path, tmp_path: Path, **sections) -> dict:
    """A manifest for tests of everything but the default detector: it names dlib HOG, which
    finds exactly the one frontal face of an LFW photo (CenterFace, the default, also finds the
    partial faces at their edges), so counts and statuses stay those the tests were written
    for. Tests of the default name ``detect`` themselves (test_residual_gate, test_config)."""
    m = {
        "detect": {"backend": "dlib-hog"},
        "input": {"uri": str(inp)},
        "output": {"uri": str(tmp_path / "release"), "quarantine_uri": str(tmp_path / "quarantine")},
        "audit": {"uri": str(tmp_path / "audit")},
        "run": {"batch_size": 2, "progress": False},
    }
    for k, v in sections.items():
        m.setdefault(k, {}).update(v)
    return m


@pytest.fixture(scope="session")
def ray_local():
    """One embedded Ray for the whole session (start-up costs ~6 s)."""
    import ray

    if not ray.is_initialized():
        ray.init(num_cpus=2, include_dashboard=False, log_to_driver=False, logging_level="ERROR")
    yield ray
    ray.shutdown()


@pytest.fixture(scope="module")
def s3():
    """moto's S3 served on 127.0.0.1 for one test module (tests/s3server.py)."""
    from s3server import MotoS3

    server = MotoS3()
    yield server
    server.stop()

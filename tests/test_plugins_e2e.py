"""A third-party plug-in, end to end: installed as a distribution, found through its
``deid.plugins`` entry point, run by the real ``deid run`` on Ray, with nothing in deid edited.

The distribution is made on the fly: ``deid_toy_plugins.py`` (tests/plugins/) next to a
``deid_toy_plugins-0.0.0.dist-info/`` folder whose ``entry_points.txt`` names it, in a folder
that only the subprocesses get on their ``PYTHONPATH`` (Ray's local workers inherit it). The
toy detector finds one centred box; the toy method inverts the colours inside it.
"""

from __future__ import annotations

import importlib
import json
import os
import shutil
import subprocess
import sys
from pathlib import Path

import numpy as np
import pandas as pd
import pytest
import yaml

from conftest import GROUP, REPO, base_manifest, lfw_images
from deid.io.decode import decode_image

TOY_DIR = Path(__file__).resolve().parent / "plugins"
TOY = "deid_toy_plugins"
MAX_PIXELS = 10**8


@pytest.fixture(scope="module")
def toy():
    """The toy module, for its helpers. Importing it registers its plug-ins in this process
    too: they are removed again afterwards, so no other test sees them."""
    sys.path.insert(0, str(TOY_DIR))
    try:
        mod = importlib.import_module(TOY)
    finally:
        sys.path.remove(str(TOY_DIR))
    yield mod
    from deid.plugins import registry

    registry("detector").unregister(mod.DETECTOR)
    registry("method").unregister(mod.METHOD)


@pytest.fixture(scope="module")
def site(tmp_path_factory) -> Path:
    """A folder holding the toy as an installed distribution with a ``deid.plugins`` entry point."""
    d = tmp_path_factory.mktemp("site")
    shutil.copy(TOY_DIR / f"{TOY}.py", d / f"{TOY}.py")
    info = d / f"{TOY}-0.0.0.dist-info"
    info.mkdir()
    (info / "METADATA").write_text(f"Metadata-Version: 2.1\nName: {TOY}\nVersion: 0.0.0\n")
    (info / "entry_points.txt").write_text(f"[deid.plugins]\ntoy = {TOY}\n")
    return d


def _deid(*args: str, site: Path | None, cwd: Path) -> subprocess.CompletedProcess:
    env = {k: v for k, v in os.environ.items() if k != "PYTHONPATH"}
    if site is not None:
        env["PYTHONPATH"] = str(site)
    return subprocess.run([sys.executable, "-m", "deid.cli.app", *args], capture_output=True, text=True,
                          cwd=cwd, env=env, timeout=400)


def _manifest(tmp_path: Path, inp: Path, toy, **sections) -> Path:
    m = base_manifest(inp, tmp_path, detect={"backend": toy.DETECTOR}, anonymize={"method": toy.METHOD},
                      output={"format": "png"}, run={"cpus": 2, "engine": "ray"},  # Ray workers must find the plug-ins too
                      # the gate would (rightly) find the real faces the toy's centre box misses and
                      # invert them too; this test pins the toy's own pixels (tests/test_residual_gate.py
                      # covers the gate)
                      checks={"on_fail": "keep", "residual": "off"})
    for k, v in sections.items():
        m.setdefault(k, {}).update(v)
    path = tmp_path / "job.yaml"
    path.write_text(yaml.safe_dump(m, sort_keys=False))
    return path


@pytest.fixture
def inputs(tmp_path) -> Path:
    """Three LFW faces and a group photo that is not square."""
    d = tmp_path / "in"
    d.mkdir()
    for p in lfw_images()[::4][:3]:
        shutil.copy(p, d / p.name)
    shutil.copy(GROUP / "kit_with_rose.jpg", d / "kit_with_rose.jpg")
    return d


def test_toy_plugins_run_end_to_end_through_deid_run(tmp_path, inputs, site, toy):
    job = _manifest(tmp_path, inputs, toy)
    res = _deid("validate", str(job), site=site, cwd=tmp_path)
    assert res.returncode == 0, res.stderr
    assert f"method={toy.METHOD}, detector={toy.DETECTOR}" in res.stdout

    res = _deid("run", str(job), "--json", site=site, cwd=tmp_path)  # Ray, the default engine
    assert res.returncode == 0, res.stdout[-3000:] + res.stderr[-3000:]
    summary = json.loads(res.stdout[res.stdout.index("{"):])
    files = sorted(inputs.iterdir())
    assert summary["inputs"] == len(files) and summary["counts"]["released"] == len(files), summary["counts"]
    assert summary["engine"] == "ray" and summary["method"] == toy.METHOD  # Ray's workers found the toy too

    df = pd.read_parquet(summary["audit_records_uri"])
    assert sorted(df.input_uri) == sorted(map(str, files))  # exactly one row per input
    assert (df.status == "released").all(), df[["input_uri", "status", "error"]]
    assert (df.method == toy.METHOD).all() and (df.dp_scope == "none").all()
    defaults = toy.InvertParams().model_dump(mode="json")
    assert all(json.loads(p) == defaults for p in df.params_json)
    for fps in df.model_fingerprints:
        assert {"name": toy.MODEL_FILE.name, "sha256": toy.MODEL_FILE.path} in [dict(fp) for fp in fps]
        assert {"dlib-shape5", "dlib-resnet128"} <= {fp["name"] for fp in fps}  # the checks ran on the toy's faces

    for row in df.itertuples():
        src = decode_image(Path(row.input_uri).read_bytes(), max_pixels=MAX_PIXELS).rgb
        out = decode_image(Path(row.output_uri).read_bytes(), max_pixels=MAX_PIXELS).rgb
        assert row.output_uri.endswith(".png") and out.shape == src.shape
        h, w = src.shape[:2]
        box = toy.centre_box(h, w, toy.CentreParams().fraction)
        assert row.n_faces == 1 and [tuple(f["box"]) for f in row.faces] == [box]
        assert row.faces[0]["id_distance"] is not None
        x0, y0, x1, y1 = box
        assert np.array_equal(out[y0:y1, x0:x1], 255 - src[y0:y1, x0:x1])  # amount 1: the inverse
        outside = np.ones((h, w), dtype=bool)
        outside[y0:y1, x0:x1] = False
        assert np.array_equal(out[outside], src[outside])


def test_toy_params_are_validated_with_their_paths(tmp_path, inputs, site, toy):
    job = _manifest(tmp_path, inputs, toy, anonymize={"params": {"amount": 5}}, detect={"fraction": 0})
    res = _deid("validate", str(job), site=site, cwd=tmp_path)
    assert res.returncode == 2
    assert "anonymize.params.amount" in res.stderr and "detect.fraction" in res.stderr, res.stderr
    # without the distribution the toy is unknown: the entry point is what registers it
    res = _deid("validate", str(_manifest(tmp_path, inputs, toy)), site=None, cwd=tmp_path)
    assert res.returncode == 2 and toy.METHOD in res.stderr and "dlib-hog" in res.stderr, res.stderr


def test_deid_plugins_lists_the_toy(tmp_path, site, toy):
    res = _deid("plugins", "--json", site=site, cwd=tmp_path)
    if res.returncode != 0 and "No such command" in res.stderr:
        pytest.skip("deid has no plugins command")
    assert res.returncode == 0, res.stderr
    listed = {(p["kind"], p["name"]): p for p in json.loads(res.stdout)}
    for kind, name in (("detector", toy.DETECTOR), ("method", toy.METHOD)):
        p = listed[(kind, name)]
        assert p["module"] == TOY and p["licence"]["code"] == toy.LICENCE.code
    assert listed[("detector", toy.DETECTOR)]["needs"]["landmarks"] == "dlib5"
    assert [f["name"] for f in listed[("method", toy.METHOD)]["params"]] == ["amount"]
    assert ("method", "blur") in listed  # the built-ins are still there


def test_conformance_suite_covers_the_toy_unedited(site, toy):
    """tests/test_plugins_conformance.py parametrizes from the registries: with the toy
    installed its tests run on the toy too, and pass."""
    env = {**os.environ, "PYTHONPATH": str(site)}
    res = subprocess.run([sys.executable, "-m", "pytest", str(REPO / "tests" / "test_plugins_conformance.py"),
                          "-q", "-p", "no:cacheprovider", "-k", "toy", "-W", "ignore", "-rA"],
                         capture_output=True, text=True, cwd=REPO, env=env, timeout=400)
    assert res.returncode == 0, res.stdout[-4000:]
    ran = [line for line in res.stdout.splitlines() if line.startswith("PASSED")]
    for name in (toy.DETECTOR, toy.METHOD):
        assert any(name in line for line in ran), (name, res.stdout[-4000:])
    assert any("test_detect_batch_equals_detect[toy-centre]" in line for line in ran)
    assert any("test_method_changes_only_its_faces[toy-invert]" in line for line in ran)

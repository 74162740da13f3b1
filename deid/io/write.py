"""Encode without metadata, name outputs, write atomically.

Contract:
* :func:`encode_clean` builds a fresh image from pixels only, so no EXIF (GPS, maker
  notes), XMP, IPTC, ICC profile, comment or text chunk of the input can reach the
  output; the encoder is told to write none either;
* :func:`output_name` never contains the input file name unless ``output.naming`` is
  ``mirror``: the default is an HMAC-SHA256 of the relative path under a secret key,
  so names are stable across runs (resume) but cannot be reversed by guessing names;
* :func:`atomic_write` never leaves a partial object at the final path: local files are
  written to a hidden temporary name in the same folder, fsynced and renamed; object
  stores (s3, gs, az, memory) commit an object only when its single upload completes.
"""

from __future__ import annotations

import hashlib
import hmac
import io
import os
import posixpath
import secrets
import uuid
from pathlib import Path

import fsspec
import numpy as np
from PIL import Image

FORMATS = {"jpeg": ("JPEG", ".jpg"), "png": ("PNG", ".png"), "webp": ("WEBP", ".webp")}
_SAME = {"JPEG": "jpeg", "MPO": "jpeg", "PNG": "png", "WEBP": "webp"}


def resolve_format(configured: str, source_format: str) -> str:
    if configured != "same":
        return configured
    return _SAME.get(source_format.upper(), "png")


def encode_clean(rgb: np.ndarray, fmt: str, quality: int) -> bytes:
    """Encode pixels alone: the new image carries no metadata from anywhere."""
    pil_fmt, _ = FORMATS[fmt]
    im = Image.fromarray(np.ascontiguousarray(rgb, dtype=np.uint8), "RGB")
    buf = io.BytesIO()
    if pil_fmt == "JPEG":
        im.save(buf, "JPEG", quality=quality, optimize=False, exif=b"", icc_profile=None)
    elif pil_fmt == "WEBP":
        im.save(buf, "WEBP", quality=quality, exif=b"", icc_profile=None, xmp=b"")
    else:
        im.save(buf, "PNG", optimize=False, compress_level=6)
    return buf.getvalue()


# --------------------------------------------------------------------------- naming
def naming_key(env_var: str, key_file: str | None) -> bytes:
    """The secret for hashed names: env var, else key file, else a per-user key file
    created on first use (0600). Rotating it renames every output."""
    val = os.environ.get(env_var)
    if val:
        return val.encode()
    config_home = os.environ.get("XDG_CONFIG_HOME") or str(Path.home() / ".config")  # empty means unset
    path = Path(key_file) if key_file else Path(config_home) / "deid" / "naming.key"
    if not path.exists():
        path.parent.mkdir(parents=True, exist_ok=True)
        try:
            fd = os.open(path, os.O_WRONLY | os.O_CREAT | os.O_EXCL, 0o600)
        except FileExistsError:
            pass  # another run created it a moment ago: use theirs
        else:
            with os.fdopen(fd, "wb") as f:
                f.write(secrets.token_hex(32).encode() + b"\n")
    data = path.read_bytes().strip()
    if not data:
        raise ValueError(f"{path}: naming key file is empty")
    return data


def key_id(key: bytes) -> str:
    """A public fingerprint of the naming key (to tell two keys apart in the audit)."""
    return hmac.new(key, b"deid-naming-key-id", hashlib.sha256).hexdigest()[:12]


def output_stem(rel_path: str, naming: str, key: bytes) -> str:
    """Output path relative to the release (or quarantine) root, without extension."""
    if naming == "mirror":
        return posixpath.splitext(rel_path)[0]
    digest = hmac.new(key, rel_path.encode("utf-8"), hashlib.sha256).hexdigest()[:32]
    return digest[:2] + "/" + digest


# --------------------------------------------------------------------------- writing
def is_local(fs: fsspec.AbstractFileSystem) -> bool:
    protos = fs.protocol if isinstance(fs.protocol, (tuple, list)) else (fs.protocol,)
    return "file" in protos or "local" in protos


def display_uri(fs: fsspec.AbstractFileSystem, path: str) -> str:
    """Plain path for local files, ``proto://path`` for everything else."""
    return path if is_local(fs) else fs.unstrip_protocol(path)


TMP_PREFIX = ".deid-tmp-"


def atomic_write(fs: fsspec.AbstractFileSystem, path: str, data: bytes) -> None:
    if is_local(fs):
        folder = os.path.dirname(path)
        os.makedirs(folder, exist_ok=True)
        tmp = os.path.join(folder, f"{TMP_PREFIX}{uuid.uuid4().hex}")
        try:
            with open(tmp, "wb") as f:
                f.write(data)
                f.flush()
                os.fsync(f.fileno())
            os.replace(tmp, path)
        except BaseException:
            try:
                os.unlink(tmp)
            except FileNotFoundError:
                pass
            raise
        return
    # Object stores: a single PUT is all-or-nothing; the object is invisible until then.
    fs.pipe_file(path, data)


def remove_quietly(fs: fsspec.AbstractFileSystem, path: str) -> None:
    try:
        fs.rm_file(path)
    except (FileNotFoundError, OSError):
        pass

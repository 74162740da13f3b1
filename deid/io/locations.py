"""Where a URI really points, and whether two locations overlap.

Contract: :func:`overlap` is true when one location is the other or lies under it, compared
as a filesystem or an object store sees them, not as strings:

* local paths (plain, ``file://``, ``local://``): ``~`` expanded, made absolute, ``..`` and
  symbolic links resolved (``os.path.realpath``, for the part of the path that exists), and
  compared without case where the filesystem folds case;
* object stores: protocol (aliases folded: ``s3a`` is ``s3``, ``gcs`` is ``gs``, ``abfs(s)``
  and ``az`` are one), bucket, then the key prefix with ``.``/``..`` and repeated or trailing
  slashes normalised; a prefix covers the keys under it at ``/`` boundaries only
  (``s3://b/out`` does not cover ``s3://b/outside``).

Only local path resolution touches the filesystem (metadata, no writes); nothing is listed.
"""

from __future__ import annotations

import os
import posixpath
from dataclasses import dataclass

_ALIASES = {"s3a": "s3", "gcs": "gs", "abfs": "az", "abfss": "az", "adl": "az", "local": "file"}


@dataclass(frozen=True)
class Location:
    scheme: str                 # file, s3, gs, az, ...
    bucket: str                 # "" for local paths
    parts: tuple[str, ...]      # path components below the bucket (local: from the root)

    def __str__(self) -> str:
        path = "/".join(self.parts)
        return f"/{path}" if self.scheme == "file" else f"{self.scheme}://{self.bucket}/{path}".rstrip("/")

    def covers(self, other: "Location") -> bool:
        return (self.scheme, self.bucket) == (other.scheme, other.bucket) and \
            other.parts[:len(self.parts)] == self.parts


def _folds_case(path: str) -> bool:
    """Does the filesystem holding ``path`` (its nearest existing folder) ignore case?"""
    probe = path
    while probe and not os.path.exists(probe):
        parent = os.path.dirname(probe)
        if parent == probe:
            return False
        probe = parent
    other = probe.swapcase()
    if other == probe or not os.path.exists(other):
        return False
    try:
        return os.path.samefile(probe, other)
    except OSError:
        return False


def location(uri: str) -> Location:
    uri = uri.strip()
    proto = uri.split("://", 1)[0].lower() if "://" in uri else "file"
    scheme = _ALIASES.get(proto, proto)
    if scheme == "file":
        path = uri.split("://", 1)[1] if "://" in uri else uri
        real = os.path.realpath(os.path.abspath(os.path.expanduser(path)))
        if _folds_case(real):
            real = real.casefold()
        return Location("file", "", tuple(p for p in real.split(os.sep) if p))
    rest = posixpath.normpath("/" + uri.split("://", 1)[1]).strip("/")
    bucket, _, key = rest.partition("/")
    return Location(scheme, bucket, tuple(p for p in key.split("/") if p))


def overlap(a: str, b: str) -> bool:
    """Is one of the two locations the other, or under it?"""
    la, lb = location(a), location(b)
    return la.covers(lb) or lb.covers(la)

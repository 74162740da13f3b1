"""Cached ``.npz`` files: named arrays and a JSON card, written whole and read without pickles.

Contract:

* :func:`save_npz` writes ``arrays`` (numpy's ``.npz``), and beside them, when given, the
  format ``version`` as a 0-d integer array under ``format`` and the JSON-able ``meta`` under
  ``meta_key`` as UTF-8 JSON bytes (a ``uint8`` array; with ``meta_text``, a 0-d string array);
  the file appears whole or not at all (:func:`deid.io.write.atomic_write`: a hidden temporary
  name in the same folder, fsynced, then renamed), so concurrent writers each leave a whole
  file and readers never see half a one.
* :func:`load_npz` reads it back with ``allow_pickle=False`` (an object array is refused, never
  unpickled): ``(arrays, meta)``, the arrays without ``format`` and ``meta_key``; ``meta`` (a
  dict, either layout) is ``{}`` when the file has none. A file that cannot be read, has another
  format than ``version``, lacks a key the caller requires or whose card is not a JSON object
  raises :class:`NpzError` (a :class:`ValueError`) naming the file and what was expected, and
  saying that removing it has it rebuilt.
"""

from __future__ import annotations

import io
import json
import os
import zipfile
from typing import Any, Iterable, Mapping

import numpy as np
from fsspec.implementations.local import LocalFileSystem

from deid.io.write import atomic_write

FORMAT_KEY = "format"


class NpzError(ValueError):
    """A cached ``.npz`` that is unreadable, incomplete or of another format (the message says which)."""


def save_npz(path: str | os.PathLike, arrays: Mapping[str, Any], meta: Mapping[str, Any] | None = None, *,
             version: int | None = None, meta_key: str = "meta", meta_text: bool = False) -> None:
    """Write ``arrays`` (+ ``format`` = ``version``, + ``meta`` as JSON under ``meta_key``) atomically;
    ``meta_text``: the JSON as a 0-d string array instead of UTF-8 bytes (a layout older caches have)."""
    out: dict[str, np.ndarray] = {}
    if version is not None:
        out[FORMAT_KEY] = np.array(version)
    out.update({k: np.asarray(v) for k, v in arrays.items()})
    if meta is not None:
        text = json.dumps(meta)
        out[meta_key] = np.array(text) if meta_text else np.frombuffer(text.encode(), dtype=np.uint8)
    buf = io.BytesIO()
    np.savez(buf, **out)
    atomic_write(LocalFileSystem(), os.fspath(path), buf.getvalue())


def _meta(value: np.ndarray) -> dict:
    if value.dtype == np.uint8:
        meta = json.loads(value.tobytes().decode())
    elif value.dtype.kind == "U" and value.ndim == 0:
        meta = json.loads(str(value))
    else:
        raise ValueError(f"an array of dtype {value.dtype}, shape {value.shape}")
    if not isinstance(meta, dict):
        raise ValueError(f"a JSON {type(meta).__name__}, not an object")
    return meta


def load_npz(path: str | os.PathLike, kind: str, version: int | None = None, *, meta_key: str = "meta",
             required: Iterable[str] = ()) -> tuple[dict[str, np.ndarray], dict]:
    """``(arrays, meta)`` of a file :func:`save_npz` wrote (module contract). ``kind`` names the
    file's content in errors ("stranger bank"); ``required``: keys that must be in the file (arrays
    or ``meta_key``)."""
    what = f"{kind} (.npz{f', format {version}' if version is not None else ''})"
    again = "remove it to have it rebuilt"
    try:
        with np.load(path, allow_pickle=False) as z:
            arrays = {k: z[k] for k in z.files}
    except (OSError, ValueError, EOFError, zipfile.BadZipFile) as exc:
        raise NpzError(f"{os.fspath(path)}: not a readable {what}: {exc}; {again}") from None
    if version is not None:
        if FORMAT_KEY not in arrays:
            raise NpzError(f"{os.fspath(path)}: no format in it, expected {what}; {again}")
        found = arrays.pop(FORMAT_KEY)
        if found.shape != () or found.dtype.kind not in "iu" or int(found) != version:
            raise NpzError(f"{os.fspath(path)}: {kind} format {found.tolist()!r}, expected {version}; {again}")
    missing = [k for k in required if k not in arrays]
    if missing:
        raise NpzError(f"{os.fspath(path)}: {kind} without {', '.join(missing)}; {again}")
    meta: dict = {}
    if meta_key in arrays:
        raw = arrays.pop(meta_key)
        try:
            meta = _meta(raw)
        except (ValueError, UnicodeDecodeError) as exc:
            raise NpzError(f"{os.fspath(path)}: the card ({meta_key}) of the {kind} is not a JSON object ({exc}); "
                           f"{again}") from None
    return arrays, meta


__all__ = ["NpzError", "load_npz", "save_npz"]

"""Discover inputs: an fsspec listing turned into a record table.

Contract:
* one row per input file: ``record_id, uri, rel_path, size, subject``;
* ``record_id`` is stable for a source: the first 32 hex digits of sha256 of the path
  relative to ``input.uri`` (the same folder listed twice gives the same ids);
* the listing is sorted by ``rel_path`` so runs are reproducible;
* files and folders whose name starts with ``.`` are not inputs (temporary files,
  ``.DS_Store``), nor is anything under the run's own output, quarantine or audit prefix;
* ``input.glob`` patterns: ``**`` spans folders, ``*`` and ``?`` stay within one name,
  ``{a,b}`` are alternatives; a file is an input if any pattern matches its relative
  path and its extension is in ``input.extensions``.
Nothing is opened here: listing millions of keys must stay cheap.
"""

from __future__ import annotations

import hashlib
import posixpath
import re
from dataclasses import dataclass
from functools import lru_cache
from typing import TYPE_CHECKING

import fsspec
import pyarrow as pa

from deid.io.write import display_uri

if TYPE_CHECKING:  # the manifest is only a type here: io sits below config
    from deid.config.schema import Manifest

LISTING_SCHEMA = pa.schema(
    [
        ("record_id", pa.string()),
        ("uri", pa.string()),
        ("rel_path", pa.string()),
        ("size", pa.int64()),
        ("subject", pa.string()),
    ]
)


class ListingError(Exception):
    """The input location cannot be listed at all (missing folder, no permission)."""


def record_id_for(rel_path: str) -> str:
    return hashlib.sha256(rel_path.encode("utf-8")).hexdigest()[:32]


@lru_cache(maxsize=64)
def glob_to_regex(pattern: str) -> re.Pattern:
    """Translate a relative glob (``**``, ``*``, ``?``, ``[...]``, ``{a,b}``) to a regex."""
    i, n, out = 0, len(pattern), []
    depth = 0
    while i < n:
        c = pattern[i]
        if pattern.startswith("**/", i):
            out.append("(?:.*/)?")
            i += 3
            continue
        if pattern.startswith("**", i):
            out.append(".*")
            i += 2
            continue
        if c == "*":
            out.append("[^/]*")
        elif c == "?":
            out.append("[^/]")
        elif c == "[":
            j = pattern.find("]", i + 1)
            if j == -1:
                out.append(re.escape(c))
            else:
                body = pattern[i + 1 : j].replace("\\", "\\\\")
                if body.startswith("!"):
                    body = "^" + body[1:]
                out.append(f"[{body}]")
                i = j
        elif c == "{":
            depth += 1
            out.append("(?:")
        elif c == "}" and depth:
            depth -= 1
            out.append(")")
        elif c == "," and depth:
            out.append("|")
        else:
            out.append(re.escape(c))
        i += 1
    return re.compile("".join(out) + r"\Z", re.IGNORECASE)


def _strip_protocol(fs: fsspec.AbstractFileSystem, uri: str) -> str:
    return fs._strip_protocol(uri).rstrip("/")


@dataclass(frozen=True)
class Location:
    """A resolved fsspec location: filesystem, root path inside it, and the URI form."""

    fs: fsspec.AbstractFileSystem
    root: str
    uri: str

    def uri_of(self, rel_path: str) -> str:
        return display_uri(self.fs, posixpath.join(self.root, rel_path))


def url_to_fs(uri: str, storage_options: dict | None = None, field: str = "uri"):
    """``fsspec.core.url_to_fs`` with a clear :class:`ListingError` when the protocol's
    package is missing (``gs://`` needs gcsfs, ``az://`` adlfs, ...): the run stops on the
    driver before anything is processed, naming the manifest field and the package."""
    try:
        return fsspec.core.url_to_fs(uri, **(storage_options or {}))
    except ImportError as exc:
        proto = uri.split("://", 1)[0] if "://" in uri else "file"
        raise ListingError(f"{field} = {uri}: the {proto}:// protocol needs a package that is not installed "
                           f"({exc})") from None


def open_location(uri: str, storage_options: dict | None = None, field: str = "input.uri") -> Location:
    fs, root = url_to_fs(uri, storage_options, field)
    return Location(fs=fs, root=root.rstrip("/") or "/", uri=uri)


def discover(manifest: Manifest, subjects: dict[str, str] | None = None) -> pa.Table:
    """List ``input.uri`` and return the record table (see module contract)."""
    loc = open_location(manifest.input.uri, manifest.input.storage_options)
    fs, root = loc.fs, loc.root
    try:
        if not fs.isdir(root):
            if fs.exists(root):
                raise ListingError(f"{manifest.input.uri}: input.uri is a file; give the folder that holds the images")
            raise ListingError(f"{manifest.input.uri}: input.uri does not exist")
        found = fs.find(root, withdirs=False, detail=True)
    except ListingError:
        raise
    except (OSError, PermissionError) as exc:
        raise ListingError(f"{manifest.input.uri}: cannot list input ({exc})") from exc

    excluded = []
    for name, other, opts in (("output.uri", manifest.output.uri, manifest.output.storage_options),
                              ("output.quarantine_uri", manifest.quarantine_uri, manifest.output.storage_options),
                              ("audit.uri", manifest.audit_uri, manifest.audit.storage_options)):
        try:
            ofs, opath = url_to_fs(other, opts, name)
        except ListingError:
            raise  # a missing protocol package: say so now, not on every worker
        except Exception:  # noqa: BLE001 - an unreachable output is reported later, not here
            continue
        if type(ofs) is type(fs):
            excluded.append(opath.rstrip("/") + "/")

    patterns = [glob_to_regex(g) for g in manifest.input.glob]
    exts = tuple(manifest.input.extensions)
    rows: dict[str, list] = {k: [] for k in LISTING_SCHEMA.names}
    prefix = root.rstrip("/") + "/"
    for path in sorted(found):
        info = found[path]
        if not path.startswith(prefix):
            continue
        if any(path.startswith(e) for e in excluded):
            continue
        rel = path[len(prefix) :]
        if any(part.startswith(".") for part in rel.split("/")):
            continue
        if not rel.lower().endswith(exts):
            continue
        if not any(p.match(rel) for p in patterns):
            continue
        rows["record_id"].append(record_id_for(rel))
        rows["uri"].append(loc.uri_of(rel))
        rows["rel_path"].append(rel)
        size = info.get("size") if isinstance(info, dict) else None
        rows["size"].append(int(size) if size is not None else None)
        rows["subject"].append((subjects or {}).get(rel))
    return pa.table(rows, schema=LISTING_SCHEMA)


def load_subjects(uri: str, storage_options: dict | None = None) -> dict[str, str]:
    """Read the ``path -> subject`` side table (CSV or Parquet, columns ``path`` and ``subject``)."""
    import pyarrow.csv as pacsv
    import pyarrow.parquet as pq

    try:
        with fsspec.open(uri, "rb", **(storage_options or {})) as f:
            if uri.lower().endswith((".parquet", ".pq")):
                table = pq.read_table(f)
            else:
                table = pacsv.read_csv(f, convert_options=pacsv.ConvertOptions(column_types={"path": pa.string(), "subject": pa.string()}))
    except ImportError as exc:
        proto = uri.split("://", 1)[0]
        raise ListingError(f"input.subjects = {uri}: the {proto}:// protocol needs a package that is not installed "
                           f"({exc})") from None
    except FileNotFoundError as exc:
        raise ListingError(f"{uri}: input.subjects file does not exist") from exc
    except (OSError, pa.ArrowInvalid) as exc:
        raise ListingError(f"{uri}: cannot read input.subjects ({exc})") from exc
    missing = {"path", "subject"} - set(table.column_names)
    if missing:
        raise ListingError(f"{uri}: input.subjects needs columns path, subject; missing {', '.join(sorted(missing))}")
    paths = table.column("path").to_pylist()
    subs = table.column("subject").to_pylist()
    return {str(p).lstrip("/"): (None if s is None else str(s)) for p, s in zip(paths, subs) if p is not None}

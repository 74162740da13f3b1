"""Discover inputs: an fsspec listing turned into a record table.

Contract:
* one row per input file: ``record_id, uri, rel_path, size, subject, input_target,
  listing_error, listing_message``;
* ``record_id`` is stable for a source: the first 32 hex digits of sha256 of the path
  relative to ``input.uri`` (its bytes: the same folder listed twice gives the same ids);
* the listing is sorted by ``rel_path`` so runs are reproducible;
* files and folders whose name starts with ``.`` are not inputs (temporary files,
  ``.DS_Store``); the run's own output, quarantine and audit never overlap the input (refused
  at validation, deid.io.locations), so nothing is excluded for them here;
* ``input.glob`` patterns: ``**`` spans folders, ``*`` and ``?`` stay within one name,
  ``{a,b}`` are alternatives; a file is an input if any pattern matches its relative
  path and its extension is in ``input.extensions``;
* an input the listing refuses keeps its row, with ``listing_error`` (a code) and
  ``listing_message`` set; the stage turns it into a ``failed`` row without reading it:
  ``bad_name``: the name is not valid UTF-8 (``uri`` and ``rel_path`` then show it escaped,
  undecodable bytes as ``\\xNN``; ``record_id`` hashes its real bytes); ``symlink_outside``:
  a symbolic link that resolves outside ``input.uri`` (``input.follow_symlinks: inside``);
  ``symlink``: any symbolic link (``none``); ``read_error``: a subfolder that cannot be listed;
* local folders are walked here, not by ``fs.find``, so what happens to a symbolic link does
  not depend on the fsspec version: a file link that is followed is an input under the link's
  name, and ``input_target`` is the real path its bytes come from; a followed folder link is
  walked (its files get ``input_target`` too), except one that leads back to a folder being
  walked (a loop: its files are listed there); a folder link that is not followed is one
  refused row (its files are not listed). Object stores have no links.
Nothing is opened here: listing millions of keys must stay cheap.
"""

from __future__ import annotations

import hashlib
import os
import posixpath
import re
from dataclasses import dataclass
from functools import lru_cache
from typing import TYPE_CHECKING

import fsspec
import pyarrow as pa

from deid.io.write import display_uri, is_local

if TYPE_CHECKING:  # the manifest is only a type here: io sits below config
    from deid.config.schema import Manifest

LISTING_SCHEMA = pa.schema(
    [
        ("record_id", pa.string()),
        ("uri", pa.string()),
        ("rel_path", pa.string()),
        ("size", pa.int64()),
        ("subject", pa.string()),
        ("input_target", pa.string()),     # local: the real path behind a symbolic link, else null
        ("listing_error", pa.string()),    # bad_name | symlink_outside | symlink | read_error | null
        ("listing_message", pa.string()),  # the failed row's message, naming the input
    ]
)


class ListingError(Exception):
    """The input location cannot be listed at all (missing folder, no permission)."""


def raw_name(name: str) -> bytes:
    """The bytes of a name as the filesystem holds them: Python lists a local name that is
    not valid UTF-8 with its undecodable bytes as lone surrogates (``surrogateescape``)."""
    for errors in ("strict", "surrogateescape"):
        try:
            return name.encode("utf-8", errors)
        except UnicodeEncodeError:
            continue
    return name.encode("utf-8", "surrogatepass")


def is_utf8_name(name: str) -> bool:
    try:
        name.encode("utf-8")
    except UnicodeEncodeError:
        return False
    return True


def escape_name(name: str) -> str:
    """A printable, valid-UTF-8 form of ``name``: undecodable bytes as ``\\xNN``."""
    return name if is_utf8_name(name) else raw_name(name).decode("utf-8", "backslashreplace")


def record_id_for(rel_path: str) -> str:
    return hashlib.sha256(raw_name(rel_path)).hexdigest()[:32]


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


@dataclass
class _Entry:
    rel: str                        # as listed (a local name may hold surrogate escapes)
    size: int | None = None
    target: str | None = None       # the real path behind a symbolic link
    error: str | None = None        # symlink_outside | symlink | read_error
    folder: bool = False            # a folder refused as a whole (not followed, not listable)
    reason: str = ""                # why a folder could not be listed


def _inside(real: str, real_root: str) -> bool:
    return real == real_root or real.startswith(real_root.rstrip("/") + "/")


def _walk_local(root: str, policy: str) -> list[_Entry]:
    """Every entry under ``root`` (a local folder), symbolic links judged by ``policy``
    (see the module contract). Hidden names are skipped without being entered."""
    real_root = os.path.realpath(root)
    out: list[_Entry] = []

    def walk(folder: str, prefix: str, real_folder: str, chain: frozenset, via_link: bool) -> None:
        try:
            with os.scandir(folder) as it:
                entries = sorted(it, key=lambda e: e.name)
        except OSError as exc:
            if not prefix:
                raise
            out.append(_Entry(prefix.rstrip("/"), error="read_error", folder=True,
                              reason=exc.strerror or type(exc).__name__))
            return
        for e in entries:
            if e.name.startswith("."):
                continue
            rel = prefix + e.name
            try:
                if e.is_symlink():
                    real = os.path.realpath(e.path)
                    is_dir = os.path.isdir(e.path)
                    if not (policy == "all" or (policy == "inside" and _inside(real, real_root))):
                        out.append(_Entry(rel, target=real, error="symlink" if policy == "none" else "symlink_outside",
                                          folder=is_dir))
                    elif is_dir:
                        if real not in chain:  # else a loop: its files are listed where it leads
                            walk(e.path, rel + "/", real, chain | {real}, True)
                    else:
                        try:
                            size = os.stat(e.path).st_size
                        except OSError:
                            size = None  # broken or looping: reading it says why
                        out.append(_Entry(rel, size, target=real))
                elif e.is_dir(follow_symlinks=False):
                    sub = os.path.join(real_folder, e.name)
                    walk(e.path, rel + "/", sub, chain | {sub}, via_link)
                else:
                    out.append(_Entry(rel, e.stat(follow_symlinks=False).st_size,
                                      target=os.path.join(real_folder, e.name) if via_link else None))
            except OSError:  # gone since the folder was read: reading it says so
                out.append(_Entry(rel))

    walk(root, "", real_root, frozenset({real_root}), False)
    return out


def _literal_prefix(pattern: str) -> str:
    cut = min((i for i, c in enumerate(pattern) if c in "*?[{"), default=len(pattern))
    return pattern[:cut].lower()


def _may_hold_matches(folder: str, patterns: list[str]) -> bool:
    """Could a pattern match a file under ``folder``? (Judged by each pattern's literal
    prefix: when unsure, yes, so a refused folder is reported rather than dropped.)"""
    f = folder.lower() + "/"
    return any(f.startswith(p) or p.startswith(f) for p in map(_literal_prefix, patterns))


def _message(e: _Entry, shown_uri: str, manifest: Manifest, real_root: str) -> str:
    target = escape_name(e.target or "")
    policy = manifest.input.follow_symlinks
    if e.error == "bad_name":
        return (f"{shown_uri}: the file name is not valid UTF-8 (undecodable bytes shown as \\xNN); deid cannot "
                "name it in the audit or in an output; rename it to UTF-8 (convmv does this) and run again")
    if e.error == "read_error":
        return (f"{shown_uri}: cannot list this folder ({e.reason}); its files are not inputs of this run; "
                "make it readable and run again")
    what = f"a symbolic link to the folder {target}" if e.folder else f"a symbolic link to {target}"
    files = "; its files are not listed" if e.folder else ""
    if e.error == "symlink_outside":
        return (f"{shown_uri}: {what}, outside input.uri ({escape_name(real_root)}); not followed "
                f"(input.follow_symlinks: {policy}){files}; copy it into the input folder, or set "
                "input.follow_symlinks: all to follow links that lead outside")
    return (f"{shown_uri}: {what}; not followed (input.follow_symlinks: none){files}; replace the link by "
            "what it points to, or set input.follow_symlinks: inside")


def _check_protocols(manifest: Manifest) -> None:
    """A missing protocol package for the output, quarantine or audit location stops the run
    here, on the driver, naming the field (not later on every worker)."""
    for name, other, opts in (("output.uri", manifest.output.uri, manifest.output.storage_options),
                              ("output.quarantine_uri", manifest.quarantine_uri, manifest.output.storage_options),
                              ("audit.uri", manifest.audit_uri, manifest.audit.storage_options)):
        try:
            url_to_fs(other, opts, name)
        except ListingError:
            raise
        except Exception:  # noqa: BLE001 - an unreachable output is reported later, not here
            continue


def discover(manifest: Manifest, subjects: dict[str, str] | None = None) -> pa.Table:
    """List ``input.uri`` and return the record table (see module contract)."""
    loc = open_location(manifest.input.uri, manifest.input.storage_options)
    fs, root = loc.fs, loc.root
    local = is_local(fs)
    try:
        if not fs.isdir(root):
            if fs.exists(root):
                raise ListingError(f"{manifest.input.uri}: input.uri is a file; give the folder that holds the images")
            raise ListingError(f"{manifest.input.uri}: input.uri does not exist")
        if local:
            entries = _walk_local(root, manifest.input.follow_symlinks)
        else:
            prefix = root.rstrip("/") + "/"
            found = fs.find(root, withdirs=False, detail=True)
            entries = [_Entry(p[len(prefix):], (info.get("size") if isinstance(info, dict) else None))
                       for p, info in found.items() if p.startswith(prefix)]
    except ListingError:
        raise
    except (OSError, PermissionError) as exc:
        raise ListingError(f"{manifest.input.uri}: cannot list input ({exc})") from exc

    _check_protocols(manifest)
    real_root = os.path.realpath(root) if local else root
    patterns = [glob_to_regex(g) for g in manifest.input.glob]
    exts = tuple(manifest.input.extensions)
    rows: dict[str, list] = {k: [] for k in LISTING_SCHEMA.names}
    for e in sorted(entries, key=lambda e: e.rel):
        rel = e.rel
        if any(part.startswith(".") for part in rel.split("/")):
            continue
        if e.folder:
            if not _may_hold_matches(rel, manifest.input.glob):
                continue
        elif not rel.lower().endswith(exts) or not any(p.match(rel) for p in patterns):
            continue
        shown = escape_name(rel)
        if shown != rel and e.error is None:
            e.error = "bad_name"
        uri = loc.uri_of(shown)
        rows["record_id"].append(record_id_for(rel))
        rows["uri"].append(uri)
        rows["rel_path"].append(shown)
        rows["size"].append(int(e.size) if e.size is not None else None)
        rows["subject"].append((subjects or {}).get(rel) if e.error is None else None)
        rows["input_target"].append(escape_name(e.target) if e.target is not None else None)
        rows["listing_error"].append(e.error)
        rows["listing_message"].append(_message(e, uri, manifest, real_root) if e.error else None)
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

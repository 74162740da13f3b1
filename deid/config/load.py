"""Load a manifest from YAML and turn pydantic errors into lines that name the field.

``load_manifest`` raises :class:`ManifestError` whose ``errors`` are ``(path, message)``
pairs such as ``("anonymize.params.blocks", "Input should be greater than or equal to 1")``.
Relative local paths in a manifest are resolved against the manifest's folder, so a
manifest runs the same from any working directory.

YAML aliases are bounded: a manifest whose aliases would expand to more than
:data:`MAX_ALIAS_NODES` nodes or :data:`MAX_ALIAS_CHARS` characters of scalars (an "alias
bomb": a few hundred bytes that expand to billions of nodes when the manifest is hashed or
sent to workers), or whose alias refers to the node that contains it, is refused while it is
composed, before anything is expanded, with the line and column of the alias.
"""

from __future__ import annotations

import os
from pathlib import Path
from typing import Any

import yaml
from pydantic import ValidationError

from deid.config.schema import Manifest


#: the most nodes (and characters of scalars) YAML aliases may add to a manifest once
#: expanded; a real manifest with a few aliases stays far below both
MAX_ALIAS_NODES = 10_000
MAX_ALIAS_CHARS = 1_000_000


class AliasBomb(yaml.YAMLError):
    """A YAML alias that expands beyond the bounds, or refers to the node that holds it."""

    def __init__(self, mark, message: str):
        super().__init__(message)
        self.problem_mark = mark
        self.message = message


class BoundedLoader(yaml.SafeLoader):
    """``yaml.SafeLoader`` that counts what aliases add while composing: each alias adds the
    expanded size of the node it names (memoised per node, so counting costs as much as the
    file, not as much as its expansion) and composition stops at the bound."""

    def __init__(self, stream):
        super().__init__(stream)
        self._alias_nodes = 0
        self._alias_chars = 0
        self._sizes: dict[int, tuple[int, int]] = {}
        self._open: list[str] = []  # anchors of the collections being composed

    def compose_node(self, parent, index):
        if self.check_event(yaml.AliasEvent):
            event = self.peek_event()
            if event.anchor in self._open:
                raise AliasBomb(event.start_mark, f"alias *{event.anchor} refers to the node that contains it "
                                                  "(a recursive alias); write the value out")
            node = super().compose_node(parent, index)
            nodes, chars = self._size(node)
            self._alias_nodes += nodes
            self._alias_chars += chars
            if self._alias_nodes > MAX_ALIAS_NODES or self._alias_chars > MAX_ALIAS_CHARS:
                raise AliasBomb(event.start_mark, f"YAML aliases expand to more than {MAX_ALIAS_NODES:,} nodes or "
                                                  f"{MAX_ALIAS_CHARS:,} characters (an alias bomb?); refused before "
                                                  "expanding; write the values out or use fewer aliases")
            return node
        anchor = getattr(self.peek_event(), "anchor", None)
        if anchor is not None:
            self._open.append(anchor)
        try:
            return super().compose_node(parent, index)
        finally:
            if anchor is not None:
                self._open.pop()

    def _size(self, node) -> tuple[int, int]:
        """Nodes and scalar characters of ``node`` with every alias expanded."""
        key = id(node)
        if key in self._sizes:
            return self._sizes[key]
        if isinstance(node, yaml.ScalarNode):
            size = (1, len(node.value))
        else:
            children = node.value if isinstance(node, yaml.SequenceNode) else [n for kv in node.value for n in kv]
            parts = [self._size(c) for c in children]
            size = (1 + sum(p[0] for p in parts), sum(p[1] for p in parts))
        self._sizes[key] = size
        return size


def safe_load(text: str):
    """``yaml.safe_load`` with bounded aliases (:class:`BoundedLoader`)."""
    loader = BoundedLoader(text)
    try:
        return loader.get_single_data()
    finally:
        loader.dispose()


class ManifestError(Exception):
    def __init__(self, source: str, errors: list[tuple[str, str]]):
        self.source = source
        self.errors = errors
        lines = "\n".join(f"  {path}: {msg}" for path, msg in errors)
        super().__init__(f"{source}: {len(errors)} error(s) in manifest\n{lines}")


def _fmt_loc(loc: tuple) -> str:
    return ".".join(str(p) for p in loc) or "<root>"


def _fmt_msg(err: dict) -> str:
    msg = err["msg"]
    if err["type"] == "extra_forbidden":
        return "unknown key (not a manifest field; check the spelling against docs/manifest.md and `deid plugins`)"
    if err["type"] == "missing":
        return "required field is missing"
    return msg.removeprefix("Value error, ")


#: manifest fields that hold local-or-remote locations, resolved against the manifest folder
_PATH_FIELDS = (
    ("input", "uri"), ("input", "subjects"), ("output", "uri"), ("output", "quarantine_uri"),
    ("output", "naming_key_file"), ("audit", "uri"), ("privacy", "ledger"), ("privacy", "subject_key_file"),
    ("run", "state_dir"),
)


def _plugin_path_fields(data: dict) -> list[tuple[str, str]]:
    """The location fields of the plug-ins the manifest names (their params' path_field s)."""
    from deid.faces.registry import DEFAULT_DETECTOR, DETECTORS
    from deid.latent.registry import DEFAULT_BACKEND, LATENT_MODELS
    from deid.plugins import path_fields

    out = []
    for section, registry, default in (("detect", DETECTORS, DEFAULT_DETECTOR), ("latent", LATENT_MODELS, DEFAULT_BACKEND)):
        sec = data.get(section)
        name = sec.get("backend", default) if isinstance(sec, dict) else None
        if isinstance(name, str) and name in registry:
            out += [(section, f) for f in path_fields(registry.get(name).params)]
    from deid.anonymize.registry import DEFAULT_METHOD, METHODS

    sec = data.get("anonymize")
    name = sec.get("method", DEFAULT_METHOD) if isinstance(sec, dict) else None
    if isinstance(name, str) and name in METHODS:  # anonymize.params.<field>
        out += [("anonymize.params", f) for f in path_fields(METHODS.get(name).params)]
    return out


def _resolve_paths(data: dict, base: Path) -> None:
    for section, key in _PATH_FIELDS + tuple(_plugin_path_fields(data)):
        sec = data
        for part in section.split("."):
            sec = sec.get(part) if isinstance(sec, dict) else None
        if not isinstance(sec, dict):
            continue
        val = sec.get(key)
        if isinstance(val, str) and val and "://" not in val and not val.startswith("builtin:"):
            p = Path(os.path.expanduser(val))
            sec[key] = str(p if p.is_absolute() else (base / p).resolve())


def manifest_from_dict(data: Any, source: str = "<manifest>", base_dir: Path | None = None) -> Manifest:
    if not isinstance(data, dict):
        raise ManifestError(source, [("<root>", "a manifest is a mapping of sections (input, output, ...)")])
    if base_dir is not None:
        _resolve_paths(data, base_dir)
    try:
        return Manifest.model_validate(data)
    except ValidationError as exc:
        raise ManifestError(source, [(_fmt_loc(e["loc"]), _fmt_msg(e)) for e in exc.errors()]) from None


def load_manifest(path: str | os.PathLike) -> Manifest:
    path = Path(path)
    try:
        text = path.read_text(encoding="utf-8")
    except OSError as exc:
        raise ManifestError(str(path), [("<file>", f"cannot read manifest: {exc.strerror or exc}")]) from None
    try:
        data = safe_load(text)
    except AliasBomb as exc:
        mark = exc.problem_mark
        raise ManifestError(str(path), [(f"line {mark.line + 1}, column {mark.column + 1}", exc.message)]) from None
    except yaml.YAMLError as exc:
        mark = getattr(exc, "problem_mark", None)
        where = f"line {mark.line + 1}, column {mark.column + 1}" if mark else "<yaml>"
        raise ManifestError(str(path), [(where, f"invalid YAML: {getattr(exc, 'problem', exc)}")]) from None
    return manifest_from_dict(data, source=str(path), base_dir=path.parent.resolve())

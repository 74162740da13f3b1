"""Load a manifest from YAML and turn pydantic errors into lines that name the field.

``load_manifest`` raises :class:`ManifestError` whose ``errors`` are ``(path, message)``
pairs such as ``("anonymize.params.blocks", "Input should be greater than or equal to 1")``.
Relative local paths in a manifest are resolved against the manifest's folder, so a
manifest runs the same from any working directory.
"""

from __future__ import annotations

import os
from pathlib import Path
from typing import Any

import yaml
from pydantic import ValidationError

from deid.config.schema import Manifest


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
    return out


def _resolve_paths(data: dict, base: Path) -> None:
    for section, key in _PATH_FIELDS + tuple(_plugin_path_fields(data)):
        sec = data.get(section)
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
        data = yaml.safe_load(text)
    except yaml.YAMLError as exc:
        mark = getattr(exc, "problem_mark", None)
        where = f"line {mark.line + 1}, column {mark.column + 1}" if mark else "<yaml>"
        raise ManifestError(str(path), [(where, f"invalid YAML: {getattr(exc, 'problem', exc)}")]) from None
    return manifest_from_dict(data, source=str(path), base_dir=path.parent.resolve())

"""Plug-in registries: one per pluggable kind, and the one way a plug-in declares itself.

Kinds and where their registry lives:

* ``detector``   -- :data:`deid.faces.registry.DETECTORS`
* ``latent``     -- :data:`deid.latent.registry.LATENT_MODELS` (latent models and generators)
* ``method``     -- :data:`deid.anonymize.registry.METHODS`
* ``recognizer`` -- :data:`deid.evaluate.registry.RECOGNIZERS`
* ``attack``     -- :data:`deid.evaluate.registry.ATTACKS`
* ``attribute``  -- :data:`deid.attributes.registry.ATTRIBUTES` (face attribute estimators)

Contract:

* A plug-in is one module. At import it builds a :class:`Plugin` (name, params model, needs,
  licences, model files, factory) and passes it to its kind's ``register``. Importing the
  module must be cheap: heavy libraries (torch, onnxruntime, an ML framework) are imported
  inside the factory, which runs once per worker.
* A registry finds its built-in plug-ins by importing every public module of its own package
  (``pkgutil``), so adding a plug-in is adding a module: no list of names is edited anywhere.
  Third-party plug-ins are distributions that declare an entry point in the group
  ``deid.plugins``; loading the entry point imports the module, which registers itself (an
  entry point may also name a :class:`Plugin`, or a list of them, which are then registered).
* Names are unique within a kind; registering a second plug-in under a taken name is an error.
* Lookup of an unknown name is a :class:`KeyError` whose message lists the known names.
* Everything a plug-in declares is plain data: ``deid plugins`` prints it, the manifest schema
  validates against its params model, the audit's model fingerprints come from its
  ``model_files``, and the conformance tests run over every registered plug-in.

This module imports nothing from deid, so every layer may use it.
"""

from __future__ import annotations

import dataclasses
import importlib
import json
import pkgutil
import threading
import types
import typing
from dataclasses import dataclass, field
from typing import Any, Callable, Iterator

from pydantic import BaseModel, Field

ENTRY_POINT_GROUP = "deid.plugins"

KINDS = ("detector", "latent", "method", "recognizer", "attack", "attribute")


@dataclass(frozen=True)
class Licence:
    """Licences of a plug-in's code and of the weights it loads (``None``: it loads none).
    ``non_commercial``: the weights may not be used commercially; a run that uses them needs
    the user's explicit acknowledgement."""

    code: str
    weights: str | None = None
    non_commercial: bool = False


@dataclass(frozen=True)
class Needs:
    """What a plug-in needs from the rest of a run, and what it offers.

    * ``landmarks``: detectors: the landmark layout of the faces they return (``dlib5``,
      ``arcface5``, ...); latent models: the layout they align on; methods: ``None``.
    * ``latent``: methods: the latent model kind they need (``any``: one that encodes and
      decodes; ``generator``; ``codec|generator``: either), else ``None``; latent models: the kind they are (``None`` or
      ``codec``: encode and decode; ``generator``: draws faces, no encoder;
      ``generator+codec``). :func:`deid.latent.registry.latent_mismatch` checks a pair.
    * ``dp``: methods: every release is charged to the per-subject privacy ledger.
    * ``gpu``: it can use a CUDA GPU when the run gives it one.
    """

    landmarks: str | None = None
    latent: str | None = None
    dp: bool = False
    gpu: bool = False


@dataclass(frozen=True)
class ModelFile:
    """One model file a configured plug-in uses: a display name, and a local path whose sha256
    is its fingerprint, or a ``builtin:...`` string for weights compiled into a library."""

    name: str
    path: str


@dataclass(frozen=True)
class Plugin:
    """What a plug-in declares. ``factory(params, **context)`` builds the working object from a
    validated ``params`` instance; ``model_files(params)`` names the files it would load, for the
    audit's fingerprints (it must not load models)."""

    kind: str
    name: str
    summary: str
    params: type[BaseModel]
    factory: Callable[..., Any]
    licence: Licence
    needs: Needs = field(default_factory=Needs)
    model_files: Callable[[BaseModel], list[ModelFile]] | None = None
    module: str = ""
    #: detectors: the model family (two detectors of one family miss the same faces; the
    #: residual-face gate uses another family than the run's detector); default: the name
    family: str = ""

    def __post_init__(self) -> None:
        if self.kind not in KINDS:
            raise ValueError(f"plug-in {self.name!r}: unknown kind {self.kind!r} (kinds: {', '.join(KINDS)})")
        if not self.name or self.name != self.name.strip() or "/" in self.name:
            raise ValueError(f"plug-in name {self.name!r} must be a non-empty word")
        if not (isinstance(self.params, type) and issubclass(self.params, BaseModel)):
            raise TypeError(f"plug-in {self.name!r}: params must be a pydantic model class")
        if not self.module:
            object.__setattr__(self, "module", getattr(self.factory, "__module__", "") or "")
        if not self.family:
            object.__setattr__(self, "family", self.name)

    def build(self, params: BaseModel | dict | None = None, **context: Any) -> Any:
        """Validate ``params`` (a dict, a params instance or ``None`` for the defaults) and call
        the factory."""
        return self.factory(self.validate(params), **context)

    def validate(self, params: BaseModel | dict | None) -> BaseModel:
        if isinstance(params, self.params):
            return params
        if isinstance(params, BaseModel):
            params = params.model_dump()
        return self.params.model_validate(params or {})

    def files(self, params: BaseModel | dict | None = None) -> list[ModelFile]:
        return list(self.model_files(self.validate(params))) if self.model_files else []

    def describe(self) -> dict:
        """Plain JSON data: what ``deid plugins --json`` prints for this plug-in."""
        return {
            "kind": self.kind,
            "name": self.name,
            "summary": self.summary,
            "module": self.module,
            "family": self.family,
            "needs": dataclasses.asdict(self.needs),
            "licence": {"code": self.licence.code, "weights": self.licence.weights,
                        "non_commercial": self.licence.non_commercial},
            "params": describe_params(self.params),
        }


def path_field(default: Any = ..., *, description: str = "", **kw: Any) -> Any:
    """A params field that holds a file or folder location (local path or fsspec URI): a
    manifest resolves it against its own folder when it is relative."""
    return Field(default, description=description, json_schema_extra={"path": True}, **kw)


def path_fields(model: type[BaseModel]) -> list[str]:
    """The fields of a params model declared with :func:`path_field`."""
    return [n for n, f in model.model_fields.items()
            if isinstance(f.json_schema_extra, dict) and f.json_schema_extra.get("path")]


_SECTIONS: dict[tuple[int, str], type[BaseModel]] = {}


def section_model(plugin: Plugin, key: str) -> type[BaseModel]:
    """The manifest section of a plug-in chosen by ``key`` (``detect.backend``,
    ``latent.backend``): its params model plus ``key`` fixed to the plug-in's name."""
    from typing import Literal

    from pydantic import create_model

    cache = (id(plugin), key)
    model = _SECTIONS.get(cache)
    if model is None:
        model = create_model(f"{plugin.params.__name__}Section", __base__=plugin.params,
                             **{key: (Literal[plugin.name], plugin.name)})  # type: ignore[call-overload]
        model.__doc__ = plugin.params.__doc__
        _SECTIONS[cache] = model
    return model


def validate_section(registry: "Registry", key: str, default: str, value: Any) -> BaseModel:
    """A manifest section of a plug-in kind (a mapping with ``key`` naming the plug-in) validated
    against that plug-in's params. Errors keep their field paths (``backend``, ``upsample``)."""
    if isinstance(value, BaseModel) and getattr(value, key, None) in registry:
        return value
    if value is None:
        value = {}
    if not isinstance(value, dict):
        raise ValueError(f"must be a mapping with '{key}' (a {registry.kind} name) and its params")
    name = value.get(key, default)
    if not isinstance(name, str) or name not in registry:
        from pydantic_core import InitErrorDetails, PydanticCustomError, ValidationError

        err = PydanticCustomError("unknown_plugin", "unknown {kind} {name} (known: {known})",
                                  {"kind": registry.kind, "name": repr(name), "known": ", ".join(registry.names())})
        raise ValidationError.from_exception_data(
            registry.kind, [InitErrorDetails(type=err, loc=(key,), input=name)])
    return section_model(registry.get(name), key).model_validate(value)


def describe_params(model: type[BaseModel]) -> list[dict]:
    """Each field of a params model: name, type, default (or required) and description."""
    out = []
    for name, f in model.model_fields.items():
        if f.is_required():
            default: Any = "required"
        else:
            d = f.get_default(call_default_factory=True)
            default = list(d) if isinstance(d, tuple) else d
        out.append({"name": name, "type": type_text(f), "default": default,
                    "description": (f.description or "").strip()})
    return out


def type_text(field) -> str:
    """A params field's type for people: ``float > 0, ≤ 2``, ``int ≥ 64 or null``, ``ellipse | box``."""
    return _type(field.annotation, list(field.metadata))


def _type(ann: Any, metadata: list) -> str:
    origin, args = typing.get_origin(ann), typing.get_args(ann)
    if origin is typing.Annotated:
        return _type(args[0], metadata + [m for a in args[1:] for m in getattr(a, "metadata", [a])])
    if origin in (typing.Union, types.UnionType):
        rest = [a for a in args if a is not type(None)]
        text = " | ".join(_type(a, metadata) for a in rest)
        return f"{text} or null" if len(rest) < len(args) else text
    if origin is typing.Literal:
        return " | ".join(json.dumps(a) if isinstance(a, str) else str(a) for a in args)
    if origin is tuple and args and Ellipsis not in args:
        inner = {_type(a, []) for a in args}
        return f"{len(args)} x {inner.pop()}" if len(inner) == 1 else f"({', '.join(_type(a, []) for a in args)})"
    if origin in (list, tuple):
        return f"list of {_type(args[0], [])}" if args else "list"
    if origin is dict or ann is dict:
        return "mapping"
    name = {str: "string", int: "int", float: "float", bool: "bool"}.get(ann, getattr(ann, "__name__", repr(ann)))
    return f"{name} {_bounds(metadata)}".strip()


def _bounds(metadata: list) -> str:
    b = {k: getattr(m, k) for m in metadata for k in ("ge", "gt", "le", "lt") if getattr(m, k, None) is not None}
    if "ge" in b and "le" in b:
        return f"{_num(b['ge'])}–{_num(b['le'])}"
    low = f"≥ {_num(b['ge'])}" if "ge" in b else f"> {_num(b['gt'])}" if "gt" in b else ""
    high = f"≤ {_num(b['le'])}" if "le" in b else f"< {_num(b['lt'])}" if "lt" in b else ""
    return ", ".join(x for x in (low, high) if x)


def _num(x: Any) -> str:
    return str(int(x)) if isinstance(x, float) and x.is_integer() else str(x)


class Registry:
    """The plug-ins of one kind. ``package`` is scanned for built-ins on first use."""

    def __init__(self, kind: str, package: str):
        if kind not in KINDS:
            raise ValueError(f"unknown plug-in kind {kind!r}")
        self.kind = kind
        self.package = package
        self._plugins: dict[str, Plugin] = {}
        self._loaded = False
        self._loading = False
        self._lock = threading.RLock()

    # -------------------------------------------------------------- registering
    def register(self, plugin: Plugin) -> Plugin:
        if plugin.kind != self.kind:
            raise ValueError(f"plug-in {plugin.name!r} is a {plugin.kind}, not a {self.kind}")
        with self._lock:
            have = self._plugins.get(plugin.name)
            if have is not None and have is not plugin:
                if (have.module, have.factory) == (plugin.module, plugin.factory):
                    return have  # the same module imported twice (e.g. by path and by name)
                raise ValueError(f"{self.kind} {plugin.name!r} is registered twice "
                                 f"({have.module or '?'} and {plugin.module or '?'})")
            self._plugins[plugin.name] = plugin
        return plugin

    def unregister(self, name: str) -> None:
        """Remove a plug-in (tests that register toys clean up with this)."""
        with self._lock:
            self._plugins.pop(name, None)

    # -------------------------------------------------------------- lookup
    def get(self, name: str) -> Plugin:
        self._ensure()
        try:
            return self._plugins[name]
        except KeyError:
            raise KeyError(f"unknown {self.kind} {name!r} (known: {', '.join(self.names())})") from None

    def __contains__(self, name: object) -> bool:
        self._ensure()
        return name in self._plugins

    def names(self) -> list[str]:
        self._ensure()
        return sorted(self._plugins)

    def __iter__(self) -> Iterator[Plugin]:
        self._ensure()
        return iter([self._plugins[n] for n in sorted(self._plugins)])

    def __len__(self) -> int:
        self._ensure()
        return len(self._plugins)

    # -------------------------------------------------------------- discovery
    def _ensure(self) -> None:
        if self._loaded or self._loading:
            return
        with self._lock:
            if self._loaded or self._loading:
                return
            self._loading = True
            try:
                pkg = importlib.import_module(self.package)
                for info in pkgutil.iter_modules(pkg.__path__):
                    if not info.name.startswith("_"):
                        importlib.import_module(f"{self.package}.{info.name}")
                load_entry_points()
                self._loaded = True
            finally:
                self._loading = False


_EP_LOCK = threading.RLock()
_EP_DONE = False
_EP_LOADING = False


def load_entry_points() -> None:
    """Load every ``deid.plugins`` entry point once per process. A broken third-party plug-in
    is an error that names its entry point and distribution."""
    global _EP_DONE, _EP_LOADING
    if _EP_DONE or _EP_LOADING:
        return
    with _EP_LOCK:
        if _EP_DONE or _EP_LOADING:
            return
        _EP_LOADING = True
        try:
            _load_entry_points()
            _EP_DONE = True
        finally:
            _EP_LOADING = False


def _load_entry_points() -> None:
    from importlib.metadata import entry_points

    for ep in entry_points(group=ENTRY_POINT_GROUP):
        try:
            obj = ep.load()
        except Exception as exc:  # noqa: BLE001 - re-raised with the plug-in's name
            dist = getattr(getattr(ep, "dist", None), "name", "?")
            raise ImportError(f"deid plug-in entry point {ep.name!r} = {ep.value!r} (distribution {dist}) "
                              f"failed to load: {type(exc).__name__}: {exc}") from exc
        for plugin in obj if isinstance(obj, (list, tuple)) else [obj]:
            if isinstance(plugin, Plugin):
                registry(plugin.kind).register(plugin)


_REGISTRY_MODULES = {
    "detector": ("deid.faces.registry", "DETECTORS"),
    "latent": ("deid.latent.registry", "LATENT_MODELS"),
    "method": ("deid.anonymize.registry", "METHODS"),
    "recognizer": ("deid.evaluate.registry", "RECOGNIZERS"),
    "attack": ("deid.evaluate.registry", "ATTACKS"),
    "attribute": ("deid.attributes.registry", "ATTRIBUTES"),
}


def registry(kind: str) -> Registry:
    """The registry of ``kind`` (imports its module on demand)."""
    try:
        module, attr = _REGISTRY_MODULES[kind]
    except KeyError:
        raise ValueError(f"unknown plug-in kind {kind!r} (kinds: {', '.join(KINDS)})") from None
    return getattr(importlib.import_module(module), attr)


def all_plugins() -> list[Plugin]:
    """Every registered plug-in of every kind, in ``KINDS`` order then by name."""
    return [p for kind in KINDS for p in registry(kind)]

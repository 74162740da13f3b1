"""The latent-model registry (deid.plugins): latent models and generators register here.

A latent plug-in is one module in this package (or a third-party module behind a
``deid.plugins`` entry point) that registers a :class:`deid.plugins.Plugin` of kind
``latent``: its params model subclasses :class:`LatentParams` and is what the manifest's
``latent`` section holds (with ``backend`` naming the plug-in); its factory returns a
:class:`deid.latent.base.LatentModel`; ``needs.landmarks`` is the layout it aligns on.

Kinds. A latent plug-in's ``needs.latent`` says what kind of latent model it is: ``codec``
(the default when ``None``: it encodes photos and decodes codes; pca, torchscript),
``generator`` (it draws faces from w and has no encoder: :mod:`deid.latent.generator`;
mobilestylegan), or both joined by ``+`` (``generator+codec``: a generator with an encoder).
A method's ``needs.latent`` is what it requires: ``any`` -- a model that encodes and decodes
(``codec``) -- or ``generator``, or ``codec|generator``: either (the method has a path for each:
deepblur and dp-image, which search a generator's latent when it has no encoder). :func:`latent_mismatch` is the one check; the manifest
refuses a run whose latent model does not serve its method (at ``latent.backend``).
"""

from __future__ import annotations

from typing import Any, Mapping

from pydantic import BaseModel, ConfigDict, Field, ValidationError

from deid.latent.base import LatentModel
from deid.plugins import Registry, path_field

LATENT_MODELS = Registry("latent", "deid.latent")

#: the latent model of a manifest that names none
DEFAULT_BACKEND = "pca"
DEFAULT_MODEL = "builtin:eigenfaces"


class LatentParams(BaseModel):
    """What every latent model accepts; a backend's params model subclasses this one."""

    model_config = ConfigDict(extra="forbid")

    storage_options: dict[str, Any] = Field(default_factory=dict, description="fsspec options for the model files")


#: the kinds a latent model can be (see the module docstring)
LATENT_KINDS = ("codec", "generator")
#: what a method's ``needs.latent`` asks for -> the kinds that serve it
_NEED_KIND = {"any": ("codec",), "codec": ("codec",), "generator": ("generator",),
              "codec|generator": ("codec", "generator")}


def accepted_kinds(method_plugin) -> tuple[str, ...]:
    """The latent kinds that serve a method (empty when it needs no latent model)."""
    need = method_plugin.needs.latent
    return _NEED_KIND.get(need, ()) if need else ()


def latent_kinds(plugin) -> frozenset[str]:
    """The kinds a latent plug-in offers (``needs.latent``; ``None`` is ``codec``)."""
    kinds = frozenset((plugin.needs.latent or "codec").split("+"))
    unknown = kinds - set(LATENT_KINDS)
    if unknown:
        raise ValueError(f"latent plug-in {plugin.name!r}: unknown kind(s) {sorted(unknown)} (kinds: {', '.join(LATENT_KINDS)})")
    return kinds


def latent_mismatch(method_plugin, latent_plugin) -> str | None:
    """Why ``latent_plugin`` cannot serve ``method_plugin`` (None when it can, or when the
    method needs no latent model)."""
    need = method_plugin.needs.latent
    if not need:
        return None
    kinds = _NEED_KIND.get(need)
    if kinds is None:
        return (f"method {method_plugin.name} declares an unknown latent need {need!r} "
                f"({', '.join(_NEED_KIND)})")
    offered = latent_kinds(latent_plugin)
    if offered & set(kinds):
        return None
    kind = kinds[0]
    have = " and ".join(sorted(offered))
    if kind == "generator":
        gens = [p.name for p in LATENT_MODELS if "generator" in latent_kinds(p)]
        return (f"method {method_plugin.name} needs a generator (a latent model that draws faces: "
                f"{', '.join(gens) or 'none registered'}); {latent_plugin.name} is a {have}")
    codecs = [p.name for p in LATENT_MODELS if "codec" in latent_kinds(p)]
    return (f"method {method_plugin.name} encodes faces and needs a latent model with an encoder "
            f"({', '.join(codecs)}); {latent_plugin.name} is a {have} without one")


class GeneratorParams(LatentParams):
    """What every ``generator`` latent backend accepts (its params model subclasses this one)."""

    device: str = Field("auto", description="auto | cpu | cuda | cuda:N (auto: CUDA when the actor holds a GPU)")
    stats_samples: int = Field(10000, ge=100, le=10_000_000,
                               description="mapped z samples behind the public w statistics (mean, bounds, PCA)")
    stats_seed: int = Field(0, ge=0, description="seed of those z samples (a fit, not a privacy mechanism)")
    cache_dir: str | None = path_field(
        None, description="folder for the cached w statistics; null: $DEID_CACHE_DIR/generator-stats, else "
        "~/.cache/deid/generator-stats")
    crop_size: int | None = Field(None, ge=64, le=2048, description="size of the generated faces (area-resized); "
                                  "null: the generator's resolution")
    align_scale: float = Field(1.0, gt=0.0, le=2.0, description="alignment scale of the FFHQ crop (< 1: more context)")
    batch_size: int = Field(4, ge=1, le=256, description="faces per synthesis call")


def load_latent_model(spec: Mapping[str, Any] | BaseModel | str | None = None, **overrides: Any) -> LatentModel:
    """Build a latent model from ``spec``: a manifest ``latent`` section, a mapping with
    ``backend`` (default ``pca``) and that backend's params, a string (a PCA model file / URI,
    or ``builtin:<name>``), or ``None`` for ``builtin:eigenfaces``. ``overrides`` replace params
    the backend has (others are ignored: e.g. ``device="cpu"`` for a PCA model). Unknown keys
    and missing fields are a :class:`ValueError` that names them."""
    if spec is None:
        spec = DEFAULT_MODEL
    if isinstance(spec, str):
        spec = {"backend": "pca", "uri": spec}
    spec = dict(spec.model_dump() if isinstance(spec, BaseModel) else spec)
    backend = spec.pop("backend", DEFAULT_BACKEND)
    try:
        plugin = LATENT_MODELS.get(backend)
    except KeyError:
        raise ValueError(f"latent model: unknown backend {backend!r} (known: {', '.join(LATENT_MODELS.names())})") from None
    spec.update({k: v for k, v in overrides.items() if k in plugin.params.model_fields})
    try:
        params = plugin.validate(spec)
    except ValidationError as exc:
        extra = sorted(".".join(map(str, e["loc"])) for e in exc.errors() if e["type"] == "extra_forbidden")
        missing = sorted(".".join(map(str, e["loc"])) for e in exc.errors() if e["type"] == "missing")
        other = [f"{'.'.join(map(str, e['loc']))}: {e['msg']}" for e in exc.errors()
                 if e["type"] not in ("extra_forbidden", "missing")]
        parts = ([f"unknown key(s) {', '.join(extra)}; allowed: {', '.join(sorted(plugin.params.model_fields))}"]
                 if extra else []) + ([f"missing {', '.join(missing)}"] if missing else []) + other
        raise ValueError(f"latent model ({backend}): {'; '.join(parts)}") from None
    return plugin.factory(params)

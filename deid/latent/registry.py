"""The latent-model registry (deid.plugins): latent models and generators register here.

A latent plug-in is one module in this package (or a third-party module behind a
``deid.plugins`` entry point) that registers a :class:`deid.plugins.Plugin` of kind
``latent``: its params model subclasses :class:`LatentParams` and is what the manifest's
``latent`` section holds (with ``backend`` naming the plug-in); its factory returns a
:class:`deid.latent.base.LatentModel`; ``needs.landmarks`` is the layout it aligns on.
"""

from __future__ import annotations

from typing import Any, Mapping

from pydantic import BaseModel, ConfigDict, Field, ValidationError

from deid.latent.base import LatentModel
from deid.plugins import Registry

LATENT_MODELS = Registry("latent", "deid.latent")

#: the latent model of a manifest that names none
DEFAULT_BACKEND = "pca"
DEFAULT_MODEL = "builtin:eigenfaces"


class LatentParams(BaseModel):
    """What every latent model accepts; a backend's params model subclasses this one."""

    model_config = ConfigDict(extra="forbid")

    storage_options: dict[str, Any] = Field(default_factory=dict, description="fsspec options for the model files")


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

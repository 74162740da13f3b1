"""Job manifest schema (pydantic) and loading with errors that name the field."""

from deid.config.schema import (
    AnonymizeConfig,
    AuditConfig,
    ChecksConfig,
    InputConfig,
    Manifest,
    OutputConfig,
    RunConfig,
    detect_section,
    latent_section,
)
from deid.config.load import ManifestError, load_manifest, manifest_from_dict

__all__ = [
    "AnonymizeConfig",
    "AuditConfig",
    "ChecksConfig",
    "InputConfig",
    "Manifest",
    "ManifestError",
    "OutputConfig",
    "RunConfig",
    "detect_section",
    "latent_section",
    "load_manifest",
    "manifest_from_dict",
]

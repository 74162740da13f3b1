"""Job manifest schema (pydantic) and loading with errors that name the field."""

from deid.config.schema import (
    AnonymizeConfig,
    AuditConfig,
    ChecksConfig,
    DetectConfig,
    InputConfig,
    Manifest,
    OutputConfig,
    RunConfig,
)
from deid.config.load import ManifestError, load_manifest, manifest_from_dict

__all__ = [
    "AnonymizeConfig",
    "AuditConfig",
    "ChecksConfig",
    "DetectConfig",
    "InputConfig",
    "Manifest",
    "ManifestError",
    "OutputConfig",
    "RunConfig",
    "load_manifest",
    "manifest_from_dict",
]

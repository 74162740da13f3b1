"""The job manifest: one YAML file that says what to read, what to do and where to write.

Contract: every section forbids unknown keys; every default is stated here and in
docs/manifest.md; derived locations (audit, quarantine) come from the properties
:attr:`Manifest.audit_uri` and :attr:`Manifest.quarantine_uri` so that the rest of deid
never re-derives them.

The plug-in sections are built from the registries (deid.plugins): ``detect`` is the params
model of the detector ``detect.backend`` names, ``latent`` that of the latent model
``latent.backend`` names, and ``anonymize.params`` that of ``anonymize.method``. No plug-in
name is listed here; a plug-in registered later (an entry point) is validated the same way.
"""

from __future__ import annotations

import hashlib
import json
from typing import Any, Literal

from pydantic import BaseModel, ConfigDict, Field, SerializeAsAny, ValidationInfo, field_validator, model_validator

from deid.anonymize.registry import DEFAULT_METHOD, METHODS, is_dp, method_plugin, wants_subject_keys
from deid.faces.registry import DEFAULT_DETECTOR, DETECTORS, default_gate, families
from deid.faces.registry import members as detector_members
from deid.latent.registry import DEFAULT_BACKEND as DEFAULT_LATENT
from deid.latent.registry import LATENT_MODELS, latent_mismatch
from deid.plugins import validate_section

#: Extensions listed by default (lower case). Other files under input.uri are not inputs.
DEFAULT_EXTENSIONS = (".jpg", ".jpeg", ".png", ".webp", ".tif", ".tiff", ".bmp", ".gif", ".pgm", ".ppm")

#: fsspec protocols deid accepts in URIs; anything else is a validation error, not a
#: late failure on a worker.
KNOWN_PROTOCOLS = {
    "file", "local", "memory", "s3", "s3a", "gs", "gcs", "az", "abfs", "abfss", "adl",
    "http", "https", "hdfs", "webhdfs", "sftp", "ssh", "ftp", "oci", "oss", "r2",
}


class _Section(BaseModel):
    model_config = ConfigDict(extra="forbid")


def _check_uri(value: str) -> str:
    value = value.strip()
    if not value:
        raise ValueError("must not be empty")
    if "://" in value:
        proto = value.split("://", 1)[0].lower()
        for part in proto.split("::"):
            if part and part not in KNOWN_PROTOCOLS:
                raise ValueError(f"unknown storage protocol {part!r} (known: {', '.join(sorted(KNOWN_PROTOCOLS))})")
    return value


class InputConfig(_Section):
    uri: str = Field(..., description="folder or bucket prefix to read (any fsspec URI)")
    glob: list[str] = Field(default_factory=lambda: ["**/*"], description="patterns relative to uri; ** spans folders, {a,b} alternatives")
    extensions: list[str] = Field(default_factory=lambda: list(DEFAULT_EXTENSIONS))
    subjects: str | None = Field(None, description="CSV or Parquet side table with columns path, subject")
    follow_symlinks: Literal["inside", "all", "none"] = Field(
        "inside", description="local folders: inside: follow symbolic links that resolve inside uri (others are "
                              "failed rows, symlink_outside); all: follow every link; none: no link is followed "
                              "(failed rows, symlink)")
    storage_options: dict[str, Any] = Field(default_factory=dict)

    @field_validator("uri")
    @classmethod
    def _uri(cls, v: str) -> str:
        return _check_uri(v)

    @field_validator("glob", mode="before")
    @classmethod
    def _glob_list(cls, v: Any) -> Any:
        return [v] if isinstance(v, str) else v

    @field_validator("extensions")
    @classmethod
    def _ext(cls, v: list[str]) -> list[str]:
        out = []
        for e in v:
            e = e.strip().lower()
            if not e:
                raise ValueError("empty extension")
            out.append(e if e.startswith(".") else "." + e)
        return out


class OutputConfig(_Section):
    uri: str = Field(..., description="release prefix: anonymized images land here")
    naming: Literal["hash", "mirror"] = Field(
        "hash", description="hash: keyed hash of the relative path (no input name leaks); mirror: keep relative paths"
    )
    format: Literal["jpeg", "png", "webp", "same"] = "jpeg"
    quality: int = Field(92, ge=1, le=100, description="JPEG/WebP quality")
    quarantine_uri: str | None = Field(None, description="default: <output.uri>-quarantine (a sibling, never inside the release)")
    naming_key_env: str = Field("DEID_NAMING_KEY", description="env var holding the secret for hashed names")
    naming_key_file: str | None = Field(
        None, description="file holding that secret; default ~/.config/deid/naming.key, created on first use"
    )
    storage_options: dict[str, Any] = Field(default_factory=dict)

    @field_validator("uri", "quarantine_uri")
    @classmethod
    def _uris(cls, v: str | None) -> str | None:
        return None if v is None else _check_uri(v)


def detect_section(value: Any = None, **params: Any) -> BaseModel:
    """A validated ``detect`` section: the params of the detector ``backend`` names
    (default: :data:`deid.faces.registry.DEFAULT_DETECTOR`), e.g.
    ``detect_section(backend="dlib-cnn", upsample=0)``."""
    return validate_section(DETECTORS, "backend", DEFAULT_DETECTOR, {**(value or {}), **params})


def latent_section(value: Any = None, **params: Any) -> BaseModel:
    """A validated ``latent`` section: the params of the latent model ``backend`` names."""
    return validate_section(LATENT_MODELS, "backend", DEFAULT_LATENT, {**(value or {}), **params})


class AnonymizeConfig(_Section):
    method: str = Field(DEFAULT_METHOD, description="an anonymization method (deid plugins lists them)")
    params: dict[str, Any] = Field(default_factory=dict, validate_default=True,
                                   description="the method's params (deid plugins)")

    @field_validator("method")
    @classmethod
    def _known(cls, v: str) -> str:
        if v not in METHODS:
            raise ValueError(f"unknown method {v!r} (known: {', '.join(METHODS.names())})")
        return v

    @field_validator("params")
    @classmethod
    def _validate_params(cls, v: dict, info: ValidationInfo) -> dict:
        method = info.data.get("method")
        if method is None:  # the method is already reported
            return v
        # errors keep their paths: anonymize.params.<field>
        return method_plugin(method).params.model_validate(v).model_dump(mode="json")


class PrivacyConfig(_Section):
    """The per-subject privacy budget of the DP methods (docs/privacy.md)."""

    ledger: str | None = Field(None, description="budget ledger: a SQLite file path (WAL) or a SQL URL; required for DP methods")
    max_epsilon: float | None = Field(None, gt=0.0, description="cap per subject on the composed epsilon; required for DP methods")
    max_delta: float = Field(0.0, ge=0.0, lt=1.0, description="cap per subject on delta (gaussian releases need > 0)")
    subject_key_env: str = Field("DEID_SUBJECT_KEY", description="env var with the secret for subject keys (HMAC)")
    subject_key_file: str | None = Field(None, description="file with that secret (deid budget init-key PATH makes one)")
    create_subject_key: bool = Field(
        False, description="create subject_key_file (0600) if it does not exist; for demos: losing the file orphans every budget"
    )

    @model_validator(mode="after")
    def _create_needs_file(self) -> "PrivacyConfig":
        if self.create_subject_key and not self.subject_key_file:
            raise ValueError("create_subject_key needs subject_key_file")
        return self


class ChecksConfig(_Section):
    enabled: bool = True
    min_identity_distance: float = Field(
        0.6, ge=0.0, le=2.0, description="dlib ResNet distance at or above which a face counts as de-identified (0.6: dlib's same-person threshold)"
    )
    on_fail: Literal["quarantine", "drop", "keep"] = "quarantine"
    no_face: Literal["quarantine", "drop", "keep"] = "quarantine"
    redetect: bool = Field(True, description="run the detector on the output to record still_detected")
    # Default by measurement (bench/min_face.py, docs/benchmarks.md): from 32 px wide (dlib HOG box)
    # both dlib's ResNet and MobileFaceNet stay within 2 points of their full-size accuracy on
    # lfw-dev pairs; at 24 px dlib has lost 2.7 points, and both fall steeply below.
    min_face_px: int = Field(
        32, ge=0, le=512, description="faces narrower than this (px) are too small for the identity check to judge: "
        "they get small_face (irreversible) instead of the method, and their check is recorded not_applicable "
        "(bench/min_face.py, docs/benchmarks.md); 0: off")
    # Measured (docs/benchmarks.md, "Faces cut by the frame"): with a solid mask over every face of
    # 377 lfw-public-ref photos, dlib's distance stays under 0.6 for 27 of the 41 faces whose box
    # touches the image edge (66%), against 26 of 418 (6%) of the others: the check cannot judge cut faces.
    frame_cut: Literal["small_face", "check"] = Field(
        "small_face", description="faces whose box touches the image edge (within 2 px) are cut by the frame, and "
        "the identity check cannot judge them: small_face gives them the irreversible small-face treatment instead "
        "of the method, with check cut_by_frame; check: check them like the others")
    small_face: Literal["mask", "pixelate"] = Field(
        "mask", description="the irreversible treatment of faces below min_face_px or cut by the frame: a solid mask, "
        "or 4 x 4 pixelation")
    residual: Literal["anonymize", "quarantine", "off"] = Field(
        "anonymize", description="residual-face gate: a detector of another model family scans every output; a face "
        "no anonymized region covers is anonymized (with the run's method, or mask for DP methods) and the output "
        "scanned again, or the record quarantined, or (off) no scan. Runs whether checks.enabled is on or off")
    residual_detector: SerializeAsAny[BaseModel] | None = Field(
        None, description="the gate's detector (a detect section: backend and its params); default: the first of "
        "centerface, dlib-hog of another family than detect.backend")
    residual_rounds: int = Field(2, ge=1, le=5, description="anonymize-and-rescan rounds before a face the gate still "
                                 "finds quarantines the record")
    residual_coverage: float = Field(0.5, gt=0.0, le=1.0, description="a face the gate finds is covered when at least "
                                     "this fraction of its box was changed by the anonymization")

    @field_validator("residual_detector", mode="before")
    @classmethod
    def _gate_section(cls, v: Any) -> BaseModel | None:
        return None if v is None else detect_section(v)


class LicencesConfig(_Section):
    accept_non_commercial: list[str] = Field(
        default_factory=list, description="plug-ins whose model weights are licensed for non-commercial use only "
        "(deid plugins flags them) that you accept to use under those terms; a run that uses one without "
        "naming it here is refused")


class AuditConfig(_Section):
    uri: str | None = Field(None, description="default: <output.uri>-audit (a sibling of the release, never inside "
                            "it: the audit names your input files)")
    storage_options: dict[str, Any] = Field(default_factory=dict)
    flush_seconds: float = Field(15.0, gt=0, description="write a Parquet part at least this often: what a "
                                 "killed run loses from its audit, and so redoes on resume")

    @field_validator("uri")
    @classmethod
    def _uri(cls, v: str | None) -> str | None:
        return None if v is None else _check_uri(v)


class RunConfig(_Section):
    engine: Literal["auto", "ray", "local"] = Field(
        "auto", description="where the stage runs: ray (actor pool; embedded local Ray or a cluster), local (in "
        "this process), auto: local for small jobs on this machine (<= local_max_records, no cluster, no GPU), "
        "else ray")
    local_max_records: int = Field(
        200, ge=0, description="auto: jobs with at most this many records to process run in-process, where Ray's "
        "~9 s of start-up and shutdown would cost more than the work (docs/benchmarks.md)")
    ray_address: str = Field("", description="empty: $RAY_ADDRESS if set, else an embedded local Ray; else ray.init(address=...); not ray://")
    cpus: int | None = Field(None, ge=1, description="CPUs for the embedded Ray (default: all)")
    actors: int | None = Field(None, ge=1, description="actor pool size (default: one per CPU, or per GPU with gpus_per_actor)")
    batch_size: int = Field(8, ge=1, le=4096, description="records per batch handed to an actor")
    gpus_per_actor: float = Field(0.0, ge=0.0, description="GPUs each actor holds (fractions allowed)")
    read_threads: int = Field(4, ge=1, le=64, description="inputs an actor reads at once within a batch "
                              "(overlaps object-store latency; threads, not CPUs)")
    write_threads: int = Field(4, ge=0, le=64, description="outputs an actor writes while it processes the next "
                               "records (overlaps fsync / object-store PUTs; threads, not CPUs); 0: write in line. "
                               "DP methods always write in line")
    max_pixels: int = Field(64_000_000, ge=1, description="decode refuses images with more pixels (decompression bombs)")
    max_pixels_per_byte: float = Field(
        500.0, ge=0.0, description="decode refuses images of more than 1 Mpx whose header claims more pixels per "
        "byte of file than this (too_many_pixels_for_size: RLE BMP, PNG, GIF, WebP bombs; real photos measure "
        "at most 12 px/B stored, 78 px/B re-encoded at WebP quality 30); 0: off")
    bytes_per_pixel: float = Field(
        300.0, gt=0.0, description="peak memory a worker needs per image pixel to decode, detect, anonymize, "
        "gate, check and encode it (measured: 195-269 B/px with the default detectors at full size; lower it "
        "when detect.max_side is set)")
    worker_memory_fraction: float = Field(
        0.7, gt=0.0, le=1.0, description="the share of a worker's memory one image may take: images of more "
        "than worker_memory_fraction x the worker's memory / bytes_per_pixel pixels fail with "
        "too_many_pixels_for_memory before decoding (a worker's memory: its node's memory over the deid "
        "workers on that node, within the container's limit)")
    state_dir: str | None = Field(
        None, description="local folder for the driver's run state: the audit journal (rows not yet written to "
        "audit.uri, which the next run writes first); default $XDG_STATE_HOME/deid, else ~/.local/state/deid. "
        "On the driver's machine; never inside the input, release, quarantine or audit")
    progress: bool = True
    object_store_memory: int | None = Field(None, ge=75 * 1024 * 1024, description="embedded Ray object store bytes")

    @field_validator("state_dir")
    @classmethod
    def _local_state(cls, v: str | None) -> str | None:
        if v is None:
            return None
        if "://" in v and not v.lower().startswith(("file://", "local://")):
            raise ValueError(f"{v}: the run state (the audit journal) is kept on the driver's local disk; "
                             "give a local path")
        return v.split("://", 1)[1] if "://" in v else v


class Manifest(_Section):
    version: Literal[1] = 1
    input: InputConfig
    output: OutputConfig
    detect: SerializeAsAny[BaseModel] = Field(default_factory=detect_section,
                                              description="the detector: backend and its params")
    anonymize: AnonymizeConfig = Field(default_factory=AnonymizeConfig)
    latent: SerializeAsAny[BaseModel] = Field(default_factory=latent_section,
                                              description="the latent model of the latent methods: backend and its params")
    privacy: PrivacyConfig = Field(default_factory=PrivacyConfig)
    checks: ChecksConfig = Field(default_factory=ChecksConfig)
    audit: AuditConfig = Field(default_factory=AuditConfig)
    licences: LicencesConfig = Field(default_factory=LicencesConfig)
    run: RunConfig = Field(default_factory=RunConfig)

    @field_validator("detect", "latent", mode="before")
    @classmethod
    def _plugin_section(cls, v: Any, info: ValidationInfo) -> BaseModel:
        return (detect_section if info.field_name == "detect" else latent_section)(v)

    @model_validator(mode="after")
    def _cross_checks(self) -> "Manifest":
        out = self.output.uri.rstrip("/")
        if is_dp(self.anonymize.method):
            missing = [f"privacy.{k}" for k in ("ledger", "max_epsilon") if getattr(self.privacy, k) is None]
            if missing:
                raise ValueError(f"{' and '.join(missing)} required for method {self.anonymize.method}: "
                                 "every noisy release is charged to a per-subject budget")
            p = self.anonymize.params  # a DP method's params state its per-face epsilon (and delta)
            if p.get("delta", 0.0) > self.privacy.max_delta:
                raise ValueError("privacy.max_delta must be >= anonymize.params.delta (a release with delta > 0, "
                                 "e.g. the gaussian mechanism, needs a delta budget)")
            if p.get("epsilon", 0.0) > self.privacy.max_epsilon:
                raise ValueError("anonymize.params.epsilon exceeds privacy.max_epsilon: no face could ever be released")
            attrs = p.get("attributes")  # the attribute method: each face is charged every attribute's epsilon
            if isinstance(attrs, dict) and sum(float(a.get("epsilon", 0.0)) for a in attrs.values()
                                               if isinstance(a, dict)) > self.privacy.max_epsilon:
                raise ValueError("the sum of anonymize.params.attributes' epsilons exceeds privacy.max_epsilon: no "
                                 "face could ever be released")
        gate = self.checks.residual_detector
        if gate is not None and self.checks.residual != "off":
            shared = families(self.detect) & families(gate)
            if shared:
                raise ValueError(f"checks.residual_detector: {gate.backend} is of the same model family "
                                 f"({', '.join(sorted(shared))}) as detect.backend {self.detect.backend}; the gate "
                                 "must be another family, or it misses the same faces")
        method = method_plugin(self.anonymize.method)
        if method.needs.latent:
            why = latent_mismatch(method, LATENT_MODELS.get(self.latent.backend))
            if why:
                raise ValueError(f"latent.backend: {why}; set latent.backend to one that serves "
                                 f"anonymize.method {method.name}")
        if wants_subject_keys(self.anonymize.method, self.anonymize.params) and not self.input.subjects:
            raise ValueError(f"anonymize.params.stable: keyed gives one stranger per labelled subject and needs "
                             f"input.subjects (the path -> subject table); without it use stable: fresh")
        for where, plugin, weights in self.non_commercial_used():
            if plugin.name not in self.licences.accept_non_commercial:
                raise ValueError(
                    f"{where}: {plugin.name} loads model weights licensed for non-commercial use only "
                    f"({weights}); to use them under those terms, add {plugin.name!r} to "
                    "licences.accept_non_commercial")
        for field, sibling in (("output.quarantine_uri", self.output.quarantine_uri), ("audit.uri", self.audit.uri)):
            if sibling is None and _is_bucket_root(out):
                suffix = "quarantine" if field.startswith("output") else "audit"
                raise ValueError(f"{field} must be set when output.uri is a bucket root ({self.output.uri}): "
                                 f"the default sibling '<output.uri>-{suffix}' would be another bucket")
        self._check_locations()
        return self

    def _check_locations(self) -> None:
        """Input, release, quarantine and audit never overlap, compared as the storage sees them
        (deid.io.locations: symlinks, ``..``, ``file://``, case, bucket and prefix): deid never
        writes under its input, never reads its own outputs as inputs, and never publishes the
        quarantine or the audit with the release."""
        from deid.io.locations import location, overlap

        places = [("input.uri", self.input.uri), ("output.uri", self.output.uri),
                  ("output.quarantine_uri", self.quarantine_uri), ("audit.uri", self.audit_uri)]
        why = {"input.uri": "deid never writes under its input, nor reads its own outputs as inputs",
               "output.uri": "whatever sits under the release is published with it"}
        for i, (fa, a) in enumerate(places):
            for fb, b in places[i + 1:]:
                if overlap(a, b):
                    same = location(a) == location(b)
                    raise ValueError(
                        f"{fb} ({b}) {'is the same location as' if same else 'overlaps'} {fa} ({a})"
                        f"{'' if same else f', resolved as {location(b)} and {location(a)}'}: {why.get(fa, 'they must be apart')}; "
                        f"give {fb} a location of its own")

    # ----------------------------------------------------------------- derived
    def plugins_used(self) -> list[tuple[str, Any]]:
        """``(manifest field, Plugin)`` of every plug-in this job runs."""
        method = method_plugin(self.anonymize.method)
        used = [("detect.backend", DETECTORS.get(self.detect.backend)), ("anonymize.method", method)]
        used += [("detect.members", DETECTORS.get(m["backend"])) for m in detector_members(self.detect)
                 if m["backend"] != self.detect.backend]
        if method.needs.latent:
            used.append(("latent.backend", LATENT_MODELS.get(self.latent.backend)))
        gate = self.gate_detector
        if gate is not None:
            used.append(("checks.residual_detector", DETECTORS.get(gate.backend)))
        return used

    def non_commercial_used(self) -> list[tuple[str, Any, str]]:
        """``(manifest field, Plugin, weights licence)`` of the plug-ins this job runs whose weights
        are non-commercial: declared so by the plug-in, or stated so in its section (a user's
        checkpoint: ``latent.weights_non_commercial``)."""
        out = []
        for where, plugin in self.plugins_used():
            if plugin.licence.non_commercial:
                out.append((where, plugin, plugin.licence.weights))
            elif where == "latent.backend" and getattr(self.latent, "weights_non_commercial", False):
                out.append((where, plugin, getattr(self.latent, "weights_licence", None) or "stated non-commercial"))
        return out

    @property
    def gate_detector(self) -> BaseModel | None:
        """The residual-face gate's detect section (None when the gate is off)."""
        if self.checks.residual == "off":
            return None
        return self.checks.residual_detector or detect_section(backend=default_gate(self.detect))

    @property
    def audit_uri(self) -> str:
        return self.audit.uri or self.output.uri.rstrip("/") + "-audit"

    @property
    def quarantine_uri(self) -> str:
        return self.output.quarantine_uri or self.output.uri.rstrip("/") + "-quarantine"

    def config_sha256(self) -> str:
        """Hash of the canonical, fully-defaulted manifest (what actually ran)."""
        blob = json.dumps(self.model_dump(mode="json"), sort_keys=True, separators=(",", ":"))
        return hashlib.sha256(blob.encode()).hexdigest()

    def job_sha256(self) -> str:
        """Hash of what decides the outputs: the manifest without its ``run`` section
        (actors, batch sizes, Ray address and progress do not change a record's result).
        Resume treats audit rows with the same job hash as this run's own."""
        d = self.model_dump(mode="json")
        d.pop("run", None)
        blob = json.dumps(d, sort_keys=True, separators=(",", ":"))
        return hashlib.sha256(blob.encode()).hexdigest()


def _is_bucket_root(uri: str) -> bool:
    if "://" not in uri:
        return False
    rest = uri.split("://", 1)[1].strip("/")
    return "/" not in rest


def join_uri(base: str, *parts: str) -> str:
    out = base.rstrip("/")
    for p in parts:
        p = p.strip("/")
        if p:
            out = f"{out}/{p}"
    return out

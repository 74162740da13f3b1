"""The fused per-record stage: read -> decode -> detect -> anonymize -> check -> write.

:class:`ProcessRecords` is a Ray Data callable class (models load once, in ``__init__``)
and also a plain callable: the Ray pipeline, the benchmark's in-process loop and the
tests all run this same code. Input batch columns: ``record_id, uri, rel_path,
output_stem``. Output: one audit row per input row (``deid.audit.schema``), keyed by
``record_id``; no exception escapes for a bad record.
"""

from __future__ import annotations

import dataclasses
import datetime as _dt
import json
import time
import traceback
from dataclasses import dataclass, field

import fsspec
import numpy as np
import pyarrow as pa

from deid import __version__
from deid.anonymize import DP_METHODS, make_anonymizer
from deid.audit.check import IdentityChecker
from deid.audit.schema import AUDIT_SCHEMA
from deid.config.schema import Manifest
from deid.faces import make_detector
from deid.io.decode import DecodeError, decode_image, read_input, sha256_hex
from deid.io.write import FORMATS, atomic_write, display_uri, encode_clean, resolve_format
from deid.privacy.service import call


@dataclass
class RunContext:
    """What every actor needs to know about the run, besides the manifest."""

    run_id: str
    config_sha256: str
    naming_key_id: str
    model_fingerprints: list[dict] = field(default_factory=list)


def _face_row(face, fact, chk, spent_after) -> dict:
    return {
        "box": list(face.box),
        "det_score": face.score,
        "id_distance": None if chk is None else chk.id_distance,
        "still_detected": None if chk is None else chk.still_detected,
        "passed": None if chk is None else chk.passed,
        "epsilon": None if fact is None else fact.epsilon,
        "delta": None if fact is None else fact.delta,
        "mechanism": None if fact is None else fact.mechanism,
        "sensitivity": None if fact is None else fact.sensitivity,
        "noise_scale": None if fact is None else fact.noise_scale,
        "subject_spent_after": spent_after,
    }


def _ms(t0: float) -> float:
    return round((time.perf_counter() - t0) * 1000.0, 3)


class ProcessRecords:
    def __init__(self, manifest: dict, ctx: dict, budget=None):
        self.m = Manifest.model_validate(manifest)
        self.ctx = RunContext(**ctx)
        self.detector = make_detector(self.m.detect)
        self.anonymizer = make_anonymizer(self.m.anonymize.method, self.m.anonymize.params, self.m.latent.spec())
        self.dp = self.m.anonymize.method in DP_METHODS
        if self.dp and budget is None:
            raise ValueError(f"method {self.m.anonymize.method} needs the budget service")
        self.budget = budget
        self.charge = dataclasses.asdict(self.anonymizer.charge()) if self.dp else None
        self.checker = None
        if self.m.checks.enabled:
            from deid.faces.dlib_backend import DlibEmbedder

            self.checker = IdentityChecker(
                DlibEmbedder(), self.detector, threshold=self.m.checks.min_identity_distance,
                redetect=self.m.checks.redetect,
            )
        self.in_opts = self.m.input.storage_options
        self.out_fs, self.out_root = fsspec.core.url_to_fs(self.m.output.uri, **self.m.output.storage_options)
        self.q_fs, self.q_root = fsspec.core.url_to_fs(self.m.quarantine_uri, **self.m.output.storage_options)
        self.params_json = json.dumps(self.m.anonymize.params, sort_keys=True)
        self.rng = np.random.default_rng()  # OS entropy; classical methods do not use it

    # ------------------------------------------------------------------ batch API
    def __call__(self, batch: pa.Table | dict) -> pa.Table:
        cols = batch.to_pydict() if isinstance(batch, pa.Table) else {k: list(v) for k, v in batch.items()}
        keys = cols.get("subject_key") or [None] * len(cols["record_id"])
        rows = [
            self.process_one(rid, uri, name, key)
            for rid, uri, name, key in zip(cols["record_id"], cols["uri"], cols["output_stem"], keys)
        ]
        return pa.Table.from_pylist(rows, schema=AUDIT_SCHEMA)

    # ------------------------------------------------------------------ one record
    def _row(self, record_id: str, uri: str) -> dict:
        return {
            "run_id": self.ctx.run_id,
            "record_id": record_id,
            "input_uri": uri,
            "input_sha256": None,
            "status": "failed",
            "error_code": None,
            "error": None,
            "output_uri": None,
            "output_sha256": None,
            "width": None,
            "height": None,
            "source_format": None,
            "frames": None,
            "n_faces": None,
            "faces": None,
            "method": self.anonymizer.name,
            "params_json": self.params_json,
            "dp_scope": self.anonymizer.dp_scope,
            "dp_test_mode": None,
            "min_id_distance": None,
            "timings": {},
            "processed_at": None,
            "tool_version": __version__,
            "config_sha256": self.ctx.config_sha256,
            "naming_key_id": self.ctx.naming_key_id,
            "model_fingerprints": self.ctx.model_fingerprints,
        }

    def process_one(self, record_id: str, uri: str, output_stem: str, subject_key: str | None = None) -> dict:
        row = self._row(record_id, uri)
        timings = row["timings"]
        self._token = None
        try:
            self._process(row, timings, uri, output_stem, subject_key)
        except Exception as exc:  # noqa: BLE001 - a record never takes the batch down
            row["status"] = "failed"
            row["error_code"] = "internal_error"
            tb = traceback.extract_tb(exc.__traceback__)
            where = f" at {tb[-1].name}" if tb else ""
            row["error"] = f"{uri}: unexpected {type(exc).__name__}{where}: {exc}"
            row["output_uri"] = row["output_sha256"] = None
        finally:
            if self._token is not None:  # noise was drawn: the charge stands, whatever happened next
                call(self.budget, "commit", self._token)
                self._token = None
        row["processed_at"] = _dt.datetime.now(_dt.timezone.utc)
        return row

    def _fail(self, row: dict, code: str, message: str) -> None:
        row["status"] = "failed"
        row["error_code"] = code
        row["error"] = message

    def _process(self, row: dict, timings: dict, uri: str, output_stem: str, subject_key: str | None) -> None:
        # read
        t = time.perf_counter()
        try:
            data = read_input(uri, self.in_opts)  # read_error / not_a_file (FIFO, device)
        except DecodeError as exc:
            timings["read_ms"] = _ms(t)
            return self._fail(row, exc.code, exc.message)
        timings["read_ms"] = _ms(t)

        # decode
        t = time.perf_counter()
        try:
            img = decode_image(data, max_pixels=self.m.run.max_pixels, name=uri)
        except DecodeError as exc:
            timings["decode_ms"] = _ms(t)
            row["input_sha256"] = sha256_hex(data)
            return self._fail(row, exc.code, exc.message)
        timings["decode_ms"] = _ms(t)
        del data
        rgb = img.rgb
        row.update(input_sha256=img.sha256, height=int(rgb.shape[0]), width=int(rgb.shape[1]),
                   source_format=img.source_format, frames=img.frames)

        # detect
        t = time.perf_counter()
        faces = self.detector.detect(rgb)
        timings["detect_ms"] = _ms(t)
        row["n_faces"] = len(faces)

        # budget: reserve every face's charge before any noise is drawn
        spent_after = [None] * len(faces)
        if self.dp and faces:
            res = call(self.budget, "reserve", self.ctx.run_id, row["record_id"], subject_key, img.sha256,
                       [f.box for f in faces], self.charge)
            if not res["ok"]:
                row["status"] = "budget_exhausted"
                row["error"] = f"{uri}: {res['reason']}; not processed, nothing charged"
                row["faces"] = [_face_row(f, None, None, None) for f in faces]
                return None
            spent_after = res["spent_after"]

        # anonymize
        t = time.perf_counter()
        if self.dp and faces:
            self._token = res["token"]  # from here on the draw is charged
        out, facts = self.anonymizer(rgb, faces, self.rng) if faces else (rgb, [])
        timings["anonymize_ms"] = _ms(t)
        if self.dp:
            row["dp_test_mode"] = any(f.test_mode for f in facts)
        if facts:
            row["dp_scope"] = facts[0].dp_scope

        # check
        t = time.perf_counter()
        checks = self.checker.check(rgb, out, faces) if (self.checker and faces) else [None] * len(faces)
        timings["check_ms"] = _ms(t)

        row["faces"] = [_face_row(face, fact, chk, spent) for face, fact, chk, spent in zip(faces, facts, checks, spent_after)]
        dists = [c.id_distance for c in checks if c is not None]
        row["min_id_distance"] = min(dists) if dists else None

        # policy
        if not faces:
            action = self.m.checks.no_face
        elif self.checker and any(not c.passed for c in checks):
            action = self.m.checks.on_fail
        else:
            action = "keep"
        if action == "drop":
            row["status"] = "dropped"
            return None

        # write
        t = time.perf_counter()
        fmt = resolve_format(self.m.output.format, img.source_format)
        blob = encode_clean(out, fmt, self.m.output.quality)
        if action == "quarantine":
            fs, root, status = self.q_fs, self.q_root, "quarantined"
        else:
            fs, root, status = self.out_fs, self.out_root, "released"
        path = f"{root.rstrip('/')}/{output_stem}{FORMATS[fmt][1]}"
        try:
            atomic_write(fs, path, blob)
        except OSError as exc:
            timings["write_ms"] = _ms(t)
            return self._fail(row, "write_error", f"{row['input_uri']}: cannot write output {display_uri(fs, path)} ({exc})")
        timings["write_ms"] = _ms(t)
        row["status"] = status
        row["output_uri"] = display_uri(fs, path)
        row["output_sha256"] = sha256_hex(blob)
        return None


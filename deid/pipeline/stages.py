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
import functools
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
    job_sha256: str | None = None
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
        self.read_threads = self.m.run.read_threads
        # Outputs are written by a thread pool while the next records are processed (a local
        # write waits on fsync, an object store on its PUT). A batch returns only when all its
        # writes are done, so a row never says "released" before its file exists. DP records
        # write in line: their charge is committed with what was written.
        self._io_pool = None
        if self.m.run.write_threads > 0 and not self.dp:
            from concurrent.futures import ThreadPoolExecutor

            self._io_pool = ThreadPoolExecutor(max_workers=self.m.run.write_threads, thread_name_prefix="deid-write")
        self._deferred: list | None = None

    # ------------------------------------------------------------------ batch API
    def __call__(self, batch: pa.Table | dict) -> pa.Table:
        cols = batch.to_pydict() if isinstance(batch, pa.Table) else {k: list(v) for k, v in batch.items()}
        n = len(cols["record_id"])
        keys = cols.get("subject_key") or [None] * n
        stale = cols.get("stale") or [None] * n
        data = self._read_all(cols["uri"])
        self._deferred = [] if self._io_pool is not None else None
        try:
            rows = [
                self.process_one(rid, uri, name, key, stale=old, data=blob)
                for rid, uri, name, key, old, blob in zip(cols["record_id"], cols["uri"], cols["output_stem"], keys,
                                                           stale, data)
            ]
        finally:
            jobs, self._deferred = self._deferred or [], None
            if jobs:  # wait for every write of the batch
                list(self._io_pool.map(lambda job: job(), jobs))
        return pa.Table.from_pylist(rows, schema=AUDIT_SCHEMA)

    def _read_all(self, uris: list[str]) -> list:
        """Read a batch's inputs concurrently (object-store latency overlaps; no CPU taken
        from other actors). Each item is the bytes, or the exception its read raised."""
        def read(uri):
            try:
                return read_input(uri, self.in_opts)
            except Exception as exc:  # noqa: BLE001 - reported per record by _process
                return exc

        if len(uris) <= 1 or self.read_threads <= 1:
            return [read(u) for u in uris]
        from concurrent.futures import ThreadPoolExecutor

        with ThreadPoolExecutor(max_workers=min(self.read_threads, len(uris))) as pool:
            return list(pool.map(read, uris))

    def _clear_stale(self, row: dict, stale: list[str] | None) -> None:
        """Remove outputs an interrupted earlier attempt left under this record's name,
        except the one this attempt wrote (deid.pipeline.resume)."""
        for uri in stale or ():
            if uri == row["output_uri"]:
                continue
            try:
                fs, path = fsspec.core.url_to_fs(uri, **self.m.output.storage_options)
                fs.rm_file(path)
            except FileNotFoundError:
                pass

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
            "job_sha256": self.ctx.job_sha256,
            "resumed_from": None,
            "naming_key_id": self.ctx.naming_key_id,
            "model_fingerprints": self.ctx.model_fingerprints,
        }

    def process_one(self, record_id: str, uri: str, output_stem: str, subject_key: str | None = None,
                    stale: list[str] | None = None, data=None) -> dict:
        row = self._row(record_id, uri)
        timings = row["timings"]
        self._token = None
        self._written = None
        self._scheduled = False
        try:
            self._process(row, timings, uri, output_stem, subject_key, data, stale)
            if stale and not self._scheduled:  # else the deferred write clears them after writing
                self._clear_stale(row, stale)
        except Exception as exc:  # noqa: BLE001 - a record never takes the batch down
            row["status"] = "failed"
            row["error_code"] = "internal_error"
            tb = traceback.extract_tb(exc.__traceback__)
            where = f" at {tb[-1].name}" if tb else ""
            row["error"] = f"{uri}: unexpected {type(exc).__name__}{where}: {exc}"
            row["output_uri"] = row["output_sha256"] = None
        finally:
            if self._token is not None:  # noise was drawn: the charge stands, whatever happened next
                call(self.budget, "commit", self._token, self._written)
                self._token = None
        row["processed_at"] = _dt.datetime.now(_dt.timezone.utc)
        return row

    def _fail(self, row: dict, code: str, message: str) -> None:
        row["status"] = "failed"
        row["error_code"] = code
        row["error"] = message

    def _process(self, row: dict, timings: dict, uri: str, output_stem: str, subject_key: str | None,
                 data=None, stale: list[str] | None = None) -> None:
        # read (usually done for the whole batch by _read_all; data is then bytes or the read's exception)
        t = time.perf_counter()
        try:
            if data is None:
                data = read_input(uri, self.in_opts)  # read_error / not_a_file (FIFO, device)
            elif isinstance(data, BaseException):
                raise data
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
            args = (self.ctx.run_id, row["record_id"], subject_key, img.sha256, [f.box for f in faces], self.charge)
            res = call(self.budget, "reserve", *args)
            if res.get("adopt") and self._adopt(row, timings, rgb, faces, res):
                return None
            if res.get("adopt"):  # the earlier output is gone or differs: a new, charged attempt
                res = call(self.budget, "reserve", *args, False)
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
        if action == "keep" and row["dp_test_mode"]:
            # seeded test noise carries no guarantee: it never reaches the release
            action = "quarantine"
            row["error"] = (f"{uri}: anonymize.params.test_seed is set: the noise is seeded test noise, not DP; "
                            "quarantined, never released")
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
        if self._deferred is not None:
            self._scheduled = True
            self._deferred.append(functools.partial(self._deferred_write, row, timings, fs, path, blob, status,
                                                    stale, _ms(t)))
            return None
        self._write(row, timings, fs, path, blob, status, _ms(t))
        return None

    def _write(self, row: dict, timings: dict, fs, path: str, blob: bytes, status: str, encode_ms: float) -> None:
        t = time.perf_counter()
        try:
            atomic_write(fs, path, blob)
        except OSError as exc:
            timings["write_ms"] = round(encode_ms + _ms(t), 3)
            return self._fail(row, "write_error", f"{row['input_uri']}: cannot write output {display_uri(fs, path)} ({exc})")
        timings["write_ms"] = round(encode_ms + _ms(t), 3)
        row["status"] = status
        row["output_uri"] = display_uri(fs, path)
        row["output_sha256"] = sha256_hex(blob)
        self._written = {"status": status, "output_uri": row["output_uri"], "output_sha256": row["output_sha256"],
                         "dp_test_mode": row["dp_test_mode"]}
        return None

    def _deferred_write(self, row: dict, timings: dict, fs, path: str, blob: bytes, status: str,
                        stale: list[str] | None, encode_ms: float) -> None:
        """A write scheduled by ``_process`` (in the batch's I/O pool): the row gets its final
        status here, and nothing escapes, as in :meth:`process_one`."""
        try:
            self._write(row, timings, fs, path, blob, status, encode_ms)
            if stale:
                self._clear_stale(row, stale)
        except Exception as exc:  # noqa: BLE001 - a record never takes the batch down
            row.update(status="failed", error_code="internal_error", output_uri=None, output_sha256=None,
                       error=f"{row['input_uri']}: unexpected {type(exc).__name__} at write: {exc}")
        row["processed_at"] = _dt.datetime.now(_dt.timezone.utc)

    def _adopt(self, row: dict, timings: dict, rgb, faces, res: dict) -> bool:
        """A retried task (its actor died) reaches a DP record whose earlier attempt in this
        run was already written and charged: take that output as this record's result
        instead of drawing (and charging) new noise. The output is verified byte for byte
        (sha256) and the identity check is measured on it; False when it cannot be used."""
        a = res["adopt"]
        t = time.perf_counter()
        try:
            fs, path = fsspec.core.url_to_fs(a["output_uri"], **self.m.output.storage_options)
            with fs.open(path, "rb") as f:
                blob = f.read()
        except OSError:
            return False
        if sha256_hex(blob) != a["output_sha256"]:
            return False
        out = decode_image(blob, max_pixels=self.m.run.max_pixels, name=a["output_uri"]).rgb
        timings["write_ms"] = _ms(t)
        checks = self.checker.check(rgb, out, faces) if self.checker else [None] * len(faces)
        from deid.privacy.accountant import Charge  # DP runs only: dp-accounting is slow to import

        fact = Charge(**self.charge)  # the per-face facts are the charge's
        row["faces"] = [_face_row(face, fact, chk, spent) for face, chk, spent in zip(faces, checks, res["spent_after"])]
        dists = [c.id_distance for c in checks if c is not None]
        row["min_id_distance"] = min(dists) if dists else None
        row.update(status=a["status"], output_uri=a["output_uri"], output_sha256=a["output_sha256"],
                   dp_test_mode=a.get("dp_test_mode"))
        return True

"""The fused per-record stage: read -> decode -> detect -> reserve -> anonymize -> gate -> check -> decide -> write.

:class:`ProcessRecords` is a Ray Data callable class (models load once, in ``__init__``)
and also a plain callable: the Ray pipeline, the in-process engine and the tests all run
this same code. Input batch columns: ``record_id, uri, output_stem`` (``subject_key`` for DP methods and for methods that keep something per subject, e.g.
synthetic-swap ``stable: keyed``; ``stale`` on resume; ``input_target``, ``listing_error`` and ``listing_message`` from
the listing: a record the listing refused gets its ``failed`` row here and is never read). Output: one audit row per input row (``deid.audit.schema``),
keyed by ``record_id``; no exception escapes for a bad record.

:meth:`ProcessRecords.run_record` reads top to bottom in the record's order; each step is a
small method that fills the record's row and returns what the next step needs, or ``None``
when the record's row is final (a bad file, a withheld or adopted DP record). The release
decision is :func:`deid.audit.policy.decide`; rows and face entries come from
:mod:`deid.audit.rows`.
"""

from __future__ import annotations

import contextlib
import functools
import json
import logging
import time
import traceback
from dataclasses import dataclass, field

import fsspec
import numpy as np
import pyarrow as pa

from deid.anonymize import is_dp, make_anonymizer
from deid.audit.check import CUT_BY_FRAME, NOT_APPLICABLE, IdentityChecker
from deid.audit.policy import Decision, decide
from deid.audit.rows import RunContext, face_row, now, record_row
from deid.audit.schema import AUDIT_SCHEMA
from deid.config.schema import Manifest
from deid.faces import make_detector
from deid.faces.types import cut_by_frame
from deid.facts import FaceFacts
from deid.io.decode import DecodeError, PixelBounds, decode_image, read_input, sha256_hex
from deid.io.write import FORMATS, atomic_write, display_uri, encode_clean, resolve_format
from deid.privacy.service import call

__all__ = ["ProcessRecords", "RunContext"]


def _merge(is_b: list[bool], a: list, b: list) -> list:
    """Interleave ``a`` (where ``is_b`` is False) and ``b`` (where True) back into one list."""
    ia, ib = iter(a), iter(b)
    return [next(ib) if flag else next(ia) for flag in is_b]


def _ms(t0: float) -> float:
    return round((time.perf_counter() - t0) * 1000.0, 3)


@dataclass
class Record:
    """One record on its way through the stage: its row and what its steps left for later."""

    row: dict
    output_stem: str
    subject_key: str | None = None
    stale: list[str] | None = None
    token: str | None = None        # an open budget reservation: committed whatever happens next
    written: dict | None = None     # what was written, for the budget service (a retry may adopt it)
    scheduled: bool = False         # its write runs in the batch's I/O pool
    timings: dict = field(default_factory=dict)
    small: list[bool] = field(default_factory=list)  # per face: below checks.min_face_px, or cut by the frame
    cut: list[bool] = field(default_factory=list)    # per face: cut by the frame (checks.frame_cut)

    @property
    def uri(self) -> str:
        return self.row["input_uri"]

    @contextlib.contextmanager
    def timed(self, name: str):
        t = time.perf_counter()
        try:
            yield
        finally:
            self.timings[name] = _ms(t)

    def fail(self, code: str, message: str) -> None:
        self.row.update(status="failed", error_code=code, error=message)


#: the error of a record the stage did not release because the driver stopped the run
STOPPED = "not released: the run stopped releasing images because its audit could not be written; deid run again redoes it"


class StopSignal:
    """The driver's switch that stops releases (a plain object in-process, a Ray actor for
    the pool): once :meth:`stop` is called, the stage writes no further output; records not
    yet written come back ``failed`` with ``error_code = lost`` (deid.pipeline.run)."""

    def __init__(self) -> None:
        self._stopped = False

    def stop(self) -> None:
        self._stopped = True

    def stopped(self) -> bool:
        return self._stopped


class ProcessRecords:
    def __init__(self, manifest: dict, ctx: dict, budget=None, stop=None, workers: int | None = None):
        self.m = Manifest.model_validate(manifest)
        self.ctx = RunContext(**ctx)
        self.detector = make_detector(self.m.detect)
        self.anonymizer = make_anonymizer(self.m.anonymize.method, self.m.anonymize.params, self.m.latent)
        self.dp = is_dp(self.m.anonymize.method)
        if self.dp and budget is None:
            raise ValueError(f"method {self.m.anonymize.method} needs the budget service")
        self.budget = budget
        self.stop = stop
        self._stopped = False
        # faces too small for the identity check get an irreversible treatment instead
        self.min_face_px = self.m.checks.min_face_px
        self.small_face = make_anonymizer("mask") if self.m.checks.small_face == "mask" else \
            make_anonymizer("pixelate", {"blocks": 4})
        self.gate = self._make_gate()
        # the non-commercial plug-ins of the run (all accepted, or the manifest is refused), by the
        # step that runs them: a record's row names those its data went through
        self.non_commercial: dict[str, list[dict]] = {}
        for where, plugin, weights in self.m.non_commercial_used():
            step = {"detect.backend": "detect", "detect.members": "detect",
                    "checks.residual_detector": "gate"}.get(where, "anonymize")
            entry = {"plugin": plugin.name, "field": where, "weights": weights}
            if entry not in self.non_commercial.setdefault(step, []):
                self.non_commercial[step].append(entry)
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
        # the method's params as it resolved them when it says so (the generator path's search
        # steps and device), else the manifest's
        self.params_json = json.dumps(getattr(self.anonymizer, "audit_params", None) or self.m.anonymize.params,
                                      sort_keys=True)
        self.rng = np.random.default_rng()  # OS entropy; classical methods do not use it
        self.read_threads = self.m.run.read_threads
        self.bounds = self._pixel_bounds(workers)
        # Outputs are written by a thread pool while the next records are processed (a local
        # write waits on fsync, an object store on its PUT). A batch returns only when all its
        # writes are done, so a row never says "released" before its file exists. DP records
        # write in line: their charge is committed with what was written.
        self._io_pool = None
        if self.m.run.write_threads > 0 and not self.dp:
            from concurrent.futures import ThreadPoolExecutor

            self._io_pool = ThreadPoolExecutor(max_workers=self.m.run.write_threads, thread_name_prefix="deid-write")
        self._deferred: list | None = None

    def _pixel_bounds(self, workers: int | None) -> PixelBounds:
        """The decode caps besides run.max_pixels: pixels per byte, and what this worker's memory
        holds (deid.pipeline.memory; ``workers``: the Ray pool size, None in-process)."""
        from deid.pipeline.memory import worker_memory

        r = self.m.run
        mem, source = worker_memory(workers, r.gpus_per_actor)
        bounds = PixelBounds(per_byte=r.max_pixels_per_byte or None, memory_bytes=mem,
                             fraction=r.worker_memory_fraction, bytes_per_pixel=r.bytes_per_pixel, memory_from=source)
        logging.getLogger("deid").info("decode bound: %s pixels (%s: %.1f GiB)", f"{bounds.memory_pixels:,}", source,
                                       mem / 2**30)
        return bounds

    def _make_gate(self):
        """The residual-face gate (deid.audit.residual), or None when checks.residual is off."""
        section = self.m.gate_detector
        if section is None:
            return None
        from deid.audit.residual import ResidualGate

        # DP methods cannot take a face whose release was not reserved before the draw: mask it
        own = None if self.dp else self.anonymizer
        return ResidualGate(make_detector(section), mode=self.m.checks.residual, anonymizer=own,
                            fallback=make_anonymizer("mask"), rounds=self.m.checks.residual_rounds,
                            min_coverage=self.m.checks.residual_coverage, name=section.backend,
                            small=(self.min_face_px, self.small_face))

    # ------------------------------------------------------------------ batch API
    def __call__(self, batch: pa.Table | dict) -> pa.Table:
        cols = batch.to_pydict() if isinstance(batch, pa.Table) else {k: list(v) for k, v in batch.items()}
        n = len(cols["record_id"])
        if self.stopped():  # the run is stopping: nothing of this batch is read or written
            return pa.Table.from_pylist([self._stopped_row(r, u) for r, u in zip(cols["record_id"], cols["uri"])],
                                        schema=AUDIT_SCHEMA)
        keys = cols.get("subject_key") or [None] * n
        stale = cols.get("stale") or [None] * n
        targets = cols.get("input_target") or [None] * n
        refused = list(zip(cols.get("listing_error") or [None] * n, cols.get("listing_message") or [None] * n))
        data = self._read_all([None if code else uri for uri, (code, _) in zip(cols["uri"], refused)])
        self._deferred = [] if self._io_pool is not None else None
        try:
            rows = [
                self.process_one(rid, uri, name, key, stale=old, data=blob, input_target=target, refused=why)
                for rid, uri, name, key, old, blob, target, why in zip(cols["record_id"], cols["uri"],
                                                                       cols["output_stem"], keys, stale, data,
                                                                       targets, refused)
            ]
        finally:
            jobs, self._deferred = self._deferred or [], None
            if jobs:  # wait for every write of the batch
                list(self._io_pool.map(lambda job: job(), jobs))
        return pa.Table.from_pylist(rows, schema=AUDIT_SCHEMA)

    def stopped(self) -> bool:
        """Has the driver stopped releases? (asked before every write; once true, stays true)"""
        if not self._stopped and self.stop is not None:
            try:
                self._stopped = bool(call(self.stop, "stopped"))
            except Exception:  # noqa: BLE001 - the switch is gone with its driver: release nothing more
                self._stopped = True
        return self._stopped

    def _stopped_row(self, record_id: str, uri: str) -> dict:
        row = record_row(self.ctx, record_id, uri, method=self.anonymizer.name, params_json=self.params_json,
                         dp_scope=self.anonymizer.dp_scope, error_code="lost", error=f"{uri}: {STOPPED}")
        row["processed_at"] = now()
        return row

    def _read_all(self, uris: list[str]) -> list:
        """Read a batch's inputs concurrently (object-store latency overlaps; no CPU taken
        from other actors). Each item is the bytes, or the exception its read raised."""
        def read(uri):
            if uri is None:  # refused by the listing: never read
                return None
            try:
                return read_input(uri, self.in_opts)
            except Exception as exc:  # noqa: BLE001 - reported per record by read()
                return exc

        if len(uris) <= 1 or self.read_threads <= 1:
            return [read(u) for u in uris]
        from concurrent.futures import ThreadPoolExecutor

        with ThreadPoolExecutor(max_workers=min(self.read_threads, len(uris))) as pool:
            return list(pool.map(read, uris))

    # ------------------------------------------------------------------ one record
    def process_one(self, record_id: str, uri: str, output_stem: str, subject_key: str | None = None,
                    stale: list[str] | None = None, data=None, input_target: str | None = None,
                    refused: tuple[str | None, str | None] = (None, None)) -> dict:
        """One record's audit row. ``refused`` is the listing's ``(listing_error, listing_message)``:
        when set, the record fails with that code and is not read (deid.io.listing)."""
        row = record_row(self.ctx, record_id, uri, method=self.anonymizer.name, params_json=self.params_json,
                         dp_scope=self.anonymizer.dp_scope)
        row["input_target"] = input_target
        rec = Record(row=row, output_stem=output_stem, subject_key=subject_key, stale=stale)
        row["timings"] = rec.timings
        if refused[0]:
            rec.fail(refused[0], refused[1] or f"{uri}: refused by the listing")
            row["timings"] = None  # nothing ran
            row["processed_at"] = now()
            return row
        try:
            self.run_record(rec, data)
            if stale and not rec.scheduled:  # else the deferred write clears them after writing
                self._clear_stale(rec)
        except Exception as exc:  # noqa: BLE001 - a record never takes the batch down
            tb = traceback.extract_tb(exc.__traceback__)
            where = f" at {tb[-1].name}" if tb else ""
            rec.fail("internal_error", f"{uri}: unexpected {type(exc).__name__}{where}: {exc}")
            row["output_uri"] = row["output_sha256"] = None
        finally:
            if rec.token is not None:  # noise was drawn: the charge stands, whatever happened next
                call(self.budget, "commit", rec.token, rec.written)
                rec.token = None
        row["processed_at"] = now()
        return row

    def run_record(self, rec: Record, data=None) -> None:
        """The record's way through the stage, in order."""
        data = self.read(rec, data)
        if data is None:
            return
        img = self.decode(rec, data)
        if img is None:
            return
        faces = self.detect(rec, img.rgb)
        spent = self.reserve(rec, img, faces)
        if spent is None:
            return
        out, facts = self.anonymize(rec, img.rgb, faces)
        out, residual = self.scan(rec, img.rgb, out, faces)
        checks = self.check(rec, img.rgb, out, faces)
        self.record_faces(rec, faces, facts, checks, spent)
        decision = decide(self.m.checks, len(faces), facts, checks, rec.uri, residual)
        self.write(rec, decision, out, img.source_format)

    # ------------------------------------------------------------------ the steps
    def read(self, rec: Record, data=None):
        """The input's bytes (usually read for the whole batch by ``_read_all``: ``data`` is
        then the bytes or the read's exception); None when it cannot be read."""
        with rec.timed("read_ms"):
            try:
                if data is None:
                    data = read_input(rec.uri, self.in_opts)  # read_error / not_a_file (FIFO, device)
                elif isinstance(data, BaseException):
                    raise data
            except DecodeError as exc:
                rec.fail(exc.code, exc.message)
                return None
        return data

    def decode(self, rec: Record, data: bytes):
        """The decoded image (pixel cap, EXIF orientation, RGB); None when it is not one."""
        with rec.timed("decode_ms"):
            try:
                img = decode_image(data, max_pixels=self.m.run.max_pixels, name=rec.uri, bounds=self.bounds)
            except DecodeError as exc:
                rec.row["input_sha256"] = sha256_hex(data)
                rec.fail(exc.code, exc.message)
                return None
        rgb = img.rgb
        rec.row.update(input_sha256=img.sha256, height=int(rgb.shape[0]), width=int(rgb.shape[1]),
                       source_format=img.source_format, frames=img.frames)
        return img

    def detect(self, rec: Record, rgb: np.ndarray) -> list:
        with rec.timed("detect_ms"):
            faces = self.detector.detect(rgb)
        rec.row["n_faces"] = len(faces)
        edge = self.m.checks.frame_cut == "small_face"
        rec.cut = [edge and f.width >= self.min_face_px and cut_by_frame(f.box, rgb.shape[:2]) for f in faces]
        rec.small = [f.width < self.min_face_px or cut for f, cut in zip(faces, rec.cut)]
        self.accepted(rec, "detect")
        return faces

    def accepted(self, rec: Record, step: str) -> None:
        """Name the run's non-commercial plug-ins of ``step`` in the record's row (audit:
        ``non_commercial_accepted``)."""
        entries = self.non_commercial.get(step)
        if entries:
            have = rec.row["non_commercial_accepted"] or []
            rec.row["non_commercial_accepted"] = have + [e for e in entries if e not in have]

    def reserve(self, rec: Record, img, faces: list) -> list | None:
        """Reserve every face's charge before any noise is drawn (DP methods; others spend
        nothing). Returns each face's subject spend after this release; None when the record
        is final: withheld (``budget_exhausted``), or a retried record whose earlier output
        was adopted."""
        charged = [f for f, small in zip(faces, rec.small) if not small]  # small faces are masked: no draw
        if not self.dp or not charged:
            return [None] * len(faces)
        args = (self.ctx.run_id, rec.row["record_id"], rec.subject_key, img.sha256, [f.box for f in charged],
                self.anonymizer.release)
        res = call(self.budget, "reserve", *args)
        if res.get("adopt"):
            if self._adopt(rec, img.rgb, faces, res):
                return None
            res = call(self.budget, "reserve", *args, False)  # the earlier output is gone or differs
        if not res["ok"]:
            rec.row.update(status="budget_exhausted", error=f"{rec.uri}: {res['reason']}; not processed, nothing charged",
                           faces=[face_row(f) for f in faces])
            return None
        rec.token = res["token"]  # from here on the draw is charged
        return _merge(rec.small, res["spent_after"], [None] * (len(faces) - len(charged)))

    def anonymize(self, rec: Record, rgb: np.ndarray, faces: list) -> tuple[np.ndarray, list[FaceFacts]]:
        """The run's method on the faces the check can judge, the irreversible small-face
        treatment on the others; one FaceFacts per face, in the faces' order."""
        big = [f for f, small in zip(faces, rec.small) if not small]
        tiny = [f for f, small in zip(faces, rec.small) if small]
        with rec.timed("anonymize_ms"):
            # methods that keep something per subject (synthetic-swap, stable: keyed) get the
            # record's keyed subject key for each face (None: unlabeled)
            kw = {"keys": [rec.subject_key] * len(big)} if getattr(self.anonymizer, "wants_subject_keys", False) else {}
            out, facts = self.anonymizer(rgb, big, self.rng, **kw) if big else (rgb, [])
            out, small_facts = self.small_face(out, tiny, self.rng) if tiny else (out, [])
        rec.row.update(FaceFacts.record_fields(facts, self.anonymizer.dp_scope, self.dp))
        if big:
            self.accepted(rec, "anonymize")
        return out, _merge(rec.small, facts, small_facts)

    def scan(self, rec: Record, rgb: np.ndarray, out: np.ndarray, faces: list):
        """The residual-face gate on the output: faces the detector missed are handled here
        (deid.audit.residual); returns the output and the gate's result (None when off)."""
        if self.gate is None:
            return out, None
        with rec.timed("gate_ms"):
            res = self.gate.scan(rgb, out, faces, self.rng)
        rec.row.update(residual_detector=self.gate.name, residual_faces=[f.row() for f in res.found])
        self.accepted(rec, "gate")
        if any(f.action == "anonymized" for f in res.found):  # the run's method on a face the detector missed
            self.accepted(rec, "anonymize")
        return res.image, res

    def check(self, rec: Record, rgb: np.ndarray, out: np.ndarray, faces: list) -> list:
        """The identity check of each face (None when checks are off; NOT_APPLICABLE for faces
        below checks.min_face_px)."""
        if not self.checker:
            return [None] * len(faces)
        big = [f for f, small in zip(faces, rec.small) if not small]
        with rec.timed("check_ms"):
            checks = self.checker.check(rgb, out, big) if big else []
        return _merge(rec.small, checks, [CUT_BY_FRAME if cut else NOT_APPLICABLE
                                          for cut, small in zip(rec.cut, rec.small) if small])

    def record_faces(self, rec: Record, faces: list, facts: list, checks: list, spent: list) -> None:
        rec.row["faces"] = [face_row(*entry) for entry in zip(faces, facts, checks, spent)]
        dists = [c.id_distance for c in checks if c is not None and c.id_distance is not None]
        rec.row["min_id_distance"] = min(dists) if dists else None

    def write(self, rec: Record, decision: Decision, out: np.ndarray, source_format: str | None) -> None:
        """Encode (metadata stripped) and write atomically to the release or the quarantine;
        a dropped record writes nothing. Non-DP writes go to the batch's I/O pool."""
        if decision.reason:
            rec.row["error"] = decision.reason
        if decision.status == "dropped":
            rec.row["status"] = "dropped"
            return
        t = time.perf_counter()
        fmt = resolve_format(self.m.output.format, source_format)
        blob = encode_clean(out, fmt, self.m.output.quality)
        fs, root = (self.q_fs, self.q_root) if decision.status == "quarantined" else (self.out_fs, self.out_root)
        path = f"{root.rstrip('/')}/{rec.output_stem}{FORMATS[fmt][1]}"
        if self._deferred is not None:
            rec.scheduled = True
            self._deferred.append(functools.partial(self._deferred_write, rec, fs, path, blob, decision.status, _ms(t)))
            return
        self._write(rec, fs, path, blob, decision.status, _ms(t))

    # ------------------------------------------------------------------ writing
    def _write(self, rec: Record, fs, path: str, blob: bytes, status: str, encode_ms: float) -> None:
        t = time.perf_counter()
        if self.stopped():  # the driver can no longer record it: release nothing more
            rec.timings["write_ms"] = round(encode_ms, 3)
            return rec.fail("lost", f"{rec.uri}: {STOPPED}")
        try:
            atomic_write(fs, path, blob)
        except OSError as exc:
            rec.timings["write_ms"] = round(encode_ms + _ms(t), 3)
            return rec.fail("write_error", f"{rec.uri}: cannot write output {display_uri(fs, path)} ({exc})")
        rec.timings["write_ms"] = round(encode_ms + _ms(t), 3)
        row = rec.row
        row.update(status=status, output_uri=display_uri(fs, path), output_sha256=sha256_hex(blob))
        rec.written = {"status": status, "output_uri": row["output_uri"], "output_sha256": row["output_sha256"],
                       "dp_test_mode": row["dp_test_mode"]}

    def _deferred_write(self, rec: Record, fs, path: str, blob: bytes, status: str, encode_ms: float) -> None:
        """A write scheduled by :meth:`write` (in the batch's I/O pool): the row gets its final
        status here, and nothing escapes, as in :meth:`process_one`."""
        try:
            self._write(rec, fs, path, blob, status, encode_ms)
            if rec.stale:
                self._clear_stale(rec)
        except Exception as exc:  # noqa: BLE001 - a record never takes the batch down
            rec.row.update(output_uri=None, output_sha256=None)
            rec.fail("internal_error", f"{rec.uri}: unexpected {type(exc).__name__} at write: {exc}")
        rec.row["processed_at"] = now()

    def _clear_stale(self, rec: Record) -> None:
        """Remove outputs an interrupted earlier attempt left under this record's name,
        except the one this attempt wrote (deid.pipeline.resume)."""
        for uri in rec.stale or ():
            if uri == rec.row["output_uri"]:
                continue
            try:
                fs, path = fsspec.core.url_to_fs(uri, **self.m.output.storage_options)
                fs.rm_file(path)
            except FileNotFoundError:
                pass

    def _adopt(self, rec: Record, rgb, faces, res: dict) -> bool:
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
        rec.timings["write_ms"] = _ms(t)
        checks = self.check(rec, rgb, out, faces)
        rel = self.anonymizer.release  # what the earlier attempt released
        many = isinstance(rel, tuple)
        released = FaceFacts(method=self.anonymizer.name, scope=self.anonymizer.dp_scope, dp=None if many else rel,
                             releases=rel if many else (), test_mode=bool(a.get("dp_test_mode")),
                             extra=getattr(self.anonymizer, "adopted_extra", None) or ())
        n_small = sum(rec.small)
        facts = _merge(rec.small, [released] * (len(faces) - n_small), [FaceFacts(method=self.small_face.name)] * n_small)
        spent = _merge(rec.small, res["spent_after"], [None] * n_small)
        self.record_faces(rec, faces, facts, checks, spent)
        rec.row.update(status=a["status"], output_uri=a["output_uri"], output_sha256=a["output_sha256"],
                       dp_test_mode=a.get("dp_test_mode"))
        return True

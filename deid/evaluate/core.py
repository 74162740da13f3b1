"""``deid evaluate``: measure a finished run against subject labels.

Contract:
* reads the audit (``<audit>/records/*.parquet``) of the latest run by default (the run
  named in ``<audit>/summary.json``), or the runs asked for; originals through
  ``input_uri``, outputs through ``output_uri`` (fsspec);
* subjects: the ``path -> subject`` CSV/Parquet of ``deid run``; a record's subject is the
  entry whose path is the longest suffix of its ``input_uri`` (paths are relative to
  the run's ``input.uri``);
* one *group* per (run, method, params); the identity measurements use the subject's face
  of each photo (its largest audit box), the detection rate uses every face;
* a record that cannot be evaluated (no subject, no face, no output, unreadable file,
  output of another size) is counted in ``selection`` by reason; unreadable files are
  logged with their path and reason, and the rest goes on;
* recognizers and attacks are the registered plug-ins (:mod:`deid.evaluate.registry`):
  every one runs, recognizers by name, attacks in ``ATTACK_ORDER``; each recognizer locates
  a face once, on the original, and that geometry is reused for every output of it;
* detectors are built with :func:`deid.faces.make_detector` (``utility.DETECTOR_PARAMS``);
* original embeddings are computed once per evaluator and reused across groups and calls;
* attacks that take a ``context`` (registry.AttackContext) get the outputs reversed by
  :mod:`deid.evaluate.reversal` (blur, pixelate) and the aware attacker's maps
  (:mod:`deid.evaluate.aware`: fitted on the public reference set, cached on disk);
* ``audit_uri`` may name the audit folder or its ``records/`` folder;
* nothing secret at rest: metrics.json holds rates, counts and distances only, never
  embeddings, subject names or paths of records.
"""

from __future__ import annotations

import datetime as _dt
import json
import logging
import os
import posixpath
import time
from collections import Counter
from dataclasses import dataclass, field
from typing import Any, Mapping

import fsspec
import numpy as np

from deid import __version__
from deid.evaluate import attacks, aware, reversal, utility
from deid.evaluate.recognizers import FaceGeometry, Landmarker, arcface_crop
from deid.evaluate.registry import (ATTACKS, RECOGNIZERS, AttackContext, evaluation_order, make_attack,
                                    make_recognizer, metrics_key, takes_context)
from deid.faces import DETECTORS, make_detector

log = logging.getLogger("deid.evaluate")

SCHEMA_ID = "deid-evaluate-metrics/1"
ADAPTIVE_ON = ("independent", "all")
THUMB = 96          # contact-sheet thumbnails (pixels)
HIST_EDGES = np.round(np.linspace(0.0, 2.0, 21), 3)


class EvaluateError(Exception):
    """The evaluation cannot start (missing audit, no run, no labels): the message says why."""


@dataclass
class Original:
    subject: str
    geom: FaceGeometry
    boxes: list
    located: dict              # recognizer name -> what its locate() returned for the face
    emb: dict                  # recognizer name -> vector
    hog: np.ndarray
    thumb: np.ndarray
    rgb_shape: tuple
    second_found: list | None = None   # second detector on the original (lazy)


@dataclass
class Measured:
    """One evaluated record of a group (kept in memory for the report only)."""

    record_id: str
    source: str
    subject: str
    emb: dict
    dist: dict
    hog: np.ndarray
    thumb: np.ndarray
    orig: "Original"           # the measured original (same geometry as this output)
    image: dict
    face: dict
    det_configured: list
    det_second: list | None
    det_second_orig: list | None
    pose: float | None = None                 # pose error (utility.pose_error); None: face not found
    #: per audit box: the method itself anonymized the face (its ``treatment`` is the method, not
    #: the small-face mask or a fallback); None per box in audits written before ``treatment``
    treated: list = field(default_factory=list)
    rev: dict = field(default_factory=dict)   # reversal variant -> recognizer name -> vector


@dataclass
class Group:
    key: tuple
    run_id: str
    method: str
    params: dict
    records: list = field(default_factory=list)
    label: str = ""


def _read(uri: str, storage_options: dict | None, max_pixels: int = 64_000_000) -> np.ndarray:
    from deid.io.decode import decode_image

    with fsspec.open(uri, "rb", **(storage_options or {})) as f:
        data = f.read()
    return decode_image(data, max_pixels=max_pixels, name=uri).rgb


def subject_of(uri: str, subjects: dict[str, str]) -> str | None:
    """The subject whose path is the longest suffix of ``uri`` (on a path-component boundary)."""
    parts = uri.replace("\\", "/").split("/")
    for i in range(len(parts)):
        s = subjects.get("/".join(parts[i:]))
        if s is not None:
            return s
    return None


def rows_for_runs(table, runs: list[str]) -> list[dict]:
    """The audit rows of ``runs``, a resumed run's ``skipped`` rows replaced by the rows that
    stand for them (``resumed_from``), relabelled with the resumed run's id: a resumed run
    is evaluated over everything it released, not only what it processed itself."""
    everything = table.to_pylist()
    rows = [r for r in everything if r["run_id"] in runs]
    if not any(r["status"] == "skipped" for r in rows):
        return rows
    standing = {(r["run_id"], r["record_id"]): r for r in everything if r["status"] != "skipped"}
    out = []
    for r in rows:
        src = standing.get((r.get("resumed_from"), r["record_id"])) if r["status"] == "skipped" else None
        out.append(dict(src, run_id=r["run_id"]) if src is not None else r)
    return out


def select_runs(table, summary_run: str | None, run_ids: list[str] | None, all_runs: bool) -> list[str]:
    present = sorted(set(table.column("run_id").to_pylist()))
    if not present:
        raise EvaluateError("the audit has no records")
    if all_runs:
        return present
    if run_ids:
        missing = [r for r in run_ids if r not in present]
        if missing:
            raise EvaluateError(f"run id(s) {', '.join(missing)} not in the audit (runs: {', '.join(present[-5:])})")
        return list(run_ids)
    if summary_run in present:
        return [summary_run]
    return [present[-1]]  # run ids start with their UTC start time


def _thumb(rgb: np.ndarray, geom: FaceGeometry) -> np.ndarray:
    return arcface_crop(rgb, geom, size=THUMB, scale=0.75)


class Evaluator:
    """Models load once; originals are measured once per evaluator (in memory only).

    ``recognizers``: params by recognizer name (``None``: every registered recognizer with its
    defaults; ``mobilefacenet`` is a shortcut for ``mobilefacenet``'s ``path``); ``attack_params``:
    params by attack name (every registered attack runs; those not named use their defaults);
    ``public_ref``: the aware attacker's public image folder (``None``: ``$DEID_PUBLIC_REF``; unset:
    that attack reports why it did not run), ``public_n`` images of it; ``manifest``: the run's
    manifest (a :class:`deid.config.Manifest` or dict), for the detector and the latent model
    the aware attacker rebuilds the method with (without it: the audit's detector, and latent
    methods are not rebuilt); ``adaptive_on``: ``independent`` (default: the aware and reversal
    attacks run with the recognizers deid's checks do not use) or ``all``; ``dp_audit``: run
    ``deid audit-dp``'s empirical epsilon audit for every dp-image group (with a manifest).
    """

    def __init__(self, mobilefacenet: str | None = None, second_detector: str | None = "auto",
                 second_detector_max: int | None = None, storage_options: dict | None = None,
                 recognizers: Mapping[str, Any] | None = None, attack_params: Mapping[str, Any] | None = None,
                 public_ref: str | None = None, public_n: int = aware.DEFAULT_N, manifest: Any = None,
                 progress: bool | None = None, adaptive_on: str = "independent", dp_audit: bool = True):
        self.landmarker = Landmarker()
        chosen = {p.name: None for p in RECOGNIZERS} if recognizers is None else dict(recognizers)
        if mobilefacenet is not None and "mobilefacenet" in chosen:
            chosen["mobilefacenet"] = {**(chosen["mobilefacenet"] or {}), "path": mobilefacenet}
        self.recognizers = [make_recognizer(n, chosen[n], landmarker=self.landmarker) for n in sorted(chosen)]
        unknown = sorted(set(attack_params or {}) - set(ATTACKS.names()))
        if unknown:
            raise ValueError(f"unknown attack(s) {', '.join(unknown)} (known: {', '.join(ATTACKS.names())})")
        self.attacks = [(metrics_key(p.name), make_attack(p.name, (attack_params or {}).get(p.name)))
                        for p in evaluation_order(ATTACKS)]
        if adaptive_on not in ADAPTIVE_ON:
            raise ValueError(f"adaptive_on: {adaptive_on!r} is not one of {', '.join(ADAPTIVE_ON)}")
        # the adaptive attacks (aware, reversal) embed many more faces: by default only with the
        # independent attacker(s), not with the network deid's own checks use
        self.adaptive = [r for r in self.recognizers if adaptive_on == "all" or not _checks(r)] or self.recognizers
        self.second_detector = second_detector
        self.second_detector_max = second_detector_max
        self.storage_options = storage_options or {}
        self._originals: dict[tuple, Original | None] = {}
        self._detectors: dict[str, object] = {}
        self.public_ref = public_ref or os.environ.get(aware.ENV) or None
        self.public_n = public_n
        if manifest is not None and not hasattr(manifest, "detect"):
            from deid.config import Manifest

            manifest = Manifest.model_validate(manifest)
        self.manifest = manifest
        self.progress = progress
        self.dp_audit = dp_audit
        self._public = None            # PublicSet and its measured originals (lazy)
        self._pubset = None            # PublicSet, or the Unavailable that says why there is none
        self._aware: dict[tuple, Any] = {}
        self._configured = "dlib-hog"

    # ------------------------------------------------------------------ pieces
    def detector(self, name: str):
        if name not in self._detectors:
            self._detectors[name] = make_detector({"backend": name, **utility.DETECTOR_PARAMS.get(name, {})})
        return self._detectors[name]

    def original(self, uri: str, sha: str | None, boxes: list, subject: str) -> Original:
        key = (uri, sha, tuple(tuple(b) for b in boxes))
        if key not in self._originals:
            rgb = _read(uri, self.storage_options)
            box = max(boxes, key=lambda b: (b[2] - b[0]) * (b[3] - b[1]))
            geom = self.landmarker.geometry(rgb, box)
            located = {r.name: r.locate(rgb, [geom]) for r in self.recognizers}
            emb = {r.name: r.embed(rgb, located[r.name])[0] for r in self.recognizers}
            self._originals[key] = Original(subject=subject, geom=geom, boxes=[tuple(b) for b in boxes],
                                            located=located, emb=emb,
                                            hog=utility.hog_features(arcface_crop(rgb, geom)), thumb=_thumb(rgb, geom),
                                            rgb_shape=rgb.shape)
            self._last_rgb = (key, rgb)
        return self._originals[key]

    def _original_rgb(self, key, uri):
        if getattr(self, "_last_rgb", (None,))[0] == key:
            return self._last_rgb[1]
        return _read(uri, self.storage_options)

    def _no_bar(self) -> bool | None:
        return None if self.progress is None else not self.progress   # None: a bar on a terminal only

    # ------------------------------------------------------------------ aware attacker
    def public_set(self) -> "aware.PublicSet":
        """The public reference set (listed once); raises ``Unavailable`` when none is given or readable."""
        if self._pubset is None:
            try:
                if not self.public_ref:
                    raise aware.Unavailable(f"no public reference set (--public-ref, or ${aware.ENV})")
                self._pubset = aware.PublicSet(self.public_ref, self.public_n)
            except aware.Unavailable as exc:
                self._pubset = exc
        if isinstance(self._pubset, aware.Unavailable):
            raise self._pubset
        return self._pubset

    def _public_originals(self):
        """The public set and, per image, its faces, the largest face's geometry and embeddings."""
        if self._public is None:
            from tqdm import tqdm

            pub = self.public_set()
            det = self._run_detector()
            items = []
            for path, _ in tqdm(pub.items, desc="aware attacker: public originals", unit="image",
                                disable=self._no_bar(), leave=False):
                try:
                    rgb = pub.read(path)
                    faces = det.detect(rgb)
                    if not faces:
                        continue
                    geom = self.landmarker.geometry(rgb, max(faces, key=lambda f: f.width * f.height).box)
                    located = {r.name: r.locate(rgb, [geom]) for r in self.adaptive}
                    emb = {r.name: r.embed(rgb, located[r.name])[0] for r in self.adaptive}
                except Exception as exc:  # noqa: BLE001 - one bad public image never stops the evaluation
                    log.warning("%s: public image skipped (%s)", path, exc)
                    continue
                items.append((path, rgb, faces, located, emb))
            self._public = (pub, items)
        return self._public

    def _run_detector(self):
        if self.manifest is not None:
            return make_detector(self.manifest.detect)
        return self.detector(self._configured)

    def aware_maps(self, method: str, params: dict) -> dict:
        """recognizer name -> (maps, fit report) for ``method`` with ``params`` (cached in memory and
        on disk); raises :class:`deid.evaluate.aware.Unavailable` with the reason."""
        key = (method, json.dumps(params, sort_keys=True))
        if key in self._aware:
            got = self._aware[key]
            if isinstance(got, aware.Unavailable):
                raise got
            return got
        try:
            self._aware[key] = self._fit_aware(method, params)
        except aware.Unavailable as exc:
            self._aware[key] = exc
            raise
        return self._aware[key]

    def _fit_aware(self, method: str, params: dict) -> dict:
        from deid.anonymize.registry import make_anonymizer, needs_latent

        latent = None
        if needs_latent(method):
            if self.manifest is None or self.manifest.latent is None:
                raise aware.Unavailable(f"method {method} needs its latent model: give the run's manifest (--manifest)")
            latent = self.manifest.latent
        pub = self.public_set()
        det_section = (self.manifest.detect.model_dump(mode="json") if self.manifest is not None
                       else {"backend": self._configured})
        latent_json = latent.model_dump(mode="json") if hasattr(latent, "model_dump") else latent
        paths = {r.name: aware.cache_dir() / (aware.cache_key(method, params, latent_json, det_section, r.fingerprint,
                                                              pub.fingerprint) + ".npz") for r in self.adaptive}
        cached = {n: aware._load(p) for n, p in paths.items() if p.is_file()}
        if all(cached.get(n) is not None for n in paths):
            return cached
        from tqdm import tqdm

        _, items = self._public_originals()
        anonymizer = make_anonymizer(method, params, latent)
        keyed = getattr(anonymizer, "wants_subject_keys", False)
        rng = np.random.default_rng()   # OS entropy, as a run draws (dp-image's noise is OpenDP's anyway)
        o = {r.name: [] for r in self.adaptive}
        a = {r.name: [] for r in self.adaptive}
        for path, rgb, faces, located, emb in tqdm(items, desc=f"aware attacker: {method} on the public set",
                                                   unit="image", disable=self._no_bar(), leave=False):
            try:
                kw = {"keys": [posixpath.basename(path)] * len(faces)} if keyed else {}
                out, _ = anonymizer(rgb, faces, rng, **kw)
                got = {r.name: r.embed(out, located[r.name])[0] for r in self.adaptive}
            except Exception as exc:  # noqa: BLE001
                log.warning("%s: public image skipped by the aware attacker (%s)", path, exc)
                continue
            for r in self.adaptive:
                a[r.name].append(got[r.name])
                o[r.name].append(emb[r.name])
        out = {}
        for r in self.adaptive:
            maps, report = aware.fit_maps(np.array(a[r.name]), np.array(o[r.name]))
            aware._save(paths[r.name], maps, report)
            out[r.name] = (maps, report)
        return out

    # ------------------------------------------------------------------ main
    def evaluate(self, audit_uri: str, subjects_uri: str, run_ids: list[str] | None = None, all_runs: bool = False,
                 include_quarantined: bool = False, detector: str | None = None,
                 audit_storage_options: dict | None = None) -> tuple[dict, list[Group], dict]:
        """Return ``(metrics, groups, reference_data)``; see module contract."""
        from deid.audit.writer import read_audit
        from deid.io.listing import ListingError, load_subjects

        t0 = time.perf_counter()
        if posixpath.basename(audit_uri.rstrip("/")) == "records":
            audit_uri = posixpath.dirname(audit_uri.rstrip("/"))   # the summary prints the records folder
        try:
            table = read_audit(audit_uri, storage_options=audit_storage_options)
        except (FileNotFoundError, OSError) as exc:
            raise EvaluateError(f"{audit_uri}: cannot read the audit records ({exc})") from None
        summary_run = None
        try:
            with fsspec.open(posixpath.join(audit_uri.rstrip("/"), "summary.json"), "r", **(audit_storage_options or {})) as f:
                summary_run = json.load(f).get("run_id")
        except (FileNotFoundError, OSError, ValueError):
            pass
        runs = select_runs(table, summary_run, run_ids, all_runs)
        try:
            subjects = load_subjects(subjects_uri)
        except ListingError as exc:
            raise EvaluateError(str(exc)) from None

        rows = rows_for_runs(table, runs)
        statuses = ("released", "quarantined") if include_quarantined else ("released",)
        skipped: Counter = Counter()
        errors: Counter = Counter()
        groups: dict[tuple, Group] = {}
        configured = detector or _configured_detector(rows, self.manifest)
        self._configured = configured
        second = utility.second_detector_for(configured) if self.second_detector == "auto" else self.second_detector
        for name in (configured, second):
            if name and name != "none" and name not in DETECTORS:
                raise EvaluateError(f"unknown detector {name!r} (known: {', '.join(DETECTORS.names())}, or none)")
        per_run = Counter(r["run_id"] for r in rows if r["status"] in statuses)

        from tqdm import tqdm

        todo = sorted(rows, key=lambda r: (r["run_id"], r["input_uri"] or ""))
        for r in tqdm(todo, desc="evaluate", unit="record", disable=self._no_bar(), leave=False):
            if r["status"] not in statuses or not r["output_uri"]:
                skipped["not_" + "_or_".join(statuses)] += 1
                continue
            subject = subject_of(r["input_uri"], subjects)
            if subject is None:
                skipped["no_subject"] += 1
                continue
            boxes = [f["box"] for f in (r["faces"] or []) if f.get("box")]
            if not boxes:
                skipped["no_face"] += 1
                continue
            params = json.loads(r["params_json"] or "{}")
            key = (r["run_id"], r["method"], json.dumps(params, sort_keys=True))
            g = groups.setdefault(key, Group(key=key, run_id=r["run_id"], method=r["method"], params=params))
            try:
                orig = self.original(r["input_uri"], r["input_sha256"], boxes, subject)
            except Exception as exc:  # noqa: BLE001 - one bad file never stops the evaluation
                errors[_code(exc)] += 1
                log.warning("%s: cannot evaluate the original (%s)", r["input_uri"], exc)
                continue
            try:
                out = _read(r["output_uri"], self.storage_options)
                if out.shape != orig.rgb_shape:
                    raise ValueError(f"output is {out.shape[1]}x{out.shape[0]}, original {orig.rgb_shape[1]}x{orig.rgb_shape[0]}")
            except Exception as exc:  # noqa: BLE001
                errors[_code(exc)] += 1
                log.warning("%s: cannot evaluate the output (%s)", r["output_uri"], exc)
                continue
            okey = (r["input_uri"], r["input_sha256"], tuple(tuple(b) for b in boxes))
            orig_rgb = self._original_rgb(okey, r["input_uri"])
            emb = {rec.name: rec.embed(out, orig.located[rec.name])[0] for rec in self.recognizers}
            dist = {n: float(np.linalg.norm(emb[n] - orig.emb[n])) for n in emb}
            found = [f.box for f in self.detector(configured).detect(out)]
            pose = None
            again = utility.best_match(found, orig.geom.box)
            if again is not None and orig.geom.arcface5 is not None:
                pose = utility.pose_error(orig.geom.arcface5, self.landmarker.geometry(out, again).arcface5)
            det2 = det2o = None
            if second and second != "none":
                # a fixed, content-independent sample of the run (by record id hash) when capped
                take = (self.second_detector_max is None
                        or int(r["record_id"][:8], 16) / 2**32 < self.second_detector_max / max(1, per_run[r["run_id"]]))
                if take:
                    det2 = utility.matched([f.box for f in self.detector(second).detect(out)], orig.boxes)
                    if orig.second_found is None:
                        orig.second_found = utility.matched([f.box for f in self.detector(second).detect(orig_rgb)], orig.boxes)
                    det2o = orig.second_found
            rev = {}
            for variant, img in reversal.reverse(r["method"], params, out, r["faces"] or []).items():
                rev[variant] = {rec.name: rec.embed(img, orig.located[rec.name])[0] for rec in self.adaptive}
            g.records.append(Measured(
                rev=rev,
                record_id=r["record_id"], source=r["input_uri"], subject=subject, emb=emb, dist=dist,
                hog=utility.hog_features(arcface_crop(out, orig.geom)), thumb=_thumb(out, orig.geom),
                orig=orig, image=utility.image_metrics(orig_rgb, out, outside_of=orig.boxes),
                face=utility.image_metrics(utility.crop_box(orig_rgb, orig.geom.box), utility.crop_box(out, orig.geom.box)),
                det_configured=utility.matched(found, orig.boxes), det_second=det2, det_second_orig=det2o,
                pose=pose, treated=[None if f.get("treatment") is None else f["treatment"] == r["method"]
                                    for f in (r["faces"] or []) if f.get("box")],
            ))

        glist = [g for g in groups.values() if g.records]
        _label_groups(glist)
        metrics = {
            "schema": SCHEMA_ID,
            "tool_version": __version__,
            "created_at": _dt.datetime.now(_dt.timezone.utc).isoformat(timespec="seconds"),
            "audit_uri": audit_uri,
            "run_ids": runs,
            "recognizers": [{"name": r.name, "dim": r.dim, "distance": "euclidean",
                             "same_person_threshold": r.same_person_threshold, "used_by_checks": _checks(r),
                             "role": _role(r, rows),
                             "sha256": r.fingerprint} for r in self.recognizers],
            "detectors": {"configured": configured, "second": second if second and second != "none" else None,
                          "iou_match": utility.IOU_MATCH},
            "selection": {"statuses": list(statuses), "records_in_runs": len(rows),
                          "evaluated": sum(len(g.records) for g in glist),
                          "skipped": dict(sorted(skipped.items())), "errors": dict(sorted(errors.items()))},
            "adaptive": None,
            "reference": self._reference(glist),
            "groups": [self._group_metrics(g) for g in glist],
            "wall_seconds": None,
        }
        metrics["adaptive"] = self._adaptive_summary()   # after the groups: they load the public set
        metrics["wall_seconds"] = round(time.perf_counter() - t0, 1)
        return metrics, glist, {}

    # ------------------------------------------------------------------ metrics
    def _adaptive_summary(self) -> dict:
        """How the adaptive attacks ran: recognizers, and the public set (its fingerprint, no images)."""
        pub = self._pubset if isinstance(self._pubset, aware.PublicSet) else None
        return {"recognizers": [r.name for r in self.adaptive], "public_ref": self.public_ref,
                "public_n": self.public_n, "public_images": len(pub) if pub is not None else 0,
                "public_fingerprint": pub.fingerprint if pub is not None else None,
                "reversal_variants": {m: reversal.variants(m) for m in reversal.REVERSALS}}

    def _reference(self, groups: list[Group]) -> dict:
        """No anonymization: every evaluated original against the other originals."""
        seen: dict[str, Measured] = {}
        for g in groups:
            for m in g.records:
                seen.setdefault(m.source, m)
        srcs = sorted(seen)
        subjects = np.array([seen[s].subject for s in srcs])
        origs = {s: seen[s].orig for s in srcs}
        out = {"n_records": len(srcs), "n_subjects": int(len(set(subjects))), "recognizers": {}}
        for rec in self.recognizers:
            e = np.array([origs[s].emb[rec.name] for s in srcs]) if srcs else np.zeros((0, rec.dim))
            res = attacks.reference(e, subjects, np.array(srcs))
            res.pop("hits_top1")
            out["recognizers"][rec.name] = res
        return out

    def _group_metrics(self, g: Group) -> dict:
        subjects = np.array([m.subject for m in g.records])
        sources = np.array([m.source for m in g.records])
        origs = [m.orig for m in g.records]
        privacy = {}
        for rec in self.recognizers:
            o = np.array([x.emb[rec.name] for x in origs])
            a = np.array([m.emb[rec.name] for m in g.records])
            d = np.array([m.dist[rec.name] for m in g.records])
            adaptive = rec in self.adaptive
            ctx = AttackContext(
                method=g.method, params=g.params, recognizer=rec.name,
                reversed={v: np.array([m.rev[v][rec.name] for m in g.records])
                          for v in reversal.variants(g.method) if all(v in m.rev for m in g.records)} if adaptive else {},
                aware=(lambda g=g, rec=rec: self.aware_maps(g.method, g.params)[rec.name]) if adaptive else None,
                skipped=None if adaptive else "the adaptive attacks run with the independent recognizer(s) only "
                                              "(adaptive_on: all for every one)")
            tm = {key: attack(o, a, subjects, sources, context=ctx) if takes_context(attack)
                  else attack(o, a, subjects, sources) for key, attack in self.attacks}
            hits = {key: res.pop("hits_top1", None) for key, res in tm.items()}  # counted, never written
            per_subject = Counter(subjects[hits["T1"]])
            privacy[rec.name] = {
                "identity_distance": _dist_summary(d),
                "same_person_threshold": rec.same_person_threshold,
                "deid_rate": float((d >= rec.same_person_threshold).mean()),
                "attacks": tm,
                "subjects_reidentified_T1_top1": len(per_subject),
                "subjects": int(len(set(subjects))),
            }
        util = {
            "detection_rate": {
                "configured": _rate([x for m in g.records for x in m.det_configured]),
                "second": _rate([x for m in g.records if m.det_second is not None for x in m.det_second]),
                "second_on_originals": _rate([x for m in g.records if m.det_second_orig is not None for x in m.det_second_orig]),
                # the same, over the faces the method itself anonymized (audit treatment): not the
                # small and frame-cut faces under checks.small_face, nor the faces a method masked
                "method_faces": {k: _rate(_treated(g.records, k)) for k in ("configured", "second", "second_on_originals")},
            },
            "image": _means([m.image for m in g.records]),
            "face": _means([m.face for m in g.records]),
            "outside_faces": {"ssim": _mean_of([m.image["ssim_outside"] for m in g.records])},
            "frechet": utility.frechet_distance(np.array([x.hog for x in origs]), np.array([m.hog for m in g.records])),
            "pose": utility.pose_summary([m.pose for m in g.records]),
        }
        return {"label": g.label, "run_id": g.run_id, "method": g.method, "params": g.params,
                "n_records": len(g.records), "n_subjects": int(len(set(subjects))),
                "privacy": privacy, "utility": util, "dp_audit": self._dp_audit(g)}

    def _dp_audit(self, g: Group) -> dict | None:
        """The empirical epsilon audit (deid.evaluate.dp_audit) of a dp-image group: its lower
        bound beside the claim. Needs the run's manifest (the latent model); ``None`` for other
        methods, ``{"why": ...}`` when it cannot run."""
        if g.method != "dp-image" or not self.dp_audit:
            return None
        if self.manifest is None:
            return {"why": "the DP audit needs the run's manifest (--manifest) for the latent model"}
        from deid.config import Manifest
        from deid.evaluate.dp_audit import DpAuditError, audit_dp

        m = self.manifest.model_dump(mode="json")
        m["anonymize"] = {"method": g.method, "params": g.params}
        try:
            r = audit_dp(Manifest.model_validate(m), public=self.public_ref, progress=not self._no_bar())
        except (DpAuditError, ValueError, OSError) as exc:
            log.warning("dp-image audit not run for %s (%s)", g.label, exc)
            return {"why": str(exc)}
        return {k: r[k] for k in ("claim", "epsilon_lb", "verdict", "view", "bound_for", "trials", "alpha")}


def _checks(recognizer) -> bool:
    return bool(getattr(recognizer, "used_by_checks", False))


_DETECTED = {"configured": "det_configured", "second": "det_second", "second_on_originals": "det_second_orig"}


def _treated(records: list, which: str) -> list[bool]:
    """The detection flags (``which``: a key of :data:`_DETECTED`) of the faces whose audit
    treatment was the run's method."""
    attr = _DETECTED[which]
    return [x for m in records if getattr(m, attr) is not None for x, t in zip(getattr(m, attr), m.treated) if t]


def _rate(flags: list[bool]) -> dict:
    return {"rate": float(np.mean(flags)) if flags else None, "n": len(flags)}


def _mean_of(values: list) -> float | None:
    v = [x for x in values if x is not None]
    return float(np.mean(v)) if v else None


def _means(items: list[dict]) -> dict:
    out = {}
    for k in ("ssim", "psnr", "mse"):
        v = [x[k] for x in items if x[k] is not None]
        out[k] = float(np.mean(v)) if v else None
        if k == "psnr":
            out["psnr_identical"] = sum(1 for x in items if x[k] is None)
    return out


def _dist_summary(d: np.ndarray) -> dict:
    counts, _ = np.histogram(np.clip(d, 0, 2.0), bins=HIST_EDGES)
    return {"mean": float(d.mean()), "std": float(d.std()), "min": float(d.min()), "p05": float(np.quantile(d, 0.05)),
            "median": float(np.median(d)), "p95": float(np.quantile(d, 0.95)), "max": float(d.max()), "n": int(len(d)),
            "histogram": {"edges": [float(e) for e in HIST_EDGES], "counts": [int(c) for c in counts]}}


def _code(exc: Exception) -> str:
    from deid.io.decode import DecodeError

    if isinstance(exc, DecodeError):
        return exc.code
    if isinstance(exc, FileNotFoundError):
        return "not_found"
    if isinstance(exc, ValueError):
        return "size_mismatch" if "original" in str(exc) else "bad_value"
    return type(exc).__name__


#: the audit's fingerprint entry of a recognizer a run's method was fitted against
#: (private-encoder: the identity term of its encoder's fine-tuning)
FITTED_AGAINST = "private-encoder:identity-recognizer:"


def _role(recognizer, rows: list[dict]) -> str:
    """What a recognizer's attack says about the runs: deid's own checks, an independent
    attacker, or not independent (a run's encoder was fine-tuned against this very network)."""
    if _checks(recognizer):
        return "deid's own checks"
    fitted = {fp["sha256"] for r in rows for fp in (r["model_fingerprints"] or [])
              if str(fp["name"]).startswith(FITTED_AGAINST)}
    if getattr(recognizer, "fingerprint", None) in fitted:
        return ("not independent: the run's encoder was fine-tuned against this recognizer "
                "(dlib-resnet128 is the independent attacker of such a run)")
    return "independent attacker"


def _configured_detector(rows: list[dict], manifest=None) -> str:
    """The run's detector: the manifest's backend when given, else read off the audit's model
    fingerprints (which also list the gate's files, so the detector families come first)."""
    backend = getattr(manifest.detect, "backend", None) if manifest is not None else None
    if backend in DETECTORS.names():
        return backend
    names = {fp["name"] for r in rows[:1] for fp in (r["model_fingerprints"] or [])}
    for prefix, backend in (("centerface", "centerface"), ("scrfd", "scrfd"), ("mtcnn-", "mtcnn"),
                            ("dlib-mmod", "dlib-cnn")):
        if any(n.startswith(prefix) for n in names):
            return backend
    return "dlib-hog"  # insightface runs are re-detected with dlib HOG (the pack is not in the audit)


def _label_groups(groups: list[Group]) -> None:
    """``method k=v`` with the parameters that differ between groups of the same method."""
    by_method: dict[str, list[Group]] = {}
    for g in groups:
        by_method.setdefault(g.method, []).append(g)
    for method, gs in by_method.items():
        keys = sorted({k for g in gs for k in g.params})
        varying = [k for k in keys if len({json.dumps(g.params.get(k)) for g in gs}) > 1]
        for g in gs:
            label = " ".join(f"{k}={g.params.get(k)}" for k in varying)
            g.label = f"{method} {label}".strip()
        labels = Counter(g.label for g in gs)
        for g in gs:
            if labels[g.label] > 1:
                g.label = f"{g.label} ({g.run_id[-8:]})"

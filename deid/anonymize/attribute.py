"""``attribute``: AnonymousNet end to end -- estimate, PPAS, directed synthesis, swap.

For each face (Li & Lin 2019, stages 1-4, with synthetic-swap as the last stage):

1. **estimate** its attributes with the attribute plug-ins (``estimators``; the true values,
   private: they go to PPAS and nowhere else);
2. **PPAS** (:mod:`deid.anonymize.ppas`): per attribute, t-closeness against a PUBLIC reference
   distribution, then k-ary randomized response at the attribute's epsilon. Each face's
   releases (one ``kary_rr`` per attribute, :attr:`AttributeMethod.release`) are reserved in the
   ledger before the draw (``needs.dp``);
3. **directed synthesis** (:mod:`deid.anonymize.directions`): a stranger is picked from a
   generated, labelled set -- among the ``candidates`` nearest in pose, those whose labels
   already match most released values, at random -- and its w is moved along the attribute
   directions until the plug-ins, run on the decoded face, give the released values (at most
   ``edit_steps`` decodes);
4. **swap** as ``synthetic-swap`` does (:func:`deid.anonymize.swap_ops.swap_face`): warped into
   the original's pose, colour-matched, blended inside the face region. A face with no mesh is
   masked instead (never left as it was).
5. **universal perturbation** (stage IV, optional: ``perturbation``; :mod:`deid.anonymize.uap`):
   added inside the swapped region, warped onto the face by its mesh's five ArcFace points.

The reference is the JSON table shipped in ``deid/anonymize/data/ppas-reference.json`` (the
plug-ins over ``lfw-public-ref``, ``bench/ppas_reference.py``) or the table named by
``reference``; ``age`` bands other than the table's are re-binned from its per-year counts.

What is DP: the released attribute values, each epsilon_i-DP in the face's true value (the
face's sum is charged). What is not: the image. The stranger's pose is chosen from the
original's mesh, the colour from the original's region, and everything outside the region is
the original's; the facts say ``dp_scope = attributes``. When ``mouth`` is released, the pose
match leaves out the lip points, so the original's mouth does not pick the stranger. Facts list
each released attribute's name, number of values, epsilon and mechanism, never a value.
"""

from __future__ import annotations

import hashlib
import json
import logging
import threading
from pathlib import Path
from typing import Any, Literal

import numpy as np
from pydantic import Field, field_validator

from deid.anonymize.ppas import AttributePolicy, PpasParams, Reference, attribute_facts, rr_release, select
from deid.anonymize.registry import METHODS
from deid.anonymize.swap import StrangerMethod, SwapParams
from deid.faces.types import Face
from deid.facts import FaceFacts
from deid.plugins import Licence, ModelFile, Needs, Plugin, path_field

log = logging.getLogger(__name__)

REFERENCE_FILE = Path(__file__).with_name("data") / "ppas-reference.json"
REFERENCE_FORMAT = "deid-ppas-reference/1"
#: attributes the swap cannot release: it keeps the original's pose
POSE_ATTRIBUTES = ("yaw", "pitch")
LIP_POINTS = (61, 291, 0, 17, 13, 14, 78, 308)


class AttributeMethodParams(SwapParams):
    attributes: dict[str, AttributePolicy] = Field(
        # t 1.0 by default: keep every value for the randomized response alone. Under AnonymousNet's t 0.5
        # every value rarer than half the public reference is flipped (with the shipped reference, every
        # face estimated female was released male): a kept attribute must not erase a minority.
        {"age": {"epsilon": 2.0, "t": 1.0}, "gender": {"epsilon": 2.0, "t": 1.0}}, min_length=1,
        validate_default=True,
        description="the attributes released (PPAS), each with its epsilon and t (t < 1 flips values far from the "
                    "public reference: hides rare values, and erases them); a face is charged their sum")
    compare: Literal["point", "soft"] = Field("point", description="PPAS t-closeness of the point estimate or of "
                                              "the estimator's probabilities")
    # age in three bands by default: the age plug-in's error (MAE 8 y, docs/attributes.md) puts half the
    # faces in a neighbouring 10-year band, and the released face must read as its band
    estimators: dict[str, dict] = Field({"age-gender": {"age_bands": [30, 50]}, "face-mesh": {}},
                                        description="attribute plug-ins and their params; each released attribute "
                                        "comes from the one that estimates it (default age bands: <30, 30-49, 50+)")
    reference: str | None = path_field(None, description="JSON table of the public reference distributions "
                                       "(bench/ppas_reference.py); null: the shipped lfw-public-ref table")
    bank_size: int = Field(256, ge=32, le=100_000, description="generated strangers, labelled by the plug-ins: the "
                           "directions' training set and the strangers the faces get (built once, cached)")
    bank_dir: str | None = path_field(None, description="where the labelled set, the directions and their card are "
                                      "stored (default: $DEID_CACHE_DIR/directions, else ~/.cache/deid/directions)")
    stable: Literal["fresh"] = Field("fresh", description="fresh only: each face gets a stranger edited to its own "
                                     "released attributes")
    edit_steps: int = Field(6, ge=0, le=20, description="most decodes of an edited stranger (0: no editing, the "
                            "best-matching stranger of the set as it is)")
    edit_margin: float = Field(1.0, gt=0.0, le=10.0, description="first edit: this many score-stds past the "
                               "classifier's boundary")
    edit_step: float = Field(0.75, gt=0.0, le=10.0, description="later edits: this many score-stds further each")
    edit_check: Literal["photo", "stranger"] = Field(
        "photo", description="what the plug-ins read to decide an edit is done: photo, the face as it would be "
        "released (the stranger swapped into the photo, where the plug-ins also see what is kept of the original); "
        "stranger, the decoded stranger alone (fewer decodes; the released photo reads the released age less often, "
        "docs/attributes.md)")
    test_seed: int | None = Field(None, description="TEST MODE ONLY: seeded, non-DP randomized response; marked in "
                                  "the audit (dp_test_mode), never released")
    perturbation: str | None = path_field(
        None, description="AnonymousNet stage IV: a universal adversarial perturbation file (`deid uap fit`) added "
        "to each swapped face region; builtin:uap-mobilefacenet is the shipped one (xi 8, computed on MobileFaceNet "
        "over lfw-public-ref: the evaluation's attacker, so measure with another, docs/attributes.md); null: none")

    @field_validator("attributes")
    @classmethod
    def _no_pose(cls, v: dict) -> dict:
        bad = [a for a in v if a in POSE_ATTRIBUTES]
        if bad:
            raise ValueError(f"attribute cannot release {', '.join(bad)}: the swap keeps the original's pose "
                             f"(release age, gender, mouth)")
        return v

    def ppas(self) -> PpasParams:
        return PpasParams(attributes=self.attributes, compare=self.compare)


def load_references(specs: dict, estimators: dict, path: str | None = None) -> dict[str, Reference]:
    """The public reference of every attribute of ``specs`` from a JSON table (module docstring)."""
    path = Path(path).expanduser() if path else REFERENCE_FILE
    try:
        table = json.loads(path.read_text())
    except (OSError, ValueError) as exc:
        raise ValueError(f"anonymize.params.reference: cannot read the reference table {path} ({exc}); write one "
                         f"with bench/ppas_reference.py") from None
    if table.get("format") != REFERENCE_FORMAT:
        raise ValueError(f"anonymize.params.reference: {path} is not a {REFERENCE_FORMAT} table")
    out = {}
    for name, spec in specs.items():
        entry = table.get("attributes", {}).get(name)
        if entry is None:
            raise ValueError(f"anonymize.params.reference: {path} has no reference for {name!r}")
        counts = np.asarray(entry["counts"], np.float64)
        if tuple(entry["values"]) != spec.values:
            est = estimators.get(name)
            if name == "age" and "age_years" in table and hasattr(est, "band"):
                counts = np.zeros(spec.k)
                for year, c in enumerate(table["age_years"]):
                    counts[est.band(float(year))] += c
            else:
                raise ValueError(f"anonymize.params.reference: {path} gives {name!r} the values {entry['values']}, "
                                 f"the plug-in {list(spec.values)}; compute a table for these values with "
                                 f"bench/ppas_reference.py and name it in reference")
        out[name] = Reference(spec, tuple(counts / counts.sum()), source=str(table.get("source", path)))
    return out


def _pose_shape(points: np.ndarray, idx: list[int]) -> np.ndarray:
    p = np.asarray(points, np.float64)[..., idx, :2]
    z = p[..., 0] + 1j * p[..., 1]
    z = z - z.mean(axis=-1, keepdims=True)
    return z / np.linalg.norm(z, axis=-1, keepdims=True)


_SETS: dict[str, Any] = {}
_SETS_LOCK = threading.Lock()


class AttributeMethod(StrangerMethod):
    name = "attribute"
    params_class = AttributeMethodParams
    dp_scope = "attributes"
    wants_subject_keys = False

    def __init__(self, params: AttributeMethodParams | dict | None = None, latent: Any = None, mesher: Any = None):
        p = self._setup(params, latent, mesher)
        from deid.anonymize.directions import Labeller
        from deid.anonymize.strangers import POSE_POINTS
        from deid.attributes.registry import make_estimator

        self.model = self.generator.model
        self.estimators = {n: make_estimator(n, prm) for n, prm in p.estimators.items()}
        owner = {s.name: (n, s) for n, e in self.estimators.items() for s in e.specs}
        missing = [a for a in p.attributes if a not in owner]
        if missing:
            raise ValueError(f"anonymize.params.attributes: no plug-in of estimators ({', '.join(p.estimators)}) "
                             f"estimates {', '.join(missing)}; see `deid plugins --kind attribute`")
        self.specs = {a: owner[a][1] for a in p.attributes}
        self.used = {owner[a][0]: self.estimators[owner[a][0]] for a in p.attributes}  # the plug-ins that run
        self.reference = load_references(self.specs, {a: self.used[owner[a][0]] for a in p.attributes}, p.reference)
        self.ppas_params = p.ppas()
        #: each face's releases, known before any draw: one k-ary randomized response per attribute
        self.release = tuple(rr_release(pol.epsilon, self.specs[a].k) for a, pol in p.attributes.items())
        self.adopted_extra = (attribute_facts_of(self.ppas_params, self.specs),)
        self.labeller = Labeller(self.mesher, self.used.values())
        self.set = self._directions()
        self._use_bank(self.set.bank)
        idx = [i for i in POSE_POINTS if "mouth" not in p.attributes or i not in LIP_POINTS]
        self._pose_idx = idx
        self._shapes = _pose_shape(self.bank.points, idx)
        self._labels = np.stack([self.bank.labels[:, self.bank.attributes.index(a)] for a in p.attributes], 1)
        self.uap = None
        if p.perturbation is not None:
            from deid.anonymize.uap import UAP

            self.uap = UAP.load(p.perturbation)
        #: in-process measurement only (bench, tests): when a list, each face appends its released
        #: values and the plug-ins' labels on its stranger. Never reaches the facts or the audit.
        self.trace: list | None = None

    # ------------------------------------------------------------------ the set and directions
    def _directions(self):
        from deid.anonymize.directions import Directions, cache_dir, directions_key, generate_bank, learn

        p = self.params
        mesh_fp = self.mesh_fingerprint()
        plugins = {n: self.used[n].__class__.__name__ + json.dumps(p.estimators[n], sort_keys=True) for n in self.used}
        attrs = tuple(sorted(s.name for e in self.used.values() for s in e.specs))
        key = directions_key(self.model.fingerprint, mesh_fp, {**plugins, "attrs": list(attrs)}, p.bank_size,
                             p.bank_crop, p.truncation)
        path = cache_dir(p.bank_dir) / f"directions-{key}.npz"
        with _SETS_LOCK:
            if key in _SETS:
                return _SETS[key]
            found = None
            if path.is_file():
                try:
                    found = Directions.load(path)
                except (OSError, ValueError, KeyError) as exc:
                    log.warning("%s: unreadable directions (%s); learning them again", path, exc)
            if found is None or len(found.bank) != p.bank_size:
                from tqdm import tqdm

                rng = np.random.default_rng()  # OS entropy: strangers from random latents only
                with tqdm(total=p.bank_size, desc="attribute directions", unit="face", leave=False) as bar:
                    bank = generate_bank(self.model, self.labeller, attrs, p.bank_size, p.bank_crop, p.truncation,
                                         rng, progress=bar.update)
                meta = {"generator_fingerprint": self.model.fingerprint, "generator": getattr(self.model, "name", ""),
                        "mesh_sha256": mesh_fp, "plugins": {n: p.estimators[n] for n in self.used},
                        "truncation": p.truncation, "crop": p.bank_crop, "classifier":
                        "sklearn LogisticRegression(C=0.05) on standardised w; 75/25 stratified held-out split"}
                found = learn(bank, {}, meta)
            missing = {a: s for a, s in self.specs.items() if a not in found.directions}
            if missing:  # directions are learned for the attributes released, and kept with the set
                found.directions.update(learn(found.bank, missing).directions)
                found.save(path)
                log.warning("learned the directions of %s from %d generated faces: %s (card: %s)",
                            ", ".join(missing), len(found.bank), path, path.with_suffix(".json"))
            _SETS[key] = found
            return found

    # ------------------------------------------------------------------ one face
    def choose(self, points: np.ndarray, targets: np.ndarray, rng: np.random.Generator) -> int:
        """Among the ``candidates`` nearest in pose, one of those matching most target values (or
        among the 4 x ``candidates`` nearest, when they hold a better match)."""
        from deid.anonymize.strangers import pose_distance

        d = pose_distance(self._shapes, _pose_shape(points, self._pose_idx))
        order = np.argsort(d, kind="stable")
        k = max(1, min(self.params.candidates, len(d)))
        if not self.params.keep_forehead:  # as synthetic-swap: no fringe or cap over the forehead
            from deid.anonymize.strangers import allowed_strangers

            clear = allowed_strangers(self.bank, self.params.min_forehead, at_least=4 * k)
            if clear is not None:
                order = order[np.isin(order, clear)]
        near = order[:k]
        score = (self._labels[near] == targets[None]).sum(1)
        if score.max() < len(targets):  # none matches every target: look 4x as far in pose first
            wide = order[:4 * k]
            wscore = (self._labels[wide] == targets[None]).sum(1)
            if wscore.max() > score.max():
                near, score = wide, wscore
        best = near[score == score.max()]
        return int(best[int(rng.integers(len(best)))])

    def estimate(self, rgb: np.ndarray, faces: list[Face]) -> list[dict]:
        out = [{} for _ in faces]
        for est in self.used.values():
            for i, e in enumerate(est.estimate(rgb, faces)):
                out[i].update({k: v for k, v in e.items() if k in self.specs})
        return out

    def __call__(self, rgb: np.ndarray, faces: list[Face], rng: np.random.Generator | None = None
                 ) -> tuple[np.ndarray, list[FaceFacts]]:
        from deid.anonymize.directions import edit_toward
        from deid.anonymize.strangers import crop_face
        from deid.anonymize.swap_ops import composite, swap_face

        rng = rng if rng is not None else np.random.default_rng()
        p = self.params
        out = np.array(rgb, copy=True)
        facts = []
        estimates = self.estimate(rgb, faces) if faces else []
        names = list(p.attributes)
        for i, face in enumerate(faces):
            seed = None if p.test_seed is None else int.from_bytes(hashlib.sha256(
                f"{p.test_seed}|{i}|{face.box}".encode()).digest()[:8], "big")
            released, sel = select(estimates[i], self.reference, self.ppas_params, test_seed=seed)
            targets = np.array([self.specs[a].index(released[a]) for a in names])
            extra = dict([attribute_facts(sel)])
            pts = self.mesh_of(rgb, face)
            res = None
            if pts is not None:
                j = self.choose(pts, targets, rng)

                def swapped(crop, cpts):
                    return swap_face(rgb, pts, crop, cpts, self.tris, keep_forehead=p.keep_forehead,
                                     feather=p.feather, poisson=p.blend == "poisson", colour=p.colour_match,
                                     shape=p.shape, grow=p.grow, key_points=p.key_points)

                def in_photo(res):  # the plug-ins on the face as it would be released
                    trial = np.array(out, copy=True)
                    composite(trial, res)
                    return {a: int(e.value) for a, e in self.estimate(trial, [face])[0].items()}

                def labeller(image):  # edit_toward's check: the decoded stranger's mesh, and the photo's reading
                    got = self.labeller(image)
                    if got is None or p.edit_check == "stranger":
                        return got
                    return got[0], in_photo(swapped(*crop_face(image, got[0], p.bank_crop)))

                crop, cpts = self.bank.crops[j], self.bank.points[j]
                res = swapped(crop, cpts)
                labels = ({a: int(self.bank.label(j, a)) for a in names} if p.edit_check == "stranger"
                          else in_photo(res))
                edit = edit_toward(self.model, labeller, self.bank.ws[j], labels, dict(zip(names, targets)),
                                   self.set.directions, max_steps=p.edit_steps, margin=p.edit_margin,
                                   step=p.edit_step) if p.edit_steps else None
                if edit is not None and edit.image is not None and edit.mesh is not None:
                    crop, cpts = crop_face(edit.image, edit.mesh, p.bank_crop)
                    res = swapped(crop, cpts)
                agreed = edit.agreed if edit is not None else all(labels.get(a) == t for a, t in zip(names, targets))
                got = edit.labels if edit is not None else labels
                extra.update(edit_decodes=0 if edit is None else edit.decodes, agreed=bool(agreed))
                if self.trace is not None:
                    self.trace.append({"released": dict(released), "checked": {
                        a: self.specs[a].values[v] if v >= 0 else None for a, v in got.items() if a in self.specs},
                        "decodes": extra["edit_decodes"]})
            if res is None:  # no mesh: the face is masked, never left as it was
                out = self.mask_face(out, face, rng)
                extra.update(swapped=False, masked=True)
            else:
                composite(out, res)
                extra.update(swapped=True)
                if self.uap is not None:  # stage IV, inside the swapped region only
                    from deid.faces.facemesh_backend import mesh_arcface5

                    window, _, alpha = res
                    self.uap.apply(out, mesh_arcface5(pts), alpha, window=window, inplace=True)
                    extra.update(perturbed=True)
            facts.append(FaceFacts(method=self.name, scope=self.dp_scope, releases=sel.releases,
                                   test_mode=sel.test_mode, extra=extra))
        return out, facts


def attribute_facts_of(params: PpasParams, specs: dict) -> tuple[str, list[dict]]:
    """The ``attributes`` fact of a face released with ``params`` (names, k, epsilon, mechanism)."""
    return ("attributes", [{"name": a, "categories": specs[a].k, "epsilon": float(pol.epsilon),
                            "mechanism": "kary_rr"} for a, pol in params.attributes.items()])


def _files(p: AttributeMethodParams):
    from deid.attributes.registry import ATTRIBUTES
    from deid.faces.facemesh_backend import FaceMeshParams, _files as mesh_files

    out = {f.name: f for f in mesh_files(FaceMeshParams())}
    for n, prm in p.estimators.items():
        out.update({f.name: f for f in ATTRIBUTES.get(n).files(prm)})
    if p.perturbation is not None:
        from deid.anonymize.uap import resolve

        out["perturbation"] = ModelFile("perturbation", resolve(p.perturbation))
    return list(out.values())


METHODS.register(Plugin(
    kind="method", name="attribute", params=AttributeMethodParams,
    summary="AnonymousNet: the face's attributes estimated, released by PPAS (t-closeness, k-ary randomized "
            "response per attribute, charged to the ledger), a synthetic stranger edited along learned w "
            "directions to show them, swapped in as synthetic-swap does; DP for the attributes, not the image",
    factory=lambda p, latent=None: AttributeMethod(p, latent=latent),
    licence=Licence(code="Apache-2.0 (deid)", weights="the attribute plug-ins' (deid plugins --kind attribute), the "
                    "face mesh's (Apache-2.0) and the run's generator's (latent.backend)"),
    needs=Needs(latent="generator", dp=True),
    model_files=_files,
    module=__name__,
))

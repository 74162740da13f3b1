"""Directed synthesis (AnonymousNet stage 3): attribute directions in a generator's w space.

InterFaceGAN-style (Shen et al. 2020): generated faces, labelled by the attribute plug-ins
(:mod:`deid.attributes`), are separated per attribute by a linear classifier on their w
(scikit-learn's logistic regression on standardised w); the classifier's unit normal, mapped
back to w, is the attribute's direction. Moving a stranger's w along it changes the attribute
of the face it decodes to.

Contract:

* **The set** (:class:`AttributeBank`): ``n`` strangers drawn from the generator with random
  latents (OS entropy; truncation ``psi``), each kept when MediaPipe's face mesh finds exactly
  one face on it (the rule of :mod:`deid.anonymize.strangers`), with its w, its ``crop`` px face
  crop and 468-point mesh, and its labels: the value index of every attribute the plug-ins
  estimate on it (``-1``: not estimated). Nothing of any record goes in: it is public by
  construction. It is both the training set of the directions and the stranger bank of the
  ``attribute`` method.
* **A direction** (:class:`Direction`) per attribute: binary attributes separate value 0 from
  value 1; ordered attributes with more values separate ``index < split`` from ``>= split``
  (the split that balances the set best). The normal points towards the higher index; the
  boundary is ``normal . w + offset = 0``; ``score_std`` is the spread of ``normal . w`` over
  the set (the unit of an edit step); ``accuracy`` is the held-out accuracy of a classifier
  fitted on 75% of the set (stratified, fixed split: a fit, not a privacy mechanism) and tested
  on the other 25%; the stored direction is then refitted on the whole set. Unordered attributes
  with more than two values are refused (no single direction).
* **The card** (:meth:`Directions.card`): generator fingerprint, the plug-ins and their params,
  n, truncation, per attribute the split, class counts, held-out accuracy and n train/test.
* **Storage**: one ``.npz`` (the set and the directions; format :data:`FORMAT`) and its card
  as ``.json`` beside it, written whole (temporary name, then rename) under
  ``<cache root>/directions`` (:func:`deid.latent.generator.cache_root`) or a given folder,
  named by a key of everything that changes them (:func:`directions_key`).
* **An edit** (:func:`edit_toward`): move w along the released attributes' directions (each
  made orthogonal to the other edited attributes' directions, InterFaceGAN's conditional
  edit) until the plug-ins, run on the decoded face, give every target value, or
  ``max_steps`` decodes have been tried; the first move jumps to ``margin`` score-stds past
  the boundary, later ones go ``step`` score-stds further each. It returns the last decode
  and whether the plug-ins agreed.
"""

from __future__ import annotations

import hashlib
import json
import logging
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, Callable, Iterable, Mapping

import numpy as np

log = logging.getLogger(__name__)

FORMAT = 1
#: faces below this many per class cannot give a direction
MIN_PER_CLASS = 5
#: the generated image is scaled to this size before the face mesh and the plug-ins run on it
LABEL_SIDE = 512


@dataclass(frozen=True)
class Direction:
    attribute: str
    values: tuple[str, ...]
    ordered: bool
    normal: np.ndarray          # float64 [w_dim], unit, towards the higher value index
    offset: float               # the boundary: normal . w + offset = 0
    split: int                  # the classifier separates index < split from index >= split
    score_std: float            # std of normal . w over the set
    accuracy: float             # held-out accuracy of the w-classifier
    n_train: int
    n_test: int
    counts: tuple[int, ...]     # faces of the set per value

    def score(self, w: np.ndarray) -> np.ndarray:
        """Signed distance to the boundary, in score-stds (positive: the side of index >= split)."""
        return (np.asarray(w, np.float64) @ self.normal + self.offset) / self.score_std


@dataclass
class AttributeBank:
    """The generated set: w, face crops, meshes and the plug-ins' labels (module contract)."""

    ws: np.ndarray              # float32 [n, w_dim]
    crops: np.ndarray           # uint8 [n, S, S, 3]
    points: np.ndarray          # float32 [n, 468, 2], crop pixels
    labels: np.ndarray          # int16 [n, a]: value index per attribute, -1 not estimated
    attributes: tuple[str, ...]

    def __len__(self) -> int:
        return len(self.ws)

    def label(self, i: int, name: str) -> int:
        return int(self.labels[i, self.attributes.index(name)])


@dataclass
class Directions:
    bank: AttributeBank
    directions: dict[str, Direction]
    meta: dict[str, Any] = field(default_factory=dict)

    def card(self) -> dict[str, Any]:
        """The model card (JSON): what the directions were learned from and how well w separates."""
        return {
            **self.meta,
            "format": FORMAT,
            "n_samples": len(self.bank),
            "attributes": {
                n: {"values": list(d.values), "ordered": d.ordered, "split": d.split,
                    "separates": f"{'/'.join(d.values[:d.split])} vs {'/'.join(d.values[d.split:])}",
                    "counts": list(d.counts), "heldout_accuracy": round(d.accuracy, 4), "n_train": d.n_train,
                    "n_test": d.n_test, "score_std": round(d.score_std, 6)}
                for n, d in self.directions.items()},
        }

    # -- storage
    def save(self, path: Path) -> None:
        from fsspec.implementations.local import LocalFileSystem

        from deid.io.npz import save_npz
        from deid.io.write import atomic_write

        names = list(self.directions)
        d = [self.directions[n] for n in names]
        save_npz(path, {"ws": self.bank.ws, "crops": self.bank.crops, "points": self.bank.points,
                        "labels": self.bank.labels, "attributes": np.array(self.bank.attributes),
                        "names": np.array(names), "normals": np.stack([x.normal for x in d]),
                        "scalars": np.array([[x.offset, x.split, x.score_std, x.accuracy, x.n_train, x.n_test]
                                             for x in d])},
                 {"meta": self.meta, "specs": {x.attribute: {"values": list(x.values), "ordered": x.ordered,
                                                             "counts": list(x.counts)} for x in d}},
                 version=FORMAT)
        card = path.with_suffix(".json")
        text = json.dumps(self.card(), indent=1, sort_keys=True) + "\n"
        atomic_write(LocalFileSystem(), str(card), text.encode())

    @classmethod
    def load(cls, path: Path) -> "Directions":
        from deid.io.npz import load_npz

        z, extra = load_npz(path, "directions", FORMAT, required=_KEYS)
        bank = AttributeBank(ws=z["ws"].astype(np.float32), crops=np.ascontiguousarray(z["crops"]),
                             points=z["points"].astype(np.float32), labels=z["labels"].astype(np.int16),
                             attributes=tuple(str(a) for a in z["attributes"]))
        dirs = {}
        for n, normal, s in zip(z["names"], z["normals"], z["scalars"]):
            n = str(n)
            spec = extra["specs"][n]
            dirs[n] = Direction(n, tuple(spec["values"]), bool(spec["ordered"]), normal.astype(np.float64),
                                float(s[0]), int(s[1]), float(s[2]), float(s[3]), int(s[4]), int(s[5]),
                                tuple(int(c) for c in spec["counts"]))
        return cls(bank, dirs, extra["meta"])


#: the arrays of a directions file (beside ``format`` and the ``meta`` card)
_KEYS = ("ws", "crops", "points", "labels", "attributes", "names", "normals", "scalars")


def directions_key(generator_fingerprint: str, mesh_fingerprint: str, plugins: Mapping[str, dict], n: int,
                   crop: int, psi: float) -> str:
    blob = json.dumps({"f": FORMAT, "g": generator_fingerprint, "m": mesh_fingerprint, "p": plugins, "n": n,
                       "c": crop, "psi": psi}, sort_keys=True)
    return hashlib.sha256(blob.encode()).hexdigest()[:20]


def cache_dir(explicit: str | None = None) -> Path:
    """``explicit``, else ``directions/`` under deid's cache folder."""
    from deid.latent.generator import cache_root

    return Path(explicit).expanduser() if explicit else cache_root() / "directions"


# ---------------------------------------------------------------------------- labelling
class Labeller:
    """The face mesh and the attribute plug-ins on a generated image: ``(mesh in image pixels,
    {attribute: value index})``, or None when the face mesh does not find exactly one face."""

    def __init__(self, mesher, estimators: Iterable[Any]):
        self.mesher = mesher
        self.estimators = list(estimators)

    def __call__(self, image: np.ndarray) -> tuple[np.ndarray, dict[str, int]] | None:
        import cv2

        h, w = image.shape[:2]
        f = min(1.0, LABEL_SIDE / max(h, w))
        small = cv2.resize(image, (round(w * f), round(h * f)), interpolation=cv2.INTER_AREA) if f < 1 else image
        faces = self.mesher.detect(small)
        if len(faces) != 1 or faces[0].mesh is None:
            return None
        labels: dict[str, int] = {}
        for est in self.estimators:
            for name, e in (est.estimate(small, faces)[0] or {}).items():
                labels[name] = e.value
        return np.asarray(faces[0].mesh, np.float64)[:, :2] / f, labels


def generate_bank(model, labeller: Labeller, attributes: tuple[str, ...], n: int, crop: int, psi: float,
                  rng: np.random.Generator, progress: Callable[[int], None] | None = None) -> AttributeBank:
    """``n`` labelled strangers (module contract); gives up after 3n draws."""
    from deid.anonymize.strangers import crop_face

    ws, crops, points, labels, tried = [], [], [], [], 0
    while len(ws) < n and tried < 3 * n:
        w = model.sample_w(1, rng, psi)
        tried += 1
        image = model.decode(w)[0]
        got = labeller(image)
        if got is None:
            continue
        mesh, lab = got
        c, pts = crop_face(image, mesh, crop)
        ws.append(w[0].astype(np.float32))
        crops.append(c)
        points.append(pts)
        labels.append([lab.get(a, -1) for a in attributes])
        if progress:
            progress(1)
    if len(ws) < n:
        raise RuntimeError(f"directed synthesis: the face mesh found one face on only {len(ws)} of {tried} "
                           f"generated images (wanted {n})")
    return AttributeBank(np.stack(ws), np.stack(crops), np.stack(points), np.asarray(labels, np.int16), attributes)


# ---------------------------------------------------------------------------- fitting
def _split(counts: np.ndarray, ordered: bool) -> int:
    if len(counts) == 2:
        return 1
    if not ordered:
        raise ValueError("an unordered attribute with more than two values has no single direction")
    below = np.cumsum(counts)[:-1]
    return int(np.argmax(np.minimum(below, counts.sum() - below))) + 1


def _fit(x: np.ndarray, y: np.ndarray, c: float):
    from sklearn.linear_model import LogisticRegression

    mu, sd = x.mean(0), np.maximum(x.std(0), 1e-9)
    clf = LogisticRegression(C=c, max_iter=5000).fit((x - mu) / sd, y)
    coef = clf.coef_[0] / sd
    b = float(clf.intercept_[0] - coef @ mu)
    norm = float(np.linalg.norm(coef))
    return coef / norm, b / norm


def fit_direction(name: str, values: tuple[str, ...], ordered: bool, ws: np.ndarray, labels: np.ndarray,
                  c: float = 0.05, seed: int = 0) -> Direction:
    """The direction of one attribute from the set's w and labels (``-1`` rows left out)."""
    from sklearn.model_selection import train_test_split

    keep = labels >= 0
    x, lab = np.asarray(ws, np.float64)[keep], labels[keep].astype(int)
    counts = np.bincount(lab, minlength=len(values))
    split = _split(counts, ordered)
    y = (lab >= split).astype(int)
    if min(int(y.sum()), int(len(y) - y.sum())) < MIN_PER_CLASS:
        raise ValueError(f"attribute {name!r}: the generated set has {int(len(y) - y.sum())} faces of "
                         f"{'/'.join(values[:split])} and {int(y.sum())} of {'/'.join(values[split:])}; "
                         f"at least {MIN_PER_CLASS} of each are needed for a direction (a larger set: raise bank_size)")
    xtr, xte, ytr, yte = train_test_split(x, y, test_size=0.25, random_state=seed, stratify=y)
    n_tr, b_tr = _fit(xtr, ytr, c)
    acc = float(np.mean(((xte @ n_tr + b_tr) > 0).astype(int) == yte))
    normal, offset = _fit(x, y, c)
    return Direction(name, tuple(values), bool(ordered), normal, offset, split,
                     float(np.std(x @ normal)), acc, len(ytr), len(yte), tuple(int(v) for v in counts))


def learn(bank: AttributeBank, specs: Mapping[str, Any], meta: Mapping[str, Any] | None = None) -> Directions:
    """Directions for the ``specs`` (attribute -> :class:`deid.attributes.base.AttributeSpec`) from a set."""
    dirs = {n: fit_direction(n, s.values, s.ordered, bank.ws, bank.labels[:, bank.attributes.index(n)])
            for n, s in specs.items()}
    return Directions(bank, dirs, dict(meta or {}))


# ---------------------------------------------------------------------------- editing
@dataclass
class Edit:
    w: np.ndarray               # the edited w [w_dim]
    image: np.ndarray | None    # its decode (None: no decode was needed)
    mesh: np.ndarray | None     # the face mesh on it, image pixels
    labels: dict[str, int]      # what the plug-ins gave on it
    agreed: bool                # every target value given
    decodes: int


def conditional(directions: Mapping[str, Direction], names: list[str]) -> dict[str, np.ndarray]:
    """Each named direction with the other named ones projected out (InterFaceGAN's
    conditional edit: moving one attribute leaves the others' classifier scores unchanged)."""
    out = {}
    for n in names:
        others = [directions[m].normal for m in names if m != n]
        v = directions[n].normal.copy()
        if others:
            q, _ = np.linalg.qr(np.stack(others, axis=1))
            v = v - q @ (q.T @ v)
        out[n] = v / max(float(np.linalg.norm(v)), 1e-12)
    return out


def edit_toward(model, labeller: Labeller, w: np.ndarray, labels: Mapping[str, int], targets: Mapping[str, int],
                directions: Mapping[str, Direction], *, max_steps: int = 4, margin: float = 1.0,
                step: float = 0.5) -> Edit:
    """Move ``w`` (its current ``labels``) until the plug-ins give ``targets`` (module contract)."""
    w = np.asarray(w, np.float64).copy()
    todo = [n for n, v in targets.items() if labels.get(n, -1) != v]
    if not todo:
        return Edit(w, None, None, dict(labels), True, 0)
    moves = conditional(directions, [n for n in targets if n in directions])
    image = mesh = None
    current = dict(labels)
    for k in range(max_steps):
        for n in todo:
            d = directions[n]
            want, have = int(targets[n]), current.get(n, -1)
            high = want >= d.split                       # the target is on the boundary's positive side
            sign = (1.0 if want > have else -1.0) if have >= 0 else (1.0 if high else -1.0)
            s = float(d.score(w))
            gain = max(float(moves[n] @ d.normal), 1e-3)  # score per unit along the conditional direction
            if (s > 0) != high:  # on the wrong side: jump to `margin` score-stds past the boundary
                w = w + ((margin if high else -margin) - s) / gain * d.score_std * moves[n]
            else:                # on the right side but not there yet: one more step
                w = w + sign * step / gain * d.score_std * moves[n]
        image = model.decode(w[None].astype(np.float32))[0]
        got = labeller(image)
        if got is None:  # the face mesh lost the face: undo nothing, try the next step
            mesh, current = None, {}
            continue
        mesh, current = got
        todo = [n for n, v in targets.items() if current.get(n, -1) != v]
        if not todo:
            return Edit(w, image, mesh, current, True, k + 1)
    return Edit(w, image, mesh, current, False, max_steps)

"""Re-identification attacks (DeepBlur's threat models) on identity embeddings.

Every attack is closed-set identification of *subjects*: a probe face is ranked against the
subjects of a labelled gallery by its distance to their nearest gallery face, and the attack
succeeds at top-k if the probe's own subject is among the k nearest. A photo is never
matched against itself or its own other version (``exclude``): the attacker must recognise
the person from *other* photos. Probes whose subject has no other photo in the gallery
are not counted (``n_probes`` says how many were). Chance level is reported beside each
rate: ``mean over probes of k / n_gallery_subjects``. Ties are broken at random, in
expectation: a probe whose own subject ties with t others at rank r counts as
``clip((k - r) / (t + 1), 0, 1)`` of a hit at top-k (identical embeddings, e.g. of faces
masked out entirely, score chance, not 100%).

* T1: gallery = original photos, probe = anonymized photos (the attacker holds other,
  clear photos of the people and looks up the release);
* T2: gallery = anonymized photos with their labels, probe = original photos;
* T3: gallery = anonymized photos with labels, probe = other anonymized photos (the
  attacker learns to recognise people *as anonymized*);
* same-source: gallery = every original, the probe's own source photo included (NullFace,
  FAMS): can the release be traced back to the photo it came from?
* T1-classifier: logistic regression trained on embeddings of original photos, evaluated
  on anonymized photos of other sources (k-fold over photos);
* aware: the anonymization-aware attacker (Hanisch et al. 2023): maps fitted on a PUBLIC set
  anonymized with the same method and params (:mod:`deid.evaluate.aware`) carry each
  anonymized embedding back toward its original; then T1 and same-source through each map;
* reversal: blur deconvolved and pixelation upsampled with the operator the audit's params
  state (:mod:`deid.evaluate.reversal`), then T1 and same-source; ``gain_top1`` over T1.

Each is a plug-in of kind ``attack`` (:mod:`deid.evaluate.registry`, where the callable's
contract is): ``attack(orig, anon, subjects, sources) -> dict``. The no-anonymization
:func:`reference` is not one: it is the baseline every attack is read against, T1 with the
originals as the probes.
"""

from __future__ import annotations

import numpy as np
from pydantic import BaseModel, ConfigDict, Field

from deid.evaluate.recognizers import distances
from deid.evaluate.registry import ATTACKS, NoParams
from deid.plugins import Licence, Plugin


def identify(gallery: np.ndarray, gallery_subjects: np.ndarray, probes: np.ndarray, probe_subjects: np.ndarray,
             exclude: np.ndarray | None = None, ks: tuple[int, ...] = (1, 5)) -> dict:
    """Nearest-neighbour identification; ``exclude[p, g]`` forbids matching probe p to gallery g.

    Returns ``{top1, top5, n_probes, n_gallery_subjects, chance_top1, chance_top5, hits_top1}``;
    ``hits_top1`` is a boolean array over all probes (False where not counted), for per-subject
    counts; it is not written anywhere.
    """
    gallery_subjects = np.asarray(gallery_subjects)
    probe_subjects = np.asarray(probe_subjects)
    d = distances(probes, gallery) if len(probes) and len(gallery) else np.zeros((len(probes), len(gallery)))
    if exclude is not None:
        d = np.where(exclude, np.inf, d)
    subjects = np.unique(gallery_subjects)
    s = np.full((len(probes), len(subjects)), np.inf)
    for j, sub in enumerate(subjects):
        cols = gallery_subjects == sub
        if cols.any():
            s[:, j] = d[:, cols].min(axis=1)
    avail = np.isfinite(s)
    n_avail = avail.sum(axis=1)
    own = np.searchsorted(subjects, probe_subjects)
    own = np.clip(own, 0, max(len(subjects) - 1, 0))
    counted = np.zeros(len(probes), bool)
    less = np.zeros(len(probes))
    ties = np.zeros(len(probes))
    for p in range(len(probes)):
        if len(subjects) == 0 or subjects[own[p]] != probe_subjects[p] or not avail[p, own[p]] or n_avail[p] < 2:
            continue
        counted[p] = True
        row, mine = s[p][avail[p]], s[p, own[p]]
        less[p] = (row < mine).sum()
        ties[p] = (row == mine).sum() - 1
    out: dict = {"n_probes": int(counted.sum()),
                 "n_gallery_subjects": int(len(subjects))}
    for k in ks:
        if counted.any():
            out[f"top{k}"] = float(_hit(less[counted], ties[counted], k).mean())
            out[f"chance_top{k}"] = float(np.mean(np.minimum(k, n_avail[counted]) / n_avail[counted]))
        else:
            out[f"top{k}"] = None
            out[f"chance_top{k}"] = None
    out["hits_top1"] = counted & (_hit(less, ties, 1) > 0.5)
    return out


def _hit(less: np.ndarray, ties: np.ndarray, k: int) -> np.ndarray:
    """Expected hit at top-k when the true subject has ``less`` better and ``ties`` equal rivals."""
    return np.clip((k - less) / (ties + 1), 0.0, 1.0)


def t1(orig: np.ndarray, anon: np.ndarray, subjects: np.ndarray, sources: np.ndarray) -> dict:
    """Gallery: the originals; probes: the anonymized photos of the other sources."""
    return identify(orig, subjects, anon, subjects, exclude=_same_source(sources))


def same_source(orig: np.ndarray, anon: np.ndarray, subjects: np.ndarray, sources: np.ndarray) -> dict:
    """Gallery: every original, the probe's own source photo included; probes: the anonymized photos."""
    return identify(orig, subjects, anon, subjects)


def t2(orig: np.ndarray, anon: np.ndarray, subjects: np.ndarray, sources: np.ndarray) -> dict:
    """Gallery: the anonymized photos with labels; probes: the originals."""
    return identify(anon, subjects, orig, subjects, exclude=_same_source(sources))


def t3(orig: np.ndarray, anon: np.ndarray, subjects: np.ndarray, sources: np.ndarray) -> dict:
    """Gallery: the anonymized photos with labels; probes: the other anonymized photos."""
    return identify(anon, subjects, anon, subjects, exclude=_same_source(sources))


def reference(orig: np.ndarray, subjects: np.ndarray, sources: np.ndarray) -> dict:
    """No anonymization: originals against the other originals (the recognizer's own rate)."""
    return t1(orig, orig, subjects, sources)


def _same_source(sources: np.ndarray) -> np.ndarray:
    sources = np.asarray(sources)
    return sources[:, None] == sources[None, :]


def classifier_t1(orig: np.ndarray, anon: np.ndarray, subjects: np.ndarray, folds: int = 5, seed: int = 0) -> dict:
    """Logistic regression on original embeddings, tested on anonymized photos of held-out sources."""
    from sklearn.linear_model import LogisticRegression
    from sklearn.model_selection import KFold
    from sklearn.pipeline import make_pipeline
    from sklearn.preprocessing import StandardScaler

    subjects = np.asarray(subjects)
    n = len(subjects)
    top1, top5, n_classes = [], [], []
    if n >= folds and len(np.unique(subjects)) >= 2:
        for tr, te in KFold(n_splits=folds, shuffle=True, random_state=seed).split(orig):
            classes = np.unique(subjects[tr])
            if len(classes) < 2:
                continue
            clf = make_pipeline(StandardScaler(), LogisticRegression(max_iter=2000))
            clf.fit(orig[tr], subjects[tr])
            keep = np.isin(subjects[te], classes)  # a subject with no training photo cannot be named
            if not keep.any():
                continue
            proba = clf.predict_proba(anon[te][keep])
            truth = np.searchsorted(clf.classes_, subjects[te][keep])
            mine = proba[np.arange(len(truth)), truth][:, None]
            less, ties = (proba > mine).sum(axis=1), (proba == mine).sum(axis=1) - 1
            top1.extend(_hit(less, ties, 1))
            top5.extend(_hit(less, ties, 5))
            n_classes.extend([len(classes)] * int(keep.sum()))
    if not top1:
        return {"top1": None, "top5": None, "n_probes": 0, "chance_top1": None, "chance_top5": None, "folds": folds}
    nc = np.array(n_classes, dtype=float)
    return {"top1": float(np.mean(top1)), "top5": float(np.mean(top5)), "n_probes": len(top1),
            "chance_top1": float(np.mean(1 / nc)), "chance_top5": float(np.mean(np.minimum(5, nc) / nc)),
            "folds": folds, "model": "StandardScaler + LogisticRegression (scikit-learn)"}


def _pair(orig, mapped, subjects, sources) -> dict:
    out = {"T1": t1(orig, mapped, subjects, sources), "same_source": same_source(orig, mapped, subjects, sources)}
    for r in out.values():
        r.pop("hits_top1", None)
    return out


def _best(variants: dict, extra: dict) -> dict:
    """The headline of a multi-variant attack: its strongest variant's T1 (the attacker picks)."""
    scored = {k: v for k, v in variants.items() if v["T1"]["top1"] is not None}
    if not scored:
        return {"top1": None, "top5": None, "n_probes": 0, "chance_top1": None, "chance_top5": None,
                "best": None, "same_source_top1": None, **extra}
    best = max(scored, key=lambda k: (scored[k]["T1"]["top1"], scored[k]["same_source"]["top1"] or 0.0))
    t = scored[best]["T1"]
    return {"top1": t["top1"], "top5": t["top5"], "n_probes": t["n_probes"], "chance_top1": t["chance_top1"],
            "chance_top5": t["chance_top5"], "best": best,
            "same_source_top1": max(v["same_source"]["top1"] for v in scored.values()), **extra}


def not_applicable(why: str) -> dict:
    return {"top1": None, "top5": None, "n_probes": 0, "chance_top1": None, "chance_top5": None, "applicable": False,
            "why": why}


def aware(orig: np.ndarray, anon: np.ndarray, subjects: np.ndarray, sources: np.ndarray, context=None) -> dict:
    """Identify through maps fitted on a public set anonymized the same way (``context.aware()``)."""
    from deid.evaluate.aware import Unavailable

    if context is not None and context.skipped:
        return not_applicable(context.skipped)
    if context is None or context.aware is None:
        return not_applicable("no evaluation context (the aware attacker needs the public reference set)")
    try:
        maps, report = context.aware()
    except Unavailable as exc:
        return not_applicable(str(exc))
    variants = {name: _pair(orig, m.apply(anon), subjects, sources) for name, m in maps.items()}
    return _best(variants, {"applicable": True, "maps": variants, "fit": report})


def reversal(orig: np.ndarray, anon: np.ndarray, subjects: np.ndarray, sources: np.ndarray, context=None) -> dict:
    """Identify the released faces after undoing the stated blur or pixelation (``context.reversed``)."""
    if context is not None and context.skipped:
        return not_applicable(context.skipped)
    rev = getattr(context, "reversed", None) or {}
    if not rev:
        method = getattr(context, "method", None)
        return not_applicable(f"no reversal for method {method}" if method else "no reversed outputs")
    variants = {name: _pair(orig, e, subjects, sources) for name, e in rev.items()}
    naive = t1(orig, anon, subjects, sources)["top1"]
    out = _best(variants, {"applicable": True, "variants": variants, "naive_top1": naive})
    out["gain_top1"] = None if out["top1"] is None or naive is None else out["top1"] - naive
    return out


# ---------------------------------------------------------------------------- plug-ins
class ClassifierParams(BaseModel):
    model_config = ConfigDict(extra="forbid")

    folds: int = Field(5, ge=2, le=100, description="k of the k-fold split over photos")
    seed: int = Field(0, description="seed of the k-fold shuffle")


_CODE = Licence(code="Apache-2.0 (deid)")
for _name, _fn, _summary in (
    ("T1", t1, "nearest subject: gallery other original photos, probe anonymized photos (the attacker holds "
               "clear photos of the people)"),
    ("same-source", same_source, "nearest subject: gallery every original photo, the probe's own source "
                                 "included; probe anonymized photos (can a release be traced to its photo?)"),
    ("T2", t2, "nearest subject: gallery anonymized photos with labels, probe original photos"),
    ("T3", t3, "nearest subject: gallery anonymized photos with labels, probe other anonymized photos (the "
               "attacker learns people as anonymized)"),
):
    ATTACKS.register(Plugin(kind="attack", name=_name, params=NoParams, factory=lambda p, _fn=_fn: _fn,
                            summary=_summary, licence=_CODE, module=__name__))

ATTACKS.register(Plugin(
    kind="attack", name="T1-classifier", params=ClassifierParams,
    summary="logistic regression (scikit-learn) trained on original embeddings, tested on anonymized photos "
            "of held-out sources (k-fold over photos)",
    factory=lambda p: lambda orig, anon, subjects, sources: classifier_t1(orig, anon, subjects, folds=p.folds,
                                                                          seed=p.seed),
    licence=_CODE, module=__name__,
))

ATTACKS.register(Plugin(
    kind="attack", name="aware", params=NoParams, factory=lambda p: aware,
    summary="anonymization-aware: ridge and MLP maps from anonymized to original embeddings, fitted on a public "
            "set anonymized with the same method and params; then T1 and same-source through each map",
    licence=_CODE, module=__name__,
))
ATTACKS.register(Plugin(
    kind="attack", name="reversal", params=NoParams, factory=lambda p: reversal,
    summary="blur deconvolved (Wiener, Richardson-Lucy) and pixelation upsampled with the audit's params, then T1 "
            "and same-source; gain over the naive T1",
    licence=_CODE, module=__name__,
))

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
* T1-classifier: logistic regression trained on embeddings of original photos, evaluated
  on anonymized photos of other sources (k-fold over photos).
"""

from __future__ import annotations

import numpy as np

from deid.evaluate.recognizers import distances


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


def threat_models(orig: np.ndarray, anon: np.ndarray, subjects: np.ndarray, sources: np.ndarray) -> dict:
    """T1, T2, T3 for one group: row i of ``orig`` and ``anon`` are the same source photo."""
    same_source = sources[:, None] == sources[None, :]
    return {
        "T1": identify(orig, subjects, anon, subjects, exclude=same_source),
        "T2": identify(anon, subjects, orig, subjects, exclude=same_source),
        "T3": identify(anon, subjects, anon, subjects, exclude=same_source),
    }


def reference(orig: np.ndarray, subjects: np.ndarray, sources: np.ndarray) -> dict:
    """No anonymization: originals against the other originals (the recognizer's own rate)."""
    same_source = sources[:, None] == sources[None, :]
    return identify(orig, subjects, orig, subjects, exclude=same_source)


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

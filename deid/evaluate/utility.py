"""Utility metrics: does the output still have faces, and how much of the image changed.

* detection rate: the fraction of the original's faces (audit boxes) that a detector still
  finds on the output (a detection with IoU >= 0.3 with the original box). Measured with
  the run's configured detector and with a second, different one (dlib's CNN when the run
  used HOG, HOG otherwise; or any registered detector by name, with its default params); for the second detector its
  rate on the *originals* is given too, since its boxes were not the ones the run used.
  Detectors are built with :func:`deid.faces.make_detector` and :data:`DETECTOR_PARAMS`.
* SSIM, PSNR, MSE (scikit-image) on the whole image and on the face box, RGB, data range 255;
  and SSIM over the pixels outside every face region (``ssim_outside``: boxes grown by half
  their size per side), which a method should leave alone.
* pose consistency: where the configured detector still finds the face on the output (IoU >= 0.3
  with the original's largest box), dlib's 68-point landmarks in that box against those of the
  original (each in its own detector box), as the mean distance of the five ArcFace points (eye
  centres, nose tip, mouth corners) over the original's eye distance (:func:`pose_error`).
  dlib's predictor is not the face mesh that synthetic-swap places its strangers by, so the
  measure does not grade the method with its own landmarks. Faces no longer found have no
  pose error: they are counted apart (``n_not_found``).
* Fréchet distance between feature sets of original and anonymized face crops. Features:
  HOG descriptors (scikit-image) of the 112x112 ArcFace-aligned grey crop, reduced by a PCA
  fitted on the originals. It is *not* Inception-FID (no Inception weights are used); the
  name in metrics.json says which features were used.
"""

from __future__ import annotations

import warnings

import numpy as np
from skimage.metrics import mean_squared_error, peak_signal_noise_ratio, structural_similarity

from deid.faces.types import iou

IOU_MATCH = 0.3
FRECHET_FEATURES = "hog-pca: skimage HOG (9 orientations, 16x16 cells, 2x2 blocks) of the 112x112 ArcFace-aligned grey face crop, PCA to <= 32 dims fitted on the originals"
FRECHET_MAX_DIMS = 32


def image_metrics(a: np.ndarray, b: np.ndarray, outside_of=None) -> dict:
    """SSIM, PSNR (dB; None where the images are identical) and MSE between two RGB uint8 images;
    with ``outside_of`` (face boxes), also ``ssim_outside``: SSIM over the pixels outside every
    face region (:func:`outside_mask`), from the same SSIM map (computed once)."""
    mse = float(mean_squared_error(a, b))
    side = min(a.shape[0], a.shape[1])
    win = min(7, side if side % 2 else side - 1)
    psnr = None if mse == 0 else float(peak_signal_noise_ratio(a, b, data_range=255))
    out = {"ssim": None, "psnr": psnr, "mse": mse}
    if win < 3:
        return out | ({"ssim_outside": None} if outside_of is not None else {})
    if outside_of is None:
        out["ssim"] = float(structural_similarity(a, b, channel_axis=2, data_range=255, win_size=win))
        return out
    _, smap = structural_similarity(a, b, channel_axis=2, data_range=255, win_size=win, full=True)
    pad = (win - 1) // 2  # scikit-image's mean SSIM leaves out the map's border
    inner = smap[pad:smap.shape[0] - pad, pad:smap.shape[1] - pad]
    out["ssim"] = float(inner.reshape(-1, smap.shape[2]).mean(axis=0, dtype=np.float64).mean())
    mask = outside_mask(a.shape[:2], outside_of)
    out["ssim_outside"] = float(smap.mean(axis=2)[mask].mean()) if mask.any() else None
    return out


#: the faces' boxes are grown by this fraction per side before "outside the faces" begins (any
#: method's margin and feather fit inside)
OUTSIDE_GROWTH = 0.5


def outside_mask(shape_hw: tuple[int, int], boxes) -> np.ndarray:
    """bool mask of the pixels outside every face region (each box grown by
    :data:`OUTSIDE_GROWTH` per side)."""
    h, w = shape_hw
    outside = np.ones((h, w), bool)
    for x0, y0, x1, y1 in boxes:
        gx, gy = OUTSIDE_GROWTH * (x1 - x0), OUTSIDE_GROWTH * (y1 - y0)
        outside[max(0, int(y0 - gy)):min(h, int(np.ceil(y1 + gy))), max(0, int(x0 - gx)):min(w, int(np.ceil(x1 + gx)))] = False
    return outside


def crop_box(rgb: np.ndarray, box) -> np.ndarray:
    x0, y0, x1, y1 = (int(v) for v in box)
    return rgb[max(0, y0):max(0, y1), max(0, x0):max(0, x1)]


def matched(boxes_found: list, boxes_orig: list) -> list[bool]:
    """For each original box: did any found box overlap it with IoU >= 0.3?"""
    return [any(iou(tuple(o), tuple(f)) >= IOU_MATCH for f in boxes_found) for o in boxes_orig]


def best_match(boxes_found: list, box) -> tuple | None:
    """The found box that overlaps ``box`` most, if with IoU >= 0.3; else None."""
    best, best_iou = None, IOU_MATCH
    for f in boxes_found:
        v = iou(tuple(box), tuple(f))
        if v >= best_iou:
            best, best_iou = tuple(f), v
    return best


def pose_error(orig5: np.ndarray, out5: np.ndarray) -> float:
    """Mean distance of five ArcFace points (eye centres, nose tip, mouth corners; ``[5, 2]``)
    of the output from the original's, over the original's eye distance."""
    a, b = np.asarray(orig5, dtype=np.float64), np.asarray(out5, dtype=np.float64)
    eye = float(np.linalg.norm(a[0] - a[1]))
    return float(np.linalg.norm(a - b, axis=1).mean() / max(eye, 1e-6))


#: the pose-consistency target of issue-level checks (docs/evaluation.md): 5% of the eye distance
POSE_OK = 0.05


def pose_summary(errors: list) -> dict:
    """``{median, p90, within_5pct, n, n_not_found, landmarks}`` over per-record pose errors
    (None: the face was not found on the output)."""
    e = np.array([x for x in errors if x is not None], dtype=np.float64)
    return {"median": float(np.median(e)) if e.size else None,
            "p90": float(np.percentile(e, 90)) if e.size else None,
            "within_5pct": float((e <= POSE_OK).mean()) if e.size else None,
            "n": int(e.size), "n_not_found": int(sum(x is None for x in errors)),
            "landmarks": POSE_LANDMARKS}


POSE_LANDMARKS = ("dlib shape_predictor_68 in the configured detector's box, ArcFace 5 points, "
                  "mean distance / original eye distance")


#: params the evaluation's detectors run with (``deid.faces.make_detector``), by backend; others
#: run with their defaults
DETECTOR_PARAMS = {
    "dlib-hog": {"upsample": 1},
    "dlib-cnn": {"upsample": 0},  # ~0.4 s per 250x250 image on one core
}


#: ``--second-detector auto``: a detector of another model family than the run's
SECOND_DETECTOR = {"dlib-hog": "dlib-cnn", "dlib-cnn": "dlib-hog", "face-mesh": "centerface", "blazeface": "centerface"}


def second_detector_for(configured: str) -> str:
    """The second detector of ``--second-detector auto``: another family than the run's. dlib's
    CNN for HOG runs and HOG for CNN runs; CenterFace for mediapipe runs; the face mesh
    (mediapipe's BlazeFace + 468-point mesh, the residual gate's default) for every other
    detector (CenterFace, the default; SCRFD, MTCNN, insightface, ensembles)."""
    return SECOND_DETECTOR.get(configured, "face-mesh")


def hog_features(crop112: np.ndarray) -> np.ndarray:
    from skimage.color import rgb2gray
    from skimage.feature import hog

    return hog(rgb2gray(crop112), orientations=9, pixels_per_cell=(16, 16), cells_per_block=(2, 2), feature_vector=True)


def frechet_distance(x: np.ndarray, y: np.ndarray, reference: np.ndarray | None = None) -> dict:
    """Fréchet distance between Gaussians fitted to ``x`` and ``y`` after a PCA fitted on
    ``reference`` (default ``x``): ||mu_x - mu_y||^2 + Tr(Sx + Sy - 2 (Sx Sy)^1/2)."""
    from scipy import linalg
    from sklearn.decomposition import PCA

    ref = x if reference is None else reference
    n = min(len(x), len(y), len(ref))
    if n < 3:
        return {"value": None, "dims": 0, "n": int(n), "features": FRECHET_FEATURES}
    k = int(min(FRECHET_MAX_DIMS, len(ref) - 1, ref.shape[1]))
    pca = PCA(n_components=k, random_state=0).fit(ref)
    a, b = pca.transform(x), pca.transform(y)
    mu1, mu2 = a.mean(0), b.mean(0)
    s1, s2 = np.atleast_2d(np.cov(a, rowvar=False)), np.atleast_2d(np.cov(b, rowvar=False))
    with warnings.catch_warnings():
        warnings.simplefilter("ignore")  # near-singular products are handled just below
        covmean = linalg.sqrtm(s1 @ s2)
    if not np.isfinite(covmean).all():  # near-singular: regularise as in the FID reference code
        eps = np.eye(k) * 1e-6
        with warnings.catch_warnings():
            warnings.simplefilter("ignore")
            covmean = linalg.sqrtm((s1 + eps) @ (s2 + eps))
    covmean = np.real(covmean)
    value = float(((mu1 - mu2) ** 2).sum() + np.trace(s1) + np.trace(s2) - 2 * np.trace(covmean))
    return {"value": max(value, 0.0), "dims": k, "n": int(n), "features": FRECHET_FEATURES}

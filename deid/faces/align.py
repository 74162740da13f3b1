"""Similarity alignment of a face to a canonical crop, and the way back.

A similarity transform (rotation, uniform scale, translation) is estimated from the
five landmarks to a fixed template by least squares (scikit-image), so alignment keeps
the face's proportions. ``warp_back`` maps an edited crop into the photo with the inverse
transform (OpenCV), for methods that edit faces in the canonical frame.

``ffhq`` is the crop of the FFHQ data set (Karras et al. 2019, ``ffhq-dataset``:
``recreate_aligned_images``), which StyleGAN-family generators draw their faces in: a recipe
on the eye centres and mouth corners of dlib's 68 points (:func:`ffhq_recipe`). Faces with
5 points only (``dlib5``, ``arcface5``) are fitted by least squares to where those points sit
in that crop on average (:data:`FFHQ_TEMPLATES`, measured); the error this costs is in
docs/latent.md. :func:`estimate` takes ``layout="ffhq"`` with ``points_layout`` saying which
landmarks it is given.
"""

from __future__ import annotations

import cv2
import numpy as np

# Templates in a unit square (x right, y down), scaled by the crop size.
# dlib 5-point layout, in the order shape_predictor_5_face_landmarks emits it: outer and
# inner corner of the eye on the image's right, outer and inner corner of the other eye,
# nose base. Measured: mean landmark position inside dlib's own aligned chip
# (get_face_chip, padding 0.25) over 191 faces of lfw-public-ref (std 0.019).
TEMPLATES = {
    "dlib5": np.array(
        [[0.7359, 0.3097], [0.6001, 0.3175], [0.2515, 0.309], [0.3872, 0.3173], [0.4916, 0.5744]],
        dtype=np.float64,
    ),
    # insightface / ArcFace layout: left eye, right eye, nose tip, left and right mouth corner
    # (the 112x112 ArcFace template divided by 112).
    "arcface5": np.array(
        [[38.2946, 51.6963], [73.5318, 51.5014], [56.0252, 71.7366], [41.5493, 92.3655], [70.7299, 92.2041]],
        dtype=np.float64,
    )
    / 112.0,
}


#: layouts whose crop is a recipe, not a point template (see :func:`ffhq_estimate`)
RECIPES = ("ffhq",)
#: landmark layouts the ffhq crop is built from
FFHQ_SOURCES = ("dlib68", "arcface5", "dlib5")
#: Where 5-point landmarks sit in the FFHQ crop (unit square), for faces without 68 points:
#: the mean position of each layout's points in the crop the FFHQ recipe builds from dlib's
#: 68 points of the same face, over the even-numbered faces of lfw-public-ref (1421 faces;
#: dlib5: dlib HOG + dlib's 5-point model; arcface5: CenterFace's keypoints of the same face).
#: bench/ffhq_align.py measures them, and the error of the least-squares fit against the
#: 68-point recipe on the odd-numbered faces (docs/latent.md).
FFHQ_TEMPLATES = {
    "dlib5": np.array([[0.6681, 0.4742], [0.5728, 0.4766], [0.3315, 0.4739], [0.4273, 0.4765], [0.4995, 0.6586]],
                      dtype=np.float64),
    "arcface5": np.array([[0.3797, 0.4759], [0.6294, 0.4719], [0.5011, 0.6208], [0.3953, 0.7393], [0.6048, 0.7354]],
                         dtype=np.float64),
}


def ffhq_recipe(pts68: np.ndarray, size: int, scale: float = 1.0) -> np.ndarray:
    """2x3 matrix mapping image coordinates to the ``size`` x ``size`` FFHQ crop, by the FFHQ
    recipe on dlib's 68 points: eye centres (means of 36-41 and 42-47), mouth corners 48, 54;
    ``x = eye_to_eye - rot90(eye_to_mouth)``, normalised, of length ``max(2 |eye_to_eye|, 1.8
    |eye_to_mouth|)``; ``y = rot90(x)``; centre ``c = eye_avg + 0.1 eye_to_mouth``; the crop is
    the square ``c +- x +- y`` (upper-left corner ``c - x - y``): a similarity taking ``c`` to
    the crop's centre and ``x`` to half its side along the crop's x axis."""
    p = np.asarray(pts68, dtype=np.float64).reshape(68, 2)
    eye_l, eye_r, mouth = p[36:42].mean(axis=0), p[42:48].mean(axis=0), (p[48] + p[54]) / 2
    eye_avg = (eye_l + eye_r) / 2
    eye_to_eye = eye_r - eye_l
    eye_to_mouth = mouth - eye_avg
    x = eye_to_eye - np.flipud(eye_to_mouth) * np.array([-1.0, 1.0])
    norm = np.hypot(*x)
    if not np.isfinite(norm) or norm <= 1e-9:
        raise ValueError("degenerate landmarks: cannot build the ffhq crop")
    half = max(np.hypot(*eye_to_eye) * 2.0, np.hypot(*eye_to_mouth) * 1.8)  # |x| = |y|: half the side
    c = eye_avg + eye_to_mouth * 0.1
    ux = x / norm  # the crop's x axis in the image; its y axis is rot90(ux) = (-ux1, ux0)
    k = (size / 2.0) * scale / half
    m = np.zeros((2, 3))
    m[:, :2] = k * np.array([[ux[0], ux[1]], [-ux[1], ux[0]]])  # image -> crop
    m[:, 2] = np.array([size / 2.0, size / 2.0]) - m[:, :2] @ c
    return m


def ffhq_estimate(points: np.ndarray, size: int, points_layout: str, scale: float = 1.0) -> np.ndarray:
    """2x3 matrix mapping image coordinates to the ``size`` x ``size`` FFHQ crop, from
    landmarks in ``points_layout``: ``dlib68`` by the recipe (:func:`ffhq_recipe`), ``dlib5``
    and ``arcface5`` by a least-squares similarity to :data:`FFHQ_TEMPLATES`. ``scale`` < 1
    shrinks the face about the crop's centre (more context), as for the point templates."""
    if points_layout == "dlib68":
        return ffhq_recipe(points, size, scale)
    if points_layout not in FFHQ_TEMPLATES:
        raise ValueError(f"ffhq alignment reads {', '.join(FFHQ_SOURCES)} landmarks, got {points_layout!r}")
    return _similarity(np.asarray(points, dtype=np.float64).reshape(5, 2),
                       ((FFHQ_TEMPLATES[points_layout] - 0.5) * scale + 0.5) * size)


def five_from_68(pts68: np.ndarray) -> np.ndarray:
    """dlib 5-point layout from the 68-point layout (eye corners and nose base)."""
    return np.asarray(pts68, dtype=np.float64)[[45, 42, 36, 39, 33]]


def estimate(landmarks5: np.ndarray, size: int, layout: str = "dlib5", scale: float = 1.0,
             points_layout: str | None = None) -> np.ndarray:
    """2x3 matrix mapping image coordinates to a ``size`` x ``size`` canonical crop.

    ``scale`` < 1 shrinks the face within the crop (more context around it). For a recipe
    layout (``ffhq``) ``points_layout`` says what the landmarks are (:data:`FFHQ_SOURCES`);
    the point templates ignore it.
    """
    if layout == "ffhq":
        if points_layout is None:
            raise ValueError(f"ffhq alignment needs the landmarks' layout ({', '.join(FFHQ_SOURCES)})")
        return ffhq_estimate(landmarks5, size, points_layout, scale)
    tmpl = TEMPLATES[layout]
    return _similarity(np.asarray(landmarks5, dtype=np.float64), ((tmpl - 0.5) * scale + 0.5) * size)


def _similarity(src: np.ndarray, dst: np.ndarray) -> np.ndarray:
    """Least-squares similarity taking ``src`` points to ``dst`` points, as a 2x3 matrix."""
    from skimage.transform import SimilarityTransform  # here: it imports scipy.spatial (~0.4 s)

    if hasattr(SimilarityTransform, "from_estimate"):  # scikit-image >= 0.26
        tform = SimilarityTransform.from_estimate(src, dst)
        ok = bool(tform)
    else:
        tform = SimilarityTransform()
        ok = tform.estimate(src, dst)
    if not ok:
        raise ValueError("degenerate landmarks: cannot estimate a similarity transform")
    return tform.params[:2].astype(np.float64)


def align(rgb: np.ndarray, landmarks5: np.ndarray, size: int, layout: str = "dlib5", scale: float = 1.0,
          points_layout: str | None = None) -> tuple[np.ndarray, np.ndarray]:
    """Return ``(crop, M)``: the aligned crop and the 2x3 image->crop matrix."""
    m = estimate(landmarks5, size, layout, scale, points_layout)
    crop = cv2.warpAffine(rgb, m, (size, size), flags=cv2.INTER_LINEAR, borderMode=cv2.BORDER_REFLECT)
    return crop, m


def warp_back(crop: np.ndarray, m: np.ndarray, out_shape: tuple[int, int]) -> tuple[np.ndarray, np.ndarray]:
    """Map a crop back into image space; returns ``(image_layer, coverage)`` where coverage
    is 1 where the crop lands and 0 elsewhere."""
    h, w = out_shape
    inv = cv2.invertAffineTransform(m)
    layer = cv2.warpAffine(crop, inv, (w, h), flags=cv2.INTER_LINEAR, borderMode=cv2.BORDER_CONSTANT)
    ones = np.ones(crop.shape[:2], dtype=np.float32)
    cover = cv2.warpAffine(ones, inv, (w, h), flags=cv2.INTER_LINEAR, borderMode=cv2.BORDER_CONSTANT)
    return layer, cover

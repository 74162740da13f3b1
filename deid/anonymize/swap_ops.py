"""Image operations of ``synthetic-swap``: the face region from a mesh, a piecewise-affine warp
of a stranger onto the original's mesh, colour matching and seam blending.

Every function works inside a window around one face, so a face costs what the face costs.
No function reads or writes a pixel outside the face region of the mesh it is given
(:func:`region_polygon`): :func:`swap_face` returns a window and an alpha that is 0 outside it.
"""

from __future__ import annotations

import cv2
import numpy as np

#: MediaPipe's face oval from the temple on the image's right round the chin to the other temple
JAW = (389, 356, 454, 323, 361, 288, 397, 365, 379, 378, 400, 377, 152, 148, 176, 149, 150, 136, 172, 58, 132, 93,
       234, 127, 162)
#: the brows' upper contours, the person's right brow outer to inner, then the left inner to outer
BROWS = (70, 63, 105, 66, 107, 336, 296, 334, 293, 300)
FULL_OVAL = (10, 338, 297, 332, 284, 251, 389, 356, 454, 323, 361, 288, 397, 365, 379, 378, 400, 377, 152, 148, 176,
             149, 150, 136, 172, 58, 132, 93, 234, 127, 162, 21, 54, 103, 67, 109)
RIGHT_EYE_C, LEFT_EYE_C = (33, 133), (263, 362)
NOSE_TIP, MOUTH_R, MOUTH_L = 1, 61, 291
#: the face's features in the 468-point mesh (eyes, brows, lips, nostrils): not skin (:func:`skin_mask`)
R_EYE = (33, 7, 163, 144, 145, 153, 154, 155, 133, 173, 157, 158, 159, 160, 161, 246)
L_EYE = (263, 249, 390, 373, 374, 380, 381, 382, 362, 398, 384, 385, 386, 387, 388, 466)
R_BROW = (70, 63, 105, 66, 107, 55, 65, 52, 53, 46)
L_BROW = (300, 293, 334, 296, 336, 285, 295, 282, 283, 276)
LIPS = (61, 146, 91, 181, 84, 17, 314, 405, 321, 375, 291, 409, 270, 269, 267, 0, 37, 39, 40, 185)
NOSTRILS = (98, 97, 2, 326, 327, 294, 278, 344, 440, 275, 4, 45, 220, 115, 48, 64)
FEATURES = (R_EYE, L_EYE, R_BROW, L_BROW, LIPS, NOSTRILS)


def eye_distance(points: np.ndarray) -> float:
    p = np.asarray(points, dtype=np.float64)[:, :2]
    return float(np.linalg.norm(p[list(RIGHT_EYE_C)].mean(0) - p[list(LEFT_EYE_C)].mean(0)))


def _up(p: np.ndarray) -> np.ndarray:
    """The face's unit up direction in the image: from the chin (mesh point 152) to the eyes' midpoint."""
    up = (p[list(RIGHT_EYE_C)].mean(0) + p[list(LEFT_EYE_C)].mean(0)) / 2 - p[152]
    return up / max(np.linalg.norm(up), 1e-9)


def region_polygon(points: np.ndarray, keep_forehead: bool = True, brow_lift: float = 0.25) -> np.ndarray:
    """``float64 [m, 2]``: the replaced region of a face mesh, jaw line to brow. With
    ``keep_forehead`` (the paper's choice: little identity, the skin tone) its top is the brow line
    lifted by ``brow_lift`` x the eye distance; otherwise the whole face oval."""
    p = np.asarray(points, dtype=np.float64)[:, :2]
    if not keep_forehead:
        return p[list(FULL_OVAL)]
    up = _up(p)
    # the jaw ends at the person's right temple; the brows go on from there to the left temple
    brows = p[list(BROWS)] + brow_lift * eye_distance(p) * up
    return np.concatenate([p[list(JAW)], brows])


def delaunay(points: np.ndarray) -> np.ndarray:
    """``int32 [t, 3]``: a Delaunay triangulation of ``points`` (scipy)."""
    from scipy.spatial import Delaunay

    return Delaunay(np.asarray(points, dtype=np.float64)).simplices.astype(np.int32)


def _affines(dst: np.ndarray, src: np.ndarray, tris: np.ndarray) -> np.ndarray:
    """``[t, 2, 3]``: for each triangle, the affine map from ``dst`` to ``src`` coordinates."""
    d = dst[tris]                                        # t, 3, 2
    s = src[tris]
    dh = np.concatenate([d, np.ones(d.shape[:2] + (1,))], axis=2)   # t, 3, 3
    # solve dh @ A.T = s for each triangle; degenerate ones fall back to least squares
    out = np.empty((len(tris), 2, 3))
    det = np.linalg.det(dh)
    ok = np.abs(det) > 1e-9
    out[ok] = np.linalg.solve(dh[ok], s[ok]).transpose(0, 2, 1)
    if (~ok).any():
        out[~ok] = np.nan
    return out


def warp_piecewise(src_img: np.ndarray, src_pts: np.ndarray, dst_pts: np.ndarray, tris: np.ndarray,
                   window: tuple[int, int, int, int]) -> np.ndarray:
    """``src_img`` warped so that ``src_pts`` land on ``dst_pts`` (image coordinates), triangle by
    triangle, rendered into ``window`` = ``(x0, y0, x1, y1)`` of the destination. Pixels no
    triangle covers use the least-squares affine map of all points."""
    x0, y0, x1, y1 = window
    w, h = x1 - x0, y1 - y0
    dst = np.asarray(dst_pts, dtype=np.float64)[:, :2] - (x0, y0)
    src = np.asarray(src_pts, dtype=np.float64)[:, :2]
    aff = _affines(dst, src, tris)
    idx = np.zeros((h, w), np.int32)
    for t in np.flatnonzero(~np.isnan(aff[:, 0, 0])):
        cv2.fillConvexPoly(idx, np.round(dst[tris[t]] * 16).astype(np.int32), int(t) + 1, lineType=cv2.LINE_8, shift=4)
    glob, _ = cv2.estimateAffine2D(dst.astype(np.float32), src.astype(np.float32), method=cv2.LMEDS)
    if glob is None:
        glob = np.array([[1, 0, 0], [0, 1, 0]], np.float64)
    table = np.concatenate([glob[None], np.nan_to_num(aff, nan=0.0)], axis=0)   # index 0: the global map
    yy, xx = np.mgrid[0:h, 0:w].astype(np.float32)
    a = table[idx].astype(np.float32)                   # h, w, 2, 3
    mx = a[..., 0, 0] * xx + a[..., 0, 1] * yy + a[..., 0, 2]
    my = a[..., 1, 0] * xx + a[..., 1, 1] * yy + a[..., 1, 2]
    return cv2.remap(src_img, mx, my, interpolation=cv2.INTER_LINEAR, borderMode=cv2.BORDER_REFLECT)


def skin_mask(points: np.ndarray, shape: tuple[int, ...], window: tuple[int, int, int, int] | None = None) -> np.ndarray:
    """``bool`` mask of the skin of the face with mesh ``points`` (468, image pixels), in an image
    of ``shape`` or in its ``window`` = ``(x0, y0, x1, y1)``: the face from the jaw line to the brows
    (the forehead is left out: hair covers it on many faces and strangers), less the
    :data:`FEATURES` and a band along the outline, each 8% of the eye distance wide."""
    x0, y0, x1, y1 = window if window is not None else (0, 0, shape[1], shape[0])
    p = np.asarray(points, dtype=np.float64)[:, :2] - (x0, y0)
    k = max(3, int(0.08 * eye_distance(p)) | 1)
    face = np.zeros((y1 - y0, x1 - x0), np.uint8)
    cv2.fillPoly(face, [np.round(region_polygon(p, keep_forehead=True, brow_lift=0.0) * 16).astype(np.int32)], 1,
                 lineType=cv2.LINE_8, shift=4)
    face = cv2.erode(face, np.ones((k, k), np.uint8))
    holes = np.zeros_like(face)
    for idx in FEATURES:
        cv2.fillConvexPoly(holes, cv2.convexHull(np.round(p[list(idx)] * 16).astype(np.int32)), 1,
                           lineType=cv2.LINE_8, shift=4)
    holes = cv2.dilate(holes, np.ones((k, k), np.uint8))
    return (face > 0) & (holes == 0)


def forehead_clear(crop: np.ndarray, points: np.ndarray) -> float:
    """How much of a face's forehead is skin: the fraction of the band between the brows (lifted
    by a quarter of the eye distance, as ``keep_forehead``'s region) and the top of the face oval,
    less an outline band 8% of the eye distance wide, whose Lab colour lies within 3x the median
    Delta-E (at least 8, at most 30) of the face's central skin to its own median: the :func:`skin_mask`
    pixels within 0.9 eye distances of the nose tip (hair over the cheeks would widen the
    reference). Bangs, or a cap or scarf over the band, score low, bare skin near 1; 1 when
    the band or the skin has under 16 pixels. A stranger's forehead goes into the photo with
    ``keep_forehead: false``."""
    h, w = crop.shape[:2]
    p = np.asarray(points, dtype=np.float64)[:, :2]
    ed = eye_distance(p)
    full = np.zeros((h, w), np.uint8)
    low = np.zeros((h, w), np.uint8)
    cv2.fillPoly(full, [np.round(region_polygon(p, False) * 16).astype(np.int32)], 1, lineType=cv2.LINE_8, shift=4)
    cv2.fillPoly(low, [np.round(region_polygon(p, True) * 16).astype(np.int32)], 1, lineType=cv2.LINE_8, shift=4)
    k = max(3, int(0.08 * ed) | 1)
    band = (cv2.erode(full, np.ones((k, k), np.uint8)) > 0) & (low == 0)
    yy, xx = np.mgrid[0:h, 0:w]
    skin = skin_mask(p, crop.shape) & (np.hypot(xx - p[1, 0], yy - p[1, 1]) < 0.9 * ed)  # 1: the nose tip
    if band.sum() < 16 or skin.sum() < 16:
        return 1.0
    lab = _lab(crop)
    s = lab[skin]
    med = np.median(s, axis=0)
    # the spread of a strongly lit face's skin is wide; capped, so that hair still stands out
    limit = min(30.0, max(8.0, 3.0 * float(np.median(np.linalg.norm(s - med, axis=1)))))
    return float((np.linalg.norm(lab[band] - med, axis=1) <= limit).mean())


def _lab(rgb: np.ndarray) -> np.ndarray:
    return cv2.cvtColor(rgb.astype(np.float32) / 255.0, cv2.COLOR_RGB2LAB)


def _rgb(lab: np.ndarray) -> np.ndarray:
    return np.clip(cv2.cvtColor(lab.astype(np.float32), cv2.COLOR_LAB2RGB) * 255.0 + 0.5, 0, 255).astype(np.uint8)


#: fewest pixels of a skin mask whose statistics are used (else the whole region's)
MIN_SKIN_PX = 32


def match_colour(src: np.ndarray, dst: np.ndarray, mask: np.ndarray, max_ratio: float = 1.6,
                 src_skin: np.ndarray | None = None, dst_skin: np.ndarray | None = None) -> np.ndarray:
    """``src`` with the mean and spread of ``dst`` per Lab channel (Reinhard): the skin tone and
    the lighting level of the original, not its features. The statistics are those of the
    skin masks (``src_skin`` of ``src``, ``dst_skin`` of ``dst``, each within ``mask``) when both
    have :data:`MIN_SKIN_PX` pixels, else those of ``mask`` in both: a region's mean includes
    hair, brows, eyes and background, which differ between the two faces, so matching it does not
    match the skin (a dark-skinned face got a lighter stranger with dark hair in its region)."""
    m = mask.astype(bool)
    if m.sum() < 16:
        return src
    ms_, md_ = m, m
    if src_skin is not None and dst_skin is not None:
        a, b = m & src_skin.astype(bool), m & dst_skin.astype(bool)
        if a.sum() >= MIN_SKIN_PX and b.sum() >= MIN_SKIN_PX:
            ms_, md_ = a, b
    s, d = _lab(src), _lab(dst)
    out = np.empty_like(s)
    for c in range(3):
        ms, sd = s[..., c][ms_].mean(), s[..., c][ms_].std() + 1e-6
        md, dd = d[..., c][md_].mean(), d[..., c][md_].std() + 1e-6
        r = float(np.clip(dd / sd, 1.0 / max_ratio, max_ratio))
        out[..., c] = (s[..., c] - ms) * r + md
    return _rgb(out)


def correct_drift(img: np.ndarray, img_skin: np.ndarray, ref: np.ndarray, ref_skin: np.ndarray,
                  ramp: np.ndarray) -> np.ndarray:
    """``img`` shifted in Lab by (``ref``'s mean over ``ref_skin`` - ``img``'s over ``img_skin``)
    x ``ramp`` (0 at the region's edge, 1 inside): the Poisson clone takes its boundary from the
    original's surroundings, which moves the interior's mean (it made dark skin lighter and light
    skin darker); this puts the skin back on the original's tone and leaves the seam as cloned."""
    a, b = img_skin.astype(bool), ref_skin.astype(bool)
    if a.sum() < MIN_SKIN_PX or b.sum() < MIN_SKIN_PX:
        return img
    lab = _lab(img)
    delta = _lab(ref)[b].mean(0) - lab[a].mean(0)
    return _rgb(lab + ramp[..., None] * delta[None, None, :])


def swap_face(rgb: np.ndarray, points: np.ndarray, stranger: np.ndarray, stranger_pts: np.ndarray,
              tris: np.ndarray, keep_forehead: bool = True, feather: float = 0.08, poisson: bool = True,
              colour: bool = True, shape: float = 1.0, grow: float = 0.0,
              key_points: bool = False) -> tuple[tuple[int, int, int, int], np.ndarray, np.ndarray] | None:
    """The stranger warped onto the face with mesh ``points`` in ``rgb``: ``(window, pixels,
    alpha)``, where ``alpha`` (float32, window-sized) is 1 inside the face region, ramps to 0 over
    ``feather`` x the eye distance *inside* its edge, and is 0 outside it. None when the region
    is empty in the image (a face at the frame edge whose region lies outside). ``shape``: how much
    of the original's face shape the stranger takes: 1, warped exactly onto the original's mesh;
    0, the stranger's own mesh placed on the original's by a similarity fit (pose and position
    from the original, face shape from the stranger); between, the blend of the two."""
    target = np.asarray(points, dtype=np.float64)[:, :2]
    if shape < 1.0:
        src = np.asarray(stranger_pts, dtype=np.float64)[:, :2]
        sim, _ = cv2.estimateAffinePartial2D(src.astype(np.float32), target.astype(np.float32), method=cv2.LMEDS)
        if sim is not None:
            placed = src @ sim[:, :2].T + sim[:, 2]
            if key_points:
                placed = onto_key_points(placed, target)
            target = shape * target + (1.0 - shape) * placed
    return blend_region(rgb, points, lambda win: warp_piecewise(stranger, stranger_pts, target, tris, win),
                        keep_forehead=keep_forehead, feather=feather, poisson=poisson, colour=colour,
                        render_points=target, grow=grow)


#: the mesh's five key points: eye centres (each the mean of its two corners), nose tip, mouth corners
KEY_POINTS = (RIGHT_EYE_C, LEFT_EYE_C, (NOSE_TIP,), (MOUTH_R,), (MOUTH_L,))


def _keys(p: np.ndarray) -> np.ndarray:
    return np.stack([p[list(k)].mean(0) for k in KEY_POINTS])


def onto_key_points(placed: np.ndarray, target: np.ndarray, width: float = 0.3) -> np.ndarray:
    """``placed`` (a stranger's mesh on the face) moved so that its five key points (eye centres,
    nose tip, mouth corners) land on ``target``'s, the move spread smoothly over the mesh by
    Gaussian radial basis functions of ``width`` x the eye distance: exact at the key points
    (both corners of an eye move by its centre's move, so the stranger keeps its eye width),
    fading toward the outline, which keeps the stranger's own shape."""
    src, dst = _keys(placed), _keys(target)
    idx = [i for k in KEY_POINTS for i in k]
    move = np.concatenate([np.repeat((dst - src)[j][None], len(k), 0) for j, k in enumerate(KEY_POINTS)])
    at = placed[idx]
    sigma = max(width * float(np.linalg.norm(src[0] - src[1])), 1.0)

    def phi(a, b):
        return np.exp(-((a[:, None, :] - b[None, :, :]) ** 2).sum(-1) / (2 * sigma * sigma))

    coef = np.linalg.lstsq(phi(at, at), move, rcond=None)[0]
    return placed + phi(placed, at) @ coef


def warp_similarity(src_img: np.ndarray, m: np.ndarray, window: tuple[int, int, int, int]) -> np.ndarray:
    """``src_img`` (a crop whose frame the 2x3 image -> crop matrix ``m`` defines, e.g. a latent
    model's aligned face) drawn back into ``window`` = ``(x0, y0, x1, y1)`` of the image."""
    x0, y0, x1, y1 = window
    mw = np.array(m, dtype=np.float64, copy=True)
    shrink = float(np.sqrt(abs(np.linalg.det(mw[:, :2]))))  # crop pixels per image pixel
    if shrink > 1.5:  # area-downsample first: a bilinear warp of a large crop onto a small face aliases
        size = max(8, int(round(src_img.shape[0] / shrink)))
        f = size / src_img.shape[0]
        src_img = cv2.resize(src_img, (size, size), interpolation=cv2.INTER_AREA)
        mw = mw * f
    mw[:, 2] += mw[:, :2] @ np.array([x0, y0], dtype=np.float64)  # window coords -> crop
    return cv2.warpAffine(src_img, mw, (x1 - x0, y1 - y0), flags=cv2.INTER_LINEAR | cv2.WARP_INVERSE_MAP,
                          borderMode=cv2.BORDER_REFLECT)


def grow_up(region: np.ndarray, points: np.ndarray, px: int, origin: tuple[int, int] = (0, 0)) -> np.ndarray:
    """``region`` (uint8, a window whose top-left is ``origin`` in image pixels) dilated by ``px``
    pixels (an elliptical element) on the side of the mouth line toward the eyes only: the
    hairline, temples and ears of the face with mesh ``points`` come into the region; below the
    mouth the region stays the face oval (a stranger's own neck, collar or hands there looked
    wrong and carried little identity: docs/synthetic-swap.md)."""
    grown = cv2.dilate(region, cv2.getStructuringElement(cv2.MORPH_ELLIPSE, (2 * px + 1, 2 * px + 1)))
    p = np.asarray(points, dtype=np.float64)[:, :2] - origin
    up = _up(p)
    mouth = p[[MOUTH_R, MOUTH_L]].mean(0)
    yy, xx = np.mgrid[0:region.shape[0], 0:region.shape[1]]
    above = (xx - mouth[0]) * up[0] + (yy - mouth[1]) * up[1] >= 0
    return np.where(above, grown, region).astype(np.uint8)


def blend_region(rgb: np.ndarray, points: np.ndarray, render, keep_forehead: bool = True, feather: float = 0.08,
                 poisson: bool = True, colour: bool = True,
                 render_points: np.ndarray | None = None, grow: float = 0.0) -> tuple[tuple[int, int, int, int], np.ndarray, np.ndarray] | None:
    """The seam of :func:`swap_face` for any source: ``render(window)`` gives the new face's
    pixels in ``window`` = ``(x0, y0, x1, y1)`` of ``rgb``; with ``colour`` they are colour-matched
    in Lab, the skin of the new face (:func:`skin_mask` of ``render_points``, its mesh in image
    pixels, or a callable ``(window, pixels) -> mesh or None`` that finds it on the rendered
    pixels; default, and when that gives None, ``points``) to the original's skin
    (:func:`skin_mask` of ``points``), inside the mesh's face region; then Poisson-blended
    (``poisson``; with ``colour`` the skin's drift is corrected after it, :func:`correct_drift`)
    and given the alpha that is 1 inside the region, ramps to 0 over ``feather`` x the eye
    distance inside its edge and is 0 outside it. Returns ``(window, pixels, alpha)``, or None
    when the region is empty in the image. ``grow``: the region is the mesh's polygon dilated
    by ``grow`` x the eye distance above the mouth (:func:`grow_up`)."""
    h, w = rgb.shape[:2]
    poly = region_polygon(points, keep_forehead)
    grow_px = int(round(max(0.0, grow) * eye_distance(points)))
    pad = 3 + grow_px
    x0, y0 = np.floor(poly.min(0)).astype(int) - pad
    x1, y1 = np.ceil(poly.max(0)).astype(int) + pad + 1
    x0, y0, x1, y1 = max(0, x0), max(0, y0), min(w, x1), min(h, y1)
    if x1 - x0 < 4 or y1 - y0 < 4:
        return None
    region = np.zeros((y1 - y0, x1 - x0), np.uint8)
    cv2.fillPoly(region, [np.round((poly - (x0, y0)) * 16).astype(np.int32)], 1, lineType=cv2.LINE_8, shift=4)
    if grow_px > 0:
        region = grow_up(region, points, grow_px, (x0, y0))
    if region.sum() < 16:
        return None
    orig = rgb[y0:y1, x0:x1]
    warped = render((x0, y0, x1, y1))
    core = cv2.erode(region, np.ones((3, 3), np.uint8))
    win = (x0, y0, x1, y1)
    skin_o = skin_mask(points, rgb.shape, win) & (core > 0)
    if callable(render_points):
        render_points = render_points(win, warped)
    skin_r = skin_mask(points if render_points is None else render_points, rgb.shape, win) & (core > 0)
    if colour:
        warped = match_colour(warped, orig, core, src_skin=skin_r, dst_skin=skin_o)
    out = warped
    if poisson and core.sum() > 64:
        # Poisson (gradient-domain) blending: the seam takes the original's boundary colours;
        # cloned on a padded copy, since OpenCV wants the mask off the image border
        P = 4
        src = cv2.copyMakeBorder(warped, P, P, P, P, cv2.BORDER_REFLECT)
        dst = cv2.copyMakeBorder(orig, P, P, P, P, cv2.BORDER_REFLECT)
        msk = cv2.copyMakeBorder(core * 255, P, P, P, P, cv2.BORDER_CONSTANT, value=0)
        ys, xs = np.nonzero(msk)
        bx0, bx1, by0, by1 = xs.min(), xs.max() + 1, ys.min(), ys.max() + 1
        center = ((bx0 + bx1) // 2, (by0 + by1) // 2)
        try:
            cloned = cv2.seamlessClone(src, dst, msk, center, cv2.NORMAL_CLONE)
            out = cloned[P:-P, P:-P]
            if colour:
                depth = cv2.distanceTransform(core, cv2.DIST_L2, 5)
                ramp = np.clip(depth / max(1.0, 0.25 * eye_distance(points)), 0.0, 1.0).astype(np.float32)
                out = correct_drift(out, skin_r, orig, skin_o, ramp)
        except cv2.error:
            out = warped
    feather_px = max(1.0, feather * eye_distance(points))
    inside = cv2.distanceTransform(region, cv2.DIST_L2, 5)
    alpha = np.clip(inside / feather_px, 0.0, 1.0).astype(np.float32) * region
    return (x0, y0, x1, y1), out, alpha


def composite(out: np.ndarray, res: tuple[tuple[int, int, int, int], np.ndarray, np.ndarray]) -> None:
    """Blend :func:`swap_face`'s ``(window, pixels, alpha)`` into ``out`` in place; pixels
    outside the region (alpha 0) keep their exact values."""
    (x0, y0, x1, y1), pixels, alpha = res
    a = alpha[..., None]
    win = out[y0:y1, x0:x1].astype(np.float32)
    mixed = a * pixels.astype(np.float32) + (1.0 - a) * win
    out[y0:y1, x0:x1] = np.where(a > 0, np.clip(np.rint(mixed), 0, 255), win).astype(np.uint8)

"""Rotated views of a photo, and fusing what a detector finds on them (the CenterFace backend's
``rotations`` and the ensemble's ``tta``).

Upright face detectors miss faces turned in the image plane: CenterFace covers 68-74% of the
faces of 75-90 degrees that it covers upright (docs/benchmarks.md, "Coverage by the pixels of
the output"), and a photo stored sideways without an EXIF orientation has every face at 90
degrees. A view of the photo turned by 90, 180 or 270 degrees (exact, same pixels) or by
``+-tilt`` degrees stands such faces up; what a detector finds on a view is mapped back into
the photo's pixels and fused with the upright detections.

* :func:`rotation`: the matrix from the photo's pixels to a view's. A tilted view's canvas is
  either ``whole`` (the whole turned photo, ~2x the pixels at 45 degrees) or ``frame`` (the
  photo's own size, centred on it: the same cost as the upright pass; the photo's corners that
  the turn moves out of the frame are not seen in that view, only in the others);
* :func:`map_face`: a face found on a view in the photo's pixels: its box is the bounds of the
  turned ellipse inscribed in the view's box (a face is elliptical: the bounds of the turned box
  would be ~1.4x the face at 45 degrees, and would not overlap the same face's upright box
  enough to fuse with it); exact for 90-degree turns; landmarks point by point;
* :func:`fuse`: weighted box fusion, greedy by descending score (a detection joins a cluster
  when it overlaps the cluster's best box); a cluster's box is the score-weighted mean of its boxes
  from views that map boxes exactly (upright, tiles, 90-degree turns) when it has any, else of
  all; its score the highest, its landmarks those of its best detection from an unrotated
  view (else its best one). A face only the turned views found whose box lies mostly
  (:data:`COVERED`) under the boxes of faces the upright pass found is dropped: it is a box
  across neighbouring faces that are anonymized anyway (2008_002079 of the demo: a tilted
  view's box over two adjacent faces);
* :func:`gather`: the detections of a detector on the photo and its views, in the photo's pixels;
* :func:`mirrored_edges`: the photo mirrored out at its edges (the ``edge`` view: a face cut by
  the frame meets its mirror image and reads whole); its boxes map back exactly but, like the
  turned views', give way to the upright pass's in a fusion.
"""

from __future__ import annotations

from typing import Iterator, Literal

import numpy as np

from deid.faces.types import Face, clip_box, iou

VIEWS = ("rot90", "rot180", "rot270", "tilt+", "tilt-")
View = Literal["rot90", "rot180", "rot270", "tilt+", "tilt-"]
Canvas = Literal["whole", "frame"]


def rotation(view: str, w: int, h: int, tilt: float, canvas: str = "whole") -> tuple[np.ndarray, tuple[int, int]]:
    """The 2x3 matrix that maps input pixels to the view's pixels, and the view's size."""
    import cv2

    angle = {"rot90": 90.0, "rot180": 180.0, "rot270": 270.0, "tilt+": tilt, "tilt-": -tilt}[view]
    m = cv2.getRotationMatrix2D((w / 2.0, h / 2.0), angle, 1.0)
    c, s = abs(m[0, 0]), abs(m[0, 1])
    nw, nh = int(round(h * s + w * c)), int(round(h * c + w * s))
    if view.startswith("tilt") and canvas == "frame":
        nw, nh = w, h
    m[0, 2] += nw / 2.0 - w / 2.0
    m[1, 2] += nh / 2.0 - h / 2.0
    return m, (nw, nh)


def rotated_views(rgb: np.ndarray, views, tilt: float, canvas: str = "whole") -> Iterator[tuple[str, np.ndarray, np.ndarray]]:
    """``(view, image, 2x3 matrix view -> input)`` for each of ``views``."""
    import cv2

    h, w = rgb.shape[:2]
    for view in views:
        m, (nw, nh) = rotation(view, w, h, tilt, canvas)
        img = cv2.warpAffine(rgb, m, (nw, nh), flags=cv2.INTER_LINEAR, borderMode=cv2.BORDER_REPLICATE)
        yield view, np.ascontiguousarray(img), cv2.invertAffineTransform(m)


def upright(rgb: np.ndarray) -> tuple[str, np.ndarray, np.ndarray]:
    """The photo itself as a view: ``("", rgb, identity)``."""
    return "", rgb, np.array([[1.0, 0, 0], [0, 1.0, 0]])


def edge_margins(h: int, w: int, pad: float) -> tuple[int, int]:
    """``(py, px)``: the rows and columns :func:`mirrored_edges` adds on each side of an
    ``h`` x ``w`` photo (the photo's frame in the ``edge`` view starts there)."""
    return int(round(pad * h)), int(round(pad * w))


def mirrored_edges(rgb: np.ndarray, pad: float) -> Iterator[tuple[str, np.ndarray, np.ndarray]]:
    """``("edge", image, view -> input)``: ``rgb`` reflected out by ``pad`` of each side; no
    view when ``pad`` is 0. A generator, like :func:`rotated_views`: the view is made when
    its turn comes."""
    import cv2

    if pad <= 0:
        return
    py, px = edge_margins(*rgb.shape[:2], pad)
    img = cv2.copyMakeBorder(rgb, py, py, px, px, cv2.BORDER_REFLECT)
    yield "edge", img, np.array([[1.0, 0, -px], [0, 1.0, -py]])


def gather(views, back: np.ndarray, w: int, h: int, find) -> list[tuple[Face, int, str]]:
    """``(face, member, view)`` in input pixels for every ``(view, image, view -> work matrix)``
    of ``views`` (an iterable: each view is made, searched and let go in turn); ``find(view, image)`` gives ``(face, member)`` in the view's pixels and ``back``
    (3x3) maps the work image (the photo as the detector saw it, perhaps shrunk) to the input
    (``w`` x ``h``). Boxes under 2 px are dropped."""
    found = []
    for view, img, inv in views:
        to_input = (back @ np.vstack([inv, [0, 0, 1.0]]))[:2]
        found += [map_face(f, to_input, w, h, view, k) for f, k in find(view, np.ascontiguousarray(img))]
    return [t for t in found if t[0].box[2] - t[0].box[0] >= 2 and t[0].box[3] - t[0].box[1] >= 2]


def map_face(f: Face, inv: np.ndarray, w: int, h: int, view: str, member: int) -> tuple[Face, int, str]:
    """``f`` (found on a view) in input pixels; ``inv`` maps view pixels to input pixels."""
    x0, y0, x1, y1 = f.box
    a = inv[:, :2]
    cx, cy = a @ np.array([(x0 + x1) / 2, (y0 + y1) / 2]) + inv[:, 2]
    rx, ry = (x1 - x0) / 2, (y1 - y0) / 2
    hx, hy = np.hypot(a[0, 0] * rx, a[0, 1] * ry), np.hypot(a[1, 0] * rx, a[1, 1] * ry)
    box = clip_box(cx - hx, cy - hy, cx + hx, cy + hy, w, h)
    lm = np.asarray(f.landmarks5, dtype=np.float64) @ inv[:, :2].T + inv[:, 2]
    dlib_box = f.dlib_box if view in ("", "tile") and f.dlib_box is not None else None
    if dlib_box is not None:
        bx = np.array([[dlib_box[0], dlib_box[1]], [dlib_box[2], dlib_box[3]]], dtype=np.float64) @ inv[:, :2].T + inv[:, 2]
        dlib_box = tuple(int(round(v)) for v in (bx[0, 0], bx[0, 1], bx[1, 0], bx[1, 1]))
    return Face(box=box, score=float(f.score), landmarks5=lm, landmark_layout=f.landmark_layout,
                dlib_box=dlib_box), member, view


#: a turned view's detection overlapping its cluster's upright box less than this is another face
APART_IOU = 0.1
#: a face only turned views found, with at least this fraction of its box under upright faces'
#: boxes, is dropped (the recall bench's rule: a face is covered at 70% of its pixels)
COVERED = 0.7


def covered_by(box, others) -> float:
    """The fraction of ``box``'s area under the union of the ``others`` boxes."""
    x0, y0, x1, y1 = box
    if x1 <= x0 or y1 <= y0 or not others:
        return 0.0
    under = np.zeros((y1 - y0, x1 - x0), dtype=bool)
    for ox0, oy0, ox1, oy1 in others:
        under[max(oy0 - y0, 0):max(oy1 - y0, 0), max(ox0 - x0, 0):max(ox1 - x0, 0)] = True
    return float(under.mean())


def fuse(found: list[tuple[Face, int, str]], threshold: float, min_votes: int = 1, anchors=None) -> list[Face]:
    """Weighted box fusion of ``(face, member, view)`` detections (module docstring): greedily
    by descending score, a detection joins the first cluster whose first (best) box it overlaps
    with IoU >= ``threshold`` (matching any member would chain clusters across neighbours); a
    cluster is kept when at least ``min_votes`` distinct members found it. Its
    box is the score-weighted mean of its upright detections' boxes when it has any (a face the
    upright pass finds keeps the box it always had), else of all its boxes; a turned view's
    detection that such an upright box overlaps with IoU under :data:`APART_IOU` (somewhere
    else: a second face under one large box) is fused again with the others of its kind, as
    faces of their own (recall first: a second face is not dropped for sharing a cluster). A
    face no upright detection placed that lies :data:`COVERED` under upright-placed faces is
    dropped (``anchors``: those boxes, given by the caller that re-fuses the apart ones)."""
    clusters: list[list[tuple[Face, int, str]]] = []
    for item in sorted(found, key=lambda t: -t[0].score):
        for c in clusters:
            if iou(c[0][0].box, item[0].box) >= threshold:
                c.append(item)
                break
        else:
            clusters.append([item])
    out, apart, turned = [], [], []
    for c in clusters:
        if len({member for _, member, _ in c}) < min_votes:
            continue
        upright = [f for f, _, view in c if view in ("", "tile")]
        placed = upright or [f for f, _, _ in c]
        boxes = np.array([f.box for f in placed], dtype=np.float64)
        wts = np.array([max(f.score, 1e-6) for f in placed])
        box = tuple(int(round(v)) for v in (boxes * wts[:, None]).sum(0) / wts.sum())
        if upright:  # a turned view's detection the upright box does not cover is a face of its own
            apart += [t for t in c if t[2] not in ("", "tile") and iou(t[0].box, box) < APART_IOU]
        best = upright[0] if upright else c[0][0]
        face = Face(box=box, score=max(f.score for f, _, _ in c),
                    landmarks5=best.landmarks5, landmark_layout=best.landmark_layout, dlib_box=best.dlib_box)
        (out if upright else turned).append(face)
    anchors = [f.box for f in out] if anchors is None else anchors
    out += [f for f in turned if covered_by(f.box, anchors) < COVERED]
    out += fuse(apart, threshold, 1, anchors) if apart else []  # no upright detections among them: no further split
    out.sort(key=lambda f: (f.box[1], f.box[0]))
    return out

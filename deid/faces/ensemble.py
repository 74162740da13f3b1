"""The ensemble detector: several detectors (of different model families), test-time
augmentation, and one fused list of faces.

Contract:

* every member (a detect section: ``backend`` and its params, so per-member thresholds are
  the members' own ``min_score``) runs on every view of the image: the image itself and, with
  ``tta``, its rotations by 90, 180 and 270 degrees and by ``+-tilt`` degrees (faces lying down
  or tilted, which upright detectors miss), and, with ``tiles``, overlapping tiles of a large
  photo upscaled ``tile_scale`` times (small faces in crowds);
* every detection is mapped back to the input's pixels (boxes: the axis-aligned bounds of the
  mapped corners, so a tilted face's box covers it; landmarks: mapped point by point);
* detections of all members and views are fused: greedily by descending score, a detection
  joins the first cluster whose box it overlaps with IoU >= ``iou``; a cluster's box is the
  score-weighted mean of its boxes (weighted box fusion), its score the highest, its landmarks
  and layout those of its best detection from an unrotated view (else its best one);
* detections from the extra views may be held to a higher score than the members' own
  thresholds (``tta_min_score``, ``tile_min_score``): a rotated or upscaled view shows a
  detector more non-faces at the scales it is least sure of;
* a cluster is kept when at least ``min_votes`` distinct members found it (1: recall first —
  a face any member finds is anonymized);
* faces carry the landmark layout of the member that placed them (``dlib5`` or ``arcface5``),
  so the plug-in declares no single layout; consumers already work per face.
"""

from __future__ import annotations

from typing import Any, Literal

import numpy as np
from pydantic import Field, ValidationError, field_validator
from pydantic_core import InitErrorDetails, PydanticCustomError

from deid.faces.base import DetectorBase, DetectorParams
from deid.faces.registry import DETECTORS, make_detector
from deid.faces.types import Face, clip_box, iou, shrink_for_detection
from deid.plugins import Licence, Needs, Plugin, validate_section

ROTATIONS = ("rot90", "rot180", "rot270", "tilt+", "tilt-")


class EnsembleParams(DetectorParams):
    min_score: float = Field(0.0, description="drop fused faces whose best member score is below this (the members' "
                             "own thresholds come first)")
    members: list[dict[str, Any]] = Field(
        default_factory=lambda: [{"backend": "centerface"}, {"backend": "dlib-hog"}], validate_default=True,
        description="the member detectors: detect sections (backend and its params; min_score is each member's "
                    "own threshold)")
    iou: float = Field(0.4, gt=0.0, lt=1.0, description="detections overlapping this much (IoU) are one face")
    min_votes: int = Field(1, ge=1, description="keep a face found by at least this many members")
    tta: list[Literal["rot90", "rot180", "rot270", "tilt+", "tilt-"]] = Field(
        default_factory=list, description="test-time augmentation: extra views rotated by 90/180/270 degrees or by "
                                          "+-tilt degrees")
    tilt: float = Field(35.0, gt=0.0, lt=90.0, description="degrees of the tilt+ / tilt- views")
    tta_min_score: float = Field(0.0, ge=0.0, description="detections from the rotated and tilted views must also "
                                 "score at least this (0: the members' own thresholds only)")
    tiles: bool = Field(False, description="also run on overlapping tiles of large photos, upscaled (small faces)")
    tile_min_side: int = Field(1200, ge=256, description="photos whose longer side is at least this get tiles")
    tile_scale: float = Field(2.0, gt=1.0, le=4.0, description="upscaling of each tile")
    tile_min_score: float = Field(0.0, ge=0.0, description="detections from the tiles must also score at least this "
                                  "(0: the members' own thresholds only)")

    @field_validator("members")
    @classmethod
    def _members(cls, v: list[dict]) -> list[dict]:
        if not v:
            raise ValueError("an ensemble needs at least one member")
        if any(m.get("backend") == "ensemble" for m in v):
            raise ValueError("an ensemble cannot be its own member")
        # each member validated by its own params model (errors name detect.members.N.<field>)
        out = []
        for i, m in enumerate(v):
            try:
                out.append(validate_section(DETECTORS, "backend", "", m).model_dump())
            except ValidationError as exc:
                raise ValidationError.from_exception_data("members", [
                    InitErrorDetails(type=PydanticCustomError("member", "{msg}", {"msg": e["msg"]}),
                                     loc=(i, *e["loc"]), input=e.get("input")) for e in exc.errors()]) from None
        return out


def _rotation(view: str, w: int, h: int, tilt: float) -> tuple[np.ndarray, tuple[int, int]]:
    """The 2x3 matrix that maps input pixels to the view's pixels, and the view's size."""
    import cv2

    angle = {"rot90": 90.0, "rot180": 180.0, "rot270": 270.0, "tilt+": tilt, "tilt-": -tilt}[view]
    m = cv2.getRotationMatrix2D((w / 2.0, h / 2.0), angle, 1.0)
    c, s = abs(m[0, 0]), abs(m[0, 1])
    nw, nh = int(round(h * s + w * c)), int(round(h * c + w * s))
    m[0, 2] += nw / 2.0 - w / 2.0
    m[1, 2] += nh / 2.0 - h / 2.0
    return m, (nw, nh)


def _map_face(f: Face, inv: np.ndarray, w: int, h: int, view: str, member: int) -> tuple[Face, int, str]:
    """``f`` (found on a view) in input pixels; ``inv`` maps view pixels to input pixels."""
    x0, y0, x1, y1 = f.box
    corners = np.array([[x0, y0], [x1, y0], [x0, y1], [x1, y1]], dtype=np.float64)
    pts = corners @ inv[:, :2].T + inv[:, 2]
    box = clip_box(pts[:, 0].min(), pts[:, 1].min(), pts[:, 0].max(), pts[:, 1].max(), w, h)
    lm = np.asarray(f.landmarks5, dtype=np.float64) @ inv[:, :2].T + inv[:, 2]
    dlib_box = f.dlib_box if view in ("", "tile") and f.dlib_box is not None else None
    if dlib_box is not None:
        bx = np.array([[dlib_box[0], dlib_box[1]], [dlib_box[2], dlib_box[3]]], dtype=np.float64) @ inv[:, :2].T + inv[:, 2]
        dlib_box = tuple(int(round(v)) for v in (bx[0, 0], bx[0, 1], bx[1, 0], bx[1, 1]))
    return Face(box=box, score=float(f.score), landmarks5=lm, landmark_layout=f.landmark_layout,
                dlib_box=dlib_box), member, view


def fuse(found: list[tuple[Face, int, str]], threshold: float, min_votes: int = 1) -> list[Face]:
    """Weighted box fusion of ``(face, member, view)`` detections (module docstring)."""
    clusters: list[list[tuple[Face, int, str]]] = []
    for item in sorted(found, key=lambda t: -t[0].score):
        for c in clusters:
            if iou(c[0][0].box, item[0].box) >= threshold:
                c.append(item)
                break
        else:
            clusters.append([item])
    out = []
    for c in clusters:
        if len({member for _, member, _ in c}) < min_votes:
            continue
        boxes = np.array([f.box for f, _, _ in c], dtype=np.float64)
        wts = np.array([max(f.score, 1e-6) for f, _, _ in c])
        bx = (boxes * wts[:, None]).sum(0) / wts.sum()
        upright = [f for f, _, view in c if view in ("", "tile")]
        best = upright[0] if upright else c[0][0]
        out.append(Face(box=tuple(int(round(v)) for v in bx), score=max(f.score for f, _, _ in c),
                        landmarks5=best.landmarks5, landmark_layout=best.landmark_layout, dlib_box=best.dlib_box))
    out.sort(key=lambda f: (f.box[1], f.box[0]))
    return out


class EnsembleDetector(DetectorBase):
    landmark_layout = "mixed"  # per face: the layout of the member that placed it

    def __init__(self, p: EnsembleParams):
        self.p = p
        self.members = [make_detector(m) for m in p.members]

    def _views(self, rgb: np.ndarray):
        """``(view name, image, 2x3 matrix view -> input)`` for every view."""
        import cv2

        h, w = rgb.shape[:2]
        yield "", rgb, np.array([[1.0, 0, 0], [0, 1.0, 0]])
        for view in self.p.tta:
            m, (nw, nh) = _rotation(view, w, h, self.p.tilt)
            img = cv2.warpAffine(rgb, m, (nw, nh), flags=cv2.INTER_LINEAR, borderMode=cv2.BORDER_REPLICATE)
            yield view, img, cv2.invertAffineTransform(m)
        if self.p.tiles and max(h, w) >= self.p.tile_min_side:
            s = self.p.tile_scale
            th, tw = (h + 1) // 2, (w + 1) // 2
            oy, ox = th // 5, tw // 5  # 20% overlap, so a face on a seam is whole in one tile
            for y in (0, max(0, h - th - oy)):
                for x in (0, max(0, w - tw - ox)):
                    tile = rgb[y:y + th + oy, x:x + tw + ox]
                    big = cv2.resize(tile, (round(tile.shape[1] * s), round(tile.shape[0] * s)),
                                     interpolation=cv2.INTER_CUBIC)
                    yield "tile", big, np.array([[1.0 / s, 0, x], [0, 1.0 / s, y]])

    def detect(self, rgb: np.ndarray) -> list[Face]:
        h, w = rgb.shape[:2]
        work, scale = shrink_for_detection(rgb, self.p.max_side)
        back = np.array([[1.0 / scale, 0, 0], [0, 1.0 / scale, 0], [0, 0, 1.0]])
        found = []
        for view, img, inv in self._views(work):
            img = np.ascontiguousarray(img)
            to_input = (back @ np.vstack([inv, [0, 0, 1.0]]))[:2]
            floor = self.p.tile_min_score if view == "tile" else self.p.tta_min_score if view else 0.0
            for k, det in enumerate(self.members):
                found += [_map_face(f, to_input, w, h, view, k) for f in det.detect(img) if f.score >= floor]
        found = [t for t in found if t[0].box[2] - t[0].box[0] >= 2 and t[0].box[3] - t[0].box[1] >= 2]
        return [f for f in fuse(found, self.p.iou, self.p.min_votes) if f.score >= self.p.min_score]


def _files(p: EnsembleParams) -> list:
    return [f for m in p.members for f in DETECTORS.get(m["backend"]).files({k: v for k, v in m.items()
                                                                             if k != "backend"})]


DETECTORS.register(Plugin(
    kind="detector", name="ensemble", params=EnsembleParams, factory=EnsembleDetector,
    summary="several detectors of different model families, optional rotated and tiled views, weighted box "
            "fusion; a face any member finds is kept",
    licence=Licence(code="Apache-2.0 (deid)", weights="the members' (see each member)"),
    needs=Needs(landmarks=None),
    model_files=_files,
    family="ensemble",
    module=__name__,
))

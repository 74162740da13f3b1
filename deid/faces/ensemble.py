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

from typing import Any

import numpy as np
from pydantic import Field, ValidationError, field_validator
from pydantic_core import InitErrorDetails, PydanticCustomError

from deid.faces.base import DetectorBase, DetectorParams
from deid.faces.registry import DETECTORS, make_detector
from deid.faces.types import Face, shrink_for_detection
from deid.faces.views import Canvas, View, fuse, gather, rotated_views, upright
from deid.plugins import Licence, Needs, Plugin, validate_section

class EnsembleParams(DetectorParams):
    min_score: float = Field(0.0, description="drop fused faces whose best member score is below this (the members' "
                             "own thresholds come first)")
    members: list[dict[str, Any]] = Field(
        default_factory=lambda: [{"backend": "centerface"}, {"backend": "dlib-hog"}], validate_default=True,
        description="the member detectors: detect sections (backend and its params; min_score is each member's "
                    "own threshold)")
    iou: float = Field(0.4, gt=0.0, lt=1.0, description="detections overlapping this much (IoU) are one face")
    min_votes: int = Field(1, ge=1, description="keep a face found by at least this many members")
    tta: list[View] = Field(
        default_factory=list, description="test-time augmentation: extra views rotated by 90/180/270 degrees or by "
                                          "+-tilt degrees")
    tilt: float = Field(35.0, gt=0.0, lt=90.0, description="degrees of the tilt+ / tilt- views")
    tilt_canvas: Canvas = Field(
        "whole", description="the tilted views' canvas: whole (the whole photo turned, ~2x the pixels) or frame "
                             "(the photo's own size, centred: half the cost; the corners turned out of it are not seen "
                             "in those views)")
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


class EnsembleDetector(DetectorBase):
    landmark_layout = "mixed"  # per face: the layout of the member that placed it

    def __init__(self, p: EnsembleParams):
        self.p = p
        self.members = [make_detector(m) for m in p.members]

    def _views(self, rgb: np.ndarray):
        """``(view name, image, 2x3 matrix view -> input)`` for every view."""
        import cv2

        h, w = rgb.shape[:2]
        yield upright(rgb)
        yield from rotated_views(rgb, self.p.tta, self.p.tilt, self.p.tilt_canvas)
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

        def find(view: str, img: np.ndarray):
            floor = self.p.tile_min_score if view == "tile" else self.p.tta_min_score if view else 0.0
            return [(f, k) for k, det in enumerate(self.members) for f in det.detect(img) if f.score >= floor]

        found = gather(self._views(work), back, w, h, find)
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

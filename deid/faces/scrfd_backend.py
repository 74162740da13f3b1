"""SCRFD detector from one ONNX file on onnxruntime: face boxes and five keypoints.

SCRFD (Guo et al., "Sample and Computation Redistribution for Efficient Face Detection",
2021; InsightFace) predicts, at strides 8, 16 and 32, a face score, the distances from an
anchor centre to the box's four edges, and five keypoints (eye centres, nose tip, mouth
corners: deid's ``arcface5`` layout), all in stride units. ``detect.backend: insightface``
runs SCRFD through insightface's own class from a model pack folder; this backend needs
only the detection ``.onnx`` (``detect.model_path``, a local path or any fsspec URI) and
decodes it here:

* the image (after ``max_side``) is letterboxed into ``det_size`` x ``det_size``: its longer
  side scaled to ``det_size`` (bilinear), the rest zero-padded on the right/bottom; pixels
  ``(x - 127.5) / 128`` in RGB order, as insightface feeds it;
* outputs: nine tensors, scores / boxes / keypoints for strides 8, 16, 32, in that order
  (insightface's convention); the anchors per location (2 in the published models) are
  read from the output sizes; anchor centres at ``(col, row) * stride``;
* ``distance2bbox`` / ``distance2kps``, score >= threshold (0.5 by default), NMS at IoU 0.4,
  and the letterbox scale undone.

A file with a fixed input size (the one ``make install`` extracts to ``models/scrfd.onnx``
is fixed at 640x640) runs at that size only; ``det_size`` must match it.

Weights: InsightFace's SCRFD models are released for non-commercial research only.
Models load once, in ``__init__``; instances are meant to live in a Ray actor.
"""

from __future__ import annotations

import numpy as np
from pydantic import Field

from deid.faces.base import DetectorParams
from deid.faces.centerface_backend import ViewedDetector, nms, resolve_model_path
from deid.faces.onnx_runtime import default_providers, session_options
from deid.faces.registry import DETECTORS
from deid.plugins import Licence, ModelFile, Needs, Plugin, path_field

STRIDES = (8, 16, 32)
NMS_IOU = 0.4


def resolve(model_path: str | None, storage_options: dict | None = None) -> str:
    """A local file for ``model_path`` (remote URIs are copied once into the local cache)."""
    if not model_path:
        raise ValueError("detect.backend scrfd needs detect.model_path: an SCRFD .onnx file with keypoints "
                         "(`make install` puts one at models/scrfd.onnx)")
    try:
        return resolve_model_path(model_path, storage_options)
    except FileNotFoundError:
        raise FileNotFoundError(f"{model_path}: SCRFD model file does not exist (detect.model_path)") from None


def letterbox(rgb: np.ndarray, size: int) -> tuple[np.ndarray, float]:
    """``(blob [1, 3, size, size], scale)``: ``rgb`` scaled by ``scale`` to fit, zero-padded."""
    import cv2

    h, w = rgb.shape[:2]
    nh, nw = (size, max(1, int(size * w / h))) if h > w else (max(1, int(size * h / w)), size)
    canvas = np.zeros((size, size, 3), dtype=np.uint8)
    canvas[:nh, :nw] = cv2.resize(rgb, (nw, nh))
    blob = (canvas.astype(np.float32) - 127.5) / 128.0
    return blob.transpose(2, 0, 1)[None], nh / h


def decode(outputs: list[np.ndarray], size: int, threshold: float) -> tuple[np.ndarray, np.ndarray, np.ndarray]:
    """The nine outputs of one ``size`` x ``size`` image -> ``(boxes [n, 4], scores [n],
    keypoints [n, 5, 2])`` in input pixels, score >= ``threshold``, before NMS."""
    boxes, scores, points = [], [], []
    for i, stride in enumerate(STRIDES):
        score, dist, kps = (np.asarray(outputs[i + k * len(STRIDES)], np.float32).reshape(-1, n)
                            for k, n in enumerate((1, 4, 10)))
        rows, cols = -(-size // stride), -(-size // stride)
        anchors = len(score) // (rows * cols)
        if anchors * rows * cols != len(score) or len(dist) != len(score) or len(kps) != len(score):
            raise ValueError(f"stride {stride}: {len(score)} scores, {len(dist)} boxes, {len(kps)} keypoint rows "
                             f"do not fit a {rows}x{cols} grid for a {size} px input")
        centres = np.stack(np.mgrid[:rows, :cols][::-1], axis=-1).reshape(-1, 2).astype(np.float32) * stride
        centres = np.repeat(centres, anchors, axis=0)
        hit = np.flatnonzero(score[:, 0] >= threshold)
        c, d, k = centres[hit], dist[hit] * stride, kps[hit].reshape(-1, 5, 2) * stride
        boxes.append(np.concatenate([c - d[:, :2], c + d[:, 2:]], axis=1))
        scores.append(score[hit, 0])
        points.append(c[:, None, :] + k)
    return (np.concatenate(boxes).astype(np.float64), np.concatenate(scores).astype(np.float64),
            np.concatenate(points).astype(np.float64))


class SCRFDDetector(ViewedDetector):
    """SCRFD boxes and five keypoints (``landmark_layout="arcface5"``) from one ONNX file.

    ``min_score`` > 0 is the score threshold; 0 keeps :attr:`DEFAULT_THRESHOLD`.
    """

    backend = "scrfd"
    landmark_layout = "arcface5"
    DEFAULT_THRESHOLD = 0.5
    #: ``Face.dlib_box`` (see CenterFaceDetector.DLIB_BOX), fitted the same way for models/scrfd.onnx
    #: on 299 public reference photos; on 297 others dlib's 5-point landmarks from it are 0.67%
    #: of the eye distance from the HOG-based ones (median; 1.9% from the raw SCRFD box).
    DLIB_BOX = (-0.096, 0.140, 1.042, 0.961)

    def __init__(self, model_path: str, det_size: int = 640, min_score: float = 0.0, max_side: int | None = None,
                 providers: list | None = None, storage_options: dict | None = None, threads: int | None = None):
        import onnxruntime

        self.model_file = resolve(model_path, storage_options)
        self.threshold = float(min_score) if min_score and min_score > 0 else self.DEFAULT_THRESHOLD
        self.max_side = max_side
        self.providers = list(providers) if providers else default_providers()
        opts = session_options() or onnxruntime.SessionOptions()
        if threads:  # otherwise: the CPUs Ray gave this actor, or onnxruntime's default outside Ray
            opts.intra_op_num_threads, opts.inter_op_num_threads = int(threads), 1
        try:
            self._sess = onnxruntime.InferenceSession(self.model_file, sess_options=opts, providers=self.providers)
        except Exception as exc:
            raise ValueError(f"{model_path}: not a readable ONNX model ({exc})") from exc
        inputs, outputs = self._sess.get_inputs(), self._sess.get_outputs()
        if len(inputs) != 1 or len(outputs) != 3 * len(STRIDES):
            raise ValueError(f"{model_path}: not an SCRFD detector with keypoints (expected one input and 9 outputs: "
                             f"scores, boxes, keypoints for strides 8/16/32; found {len(inputs)} inputs, "
                             f"{len(outputs)} outputs)")
        self._input, self._outputs = inputs[0].name, [o.name for o in outputs]
        fixed = [d for d in inputs[0].shape[2:4] if isinstance(d, int)]
        if fixed and (len(fixed) != 2 or fixed[0] != fixed[1] or fixed[0] != int(det_size)):
            raise ValueError(f"{model_path}: the model's input is fixed at {inputs[0].shape[2:4]}; "
                             f"set detect.det_size to match (got {det_size})")
        self.det_size = int(det_size)

    def raw(self, rgb: np.ndarray) -> tuple[np.ndarray, np.ndarray, np.ndarray]:
        """Boxes, scores and keypoints on ``rgb`` as given (no ``max_side``), after NMS."""
        blob, scale = letterbox(rgb, self.det_size)
        boxes, scores, pts = decode(self._sess.run(self._outputs, {self._input: blob}), self.det_size, self.threshold)
        keep = nms(boxes, scores, NMS_IOU)
        return boxes[keep] / scale, scores[keep], pts[keep] / scale



class SCRFDParams(DetectorParams):
    model_path: str = path_field(..., description="SCRFD detection .onnx with keypoints (e.g. models/scrfd.onnx from "
                                 "`make install`), local or any fsspec URI")
    det_size: int = Field(640, ge=32, multiple_of=32, description="letterbox input size, a multiple of 32 (a fixed-size "
                          "model's own size)")
    min_score: float = Field(0.0, description="drop detections scoring below this (0: the default 0.5)")


DETECTORS.register(Plugin(
    kind="detector", name="scrfd", params=SCRFDParams,
    summary="SCRFD from a single .onnx file (model_path) on onnxruntime, decoded by deid; boxes and five keypoints",
    factory=lambda p: SCRFDDetector(model_path=p.model_path, det_size=p.det_size, min_score=p.min_score,
                                    max_side=p.max_side),
    licence=Licence(code="MIT (deid's SCRFD decoder)",
                    weights="InsightFace SCRFD weights: non-commercial research only", non_commercial=True),
    needs=Needs(landmarks="arcface5", gpu=True),
    model_files=lambda p: [ModelFile("scrfd", resolve(p.model_path))],
    module=__name__,
))

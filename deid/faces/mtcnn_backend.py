"""MTCNN detector in torch: face boxes and five landmarks from a three-stage cascade.

MTCNN (Zhang et al., "Joint Face Detection and Alignment using Multi-task Cascaded
Convolutional Networks", 2016) runs three small CNNs: P-Net slides over an image pyramid
and proposes 12 px windows, R-Net re-scores and refines them on 24 px crops, O-Net on 48 px
crops gives the final boxes, scores and five landmarks (eye centres, nose tip, mouth
corners, each pair image-left first: deid's ``arcface5`` layout).

Weights: the P/R/O-Net state dicts that the ``facenet-pytorch`` wheel ships
(``facenet_pytorch/data/{pnet,rnet,onet}.pt``, MIT; ported from Zhang et al.'s released
MTCNN models through David Sandberg's facenet, both MIT). facenet-pytorch is installed with
``pip install --no-deps facenet-pytorch==2.6.0`` (``make install`` does it): its pins
(torch<2.3, numpy<2, torchvision) do not fit deid's, and deid never imports it (its package
``__init__`` imports torchvision). Its folder is found with ``importlib.util.find_spec``,
which locates a package without running it; ``detect.model_dir`` names another folder with
the three files. The files are read with ``torch.load(weights_only=True)``: tensors only,
no pickled code.

The networks and the cascade are written here and follow facenet-pytorch's ``detect_face``
numerics: pixels ``(x - 127.5) / 128``, a pyramid from ``12 / min_face_size`` by ``factor``
while the shorter side stays >= 12 px, area resampling, P-Net windows at stride 2 and size
12, NMS 0.5 per scale then 0.7, the box regression (stage 1 in box units, later stages in
``size + 1`` units), squared boxes, crops clamped to the image (not zero-padded) and
resized, score thresholds ``(0.6, 0.7, 0.7)``, and a final "min"-overlap NMS at 0.7. One
deviation: a proposal whose clamped crop is empty is dropped with its box (facenet-pytorch
skips the crop but keeps the box, which misaligns the two lists).

Models load once, in ``__init__``; instances are meant to live in a Ray actor.
"""

from __future__ import annotations

from typing import Annotated

import numpy as np
from pydantic import Field

from deid.faces.base import DetectorParams
from deid.faces.centerface_backend import ViewedDetector, nms
from deid.faces.mtcnn_nets import _net, weight_files
from deid.faces.registry import DETECTORS
from deid.plugins import Licence, ModelFile, Needs, Plugin, path_field

THRESHOLDS = (0.6, 0.7, 0.7)
FACTOR = 0.709
def pyramid(h: int, w: int, min_face_size: float, factor: float) -> list[float]:
    """P-Net's scales: from ``12 / min_face_size`` down by ``factor`` while the shorter
    side stays at least 12 px."""
    scale, side, scales = 12.0 / min_face_size, min(h, w) * 12.0 / min_face_size, []
    while side >= 12:
        scales.append(scale)
        scale, side = scale * factor, side * factor
    return scales


def proposals(reg: np.ndarray, prob: np.ndarray, scale: float, threshold: float):
    """P-Net output (``reg [4, h, w]``, face probability ``[h, w]``) -> windows ``[n, 4]``
    in image pixels, scores, regressions ``[n, 4]``."""
    ys, xs = np.nonzero(prob >= threshold)
    cell = np.stack([xs, ys], axis=1).astype(np.float32)
    boxes = np.concatenate([np.floor((2 * cell + 1) / scale), np.floor((2 * cell + 12) / scale)], axis=1)
    return boxes, prob[ys, xs], reg[:, ys, xs].T


def regress(boxes: np.ndarray, reg: np.ndarray, plus: float) -> np.ndarray:
    """Box regression: edges move by ``reg`` times the box size (``+ plus``)."""
    wh = boxes[:, 2:4] - boxes[:, 0:2] + plus
    return boxes[:, :4] + reg * np.concatenate([wh, wh], axis=1)


def square(boxes: np.ndarray) -> np.ndarray:
    """Boxes made square around their centres (side: the longer one)."""
    wh = boxes[:, 2:4] - boxes[:, 0:2]
    side = wh.max(axis=1, keepdims=True)
    x0y0 = boxes[:, 0:2] + wh * 0.5 - side * 0.5
    return np.concatenate([x0y0, x0y0 + side], axis=1)


def _survivors(boxes: np.ndarray, scores: np.ndarray, reg: np.ndarray, offset: int) -> np.ndarray:
    """The boxes a stage passes on: NMS at 0.7, its regression applied, made square."""
    keep = nms(boxes, scores, 0.7)
    return square(regress(boxes[keep], reg[keep], offset))


def nms_min(boxes: np.ndarray, scores: np.ndarray, threshold: float) -> np.ndarray:
    """Greedy NMS on overlap / the smaller box's area (inclusive pixel sizes), best first."""
    area = (boxes[:, 2] - boxes[:, 0] + 1) * (boxes[:, 3] - boxes[:, 1] + 1)
    order, keep = np.argsort(scores), []
    while order.size:
        i, rest = order[-1], order[:-1]
        keep.append(i)
        iw = np.maximum(0.0, np.minimum(boxes[i, 2], boxes[rest, 2]) - np.maximum(boxes[i, 0], boxes[rest, 0]) + 1)
        ih = np.maximum(0.0, np.minimum(boxes[i, 3], boxes[rest, 3]) - np.maximum(boxes[i, 1], boxes[rest, 1]) + 1)
        order = rest[iw * ih / np.minimum(area[i], area[rest]) <= threshold]
    return np.asarray(keep, dtype=np.int64)


class MTCNNDetector(ViewedDetector):
    """MTCNN boxes and five landmarks (``landmark_layout="arcface5"``).

    ``min_score`` > 0 replaces the O-Net threshold (the last of ``thresholds``).
    """

    backend = "mtcnn"
    landmark_layout = "arcface5"
    #: ``Face.dlib_box``: dlib's box convention in units of the MTCNN box (x0, y0, x1, y1
    #: relative to its top-left corner, as fractions of its width and height), fitted as
    #: CenterFaceDetector.DLIB_BOX is (bench/detectors.py's part 3 method: median over the 299 of 300
    #: public reference photos where HOG finds the face too). On 300 other photos dlib's
    #: 5-point landmarks from it are 0.66% of the eye distance from the HOG-based ones
    #: (median; 1.6% from the raw MTCNN box), the dlib embedding 0.043 from HOG's (0.074).
    DLIB_BOX = (-0.093, 0.117, 1.054, 0.978)

    def __init__(self, model_dir: str | None = None, min_face_size: float = 20, thresholds=THRESHOLDS,
                 factor: float = FACTOR, min_score: float = 0.0, max_side: int | None = None):
        import torch

        self.files = weight_files(model_dir)
        self.min_face_size, self.factor, self.max_side = float(min_face_size), float(factor), max_side
        self.thresholds = tuple(float(t) for t in thresholds)
        if min_score and min_score > 0:
            self.thresholds = (*self.thresholds[:2], float(min_score))
        self.nets = {}
        for name, path in self.files.items():
            net = _net(name)
            try:
                net.load_state_dict(torch.load(path, map_location="cpu", weights_only=True))
            except Exception as exc:
                raise ValueError(f"{path}: not facenet-pytorch's {name} state dict ({exc})") from exc
            self.nets[name] = net.eval().to(memory_format=torch.channels_last)

    def _crops(self, img, boxes: np.ndarray, size: int):
        """Crops of ``img`` (``[1, 3, h, w]`` float) inside ``boxes``, clamped to the image and
        resized to ``size`` (``None`` if none is), and which boxes had a non-empty crop."""
        import torch
        from torch.nn.functional import interpolate

        h, w = img.shape[2:]
        b = np.trunc(boxes).astype(np.int64)
        x0, y0 = np.maximum(b[:, 0], 1), np.maximum(b[:, 1], 1)
        x1, y1 = np.minimum(b[:, 2], w), np.minimum(b[:, 3], h)
        ok = (x1 > x0 - 1) & (y1 > y0 - 1)
        crops = [interpolate(img[:, :, y0[k] - 1:y1[k], x0[k] - 1:x1[k]], size=(size, size), mode="area")
                 for k in np.flatnonzero(ok)]
        return ((torch.cat(crops) - 127.5) * 0.0078125 if crops else None), ok

    def raw(self, rgb: np.ndarray) -> tuple[np.ndarray, np.ndarray, np.ndarray]:
        """Boxes ``[n, 4]``, scores ``[n]`` and landmarks ``[n, 5, 2]`` on ``rgb`` as given."""
        import torch
        from torch.nn.functional import interpolate

        empty = np.zeros((0, 4)), np.zeros(0), np.zeros((0, 5, 2))
        t1, t2, t3 = self.thresholds
        h, w = rgb.shape[:2]
        with torch.inference_mode():
            img = torch.from_numpy(rgb.astype(np.float32)).permute(2, 0, 1)[None]
            found = []
            for scale in pyramid(h, w, self.min_face_size, self.factor):
                im = interpolate(img, size=(int(h * scale + 1), int(w * scale + 1)), mode="area")
                reg, prob = self.nets["pnet"]((im - 127.5) * 0.0078125)
                b, s, r = proposals(reg[0].numpy(), prob[0, 1].numpy(), scale, t1)
                keep = nms(b, s, 0.5)
                found.append((b[keep], s[keep], r[keep]))
            if not found:  # smaller than 12 px at the first scale
                return empty
            boxes = _survivors(*(np.concatenate(x) for x in zip(*found)), offset=0)
            refined = self._refine(img, boxes, 24, "rnet", t2) if len(boxes) else None
            boxes = _survivors(*refined, offset=1) if refined is not None else boxes[:0]
            if not len(boxes):
                return empty

            refined = self._refine(img, boxes, 48, "onet", t3)
            if refined is None:
                return empty
            boxes, scores, reg, pts = refined
        wh = boxes[:, 2:4] - boxes[:, 0:2] + 1
        points = np.stack([pts[:, :5] * wh[:, :1] + boxes[:, :1] - 1, pts[:, 5:] * wh[:, 1:] + boxes[:, 1:2] - 1], axis=2)
        boxes = regress(boxes, reg, 1)
        keep = nms_min(boxes, scores, 0.7)
        return boxes[keep].astype(np.float64), scores[keep].astype(np.float64), points[keep].astype(np.float64)

    def _refine(self, img, boxes: np.ndarray, size: int, net: str, threshold: float):
        """One refinement stage (R-Net at 24 px, O-Net at 48 px): the boxes it keeps, their
        scores and regressions (and O-Net's landmarks); None when no crop could be made."""
        crops, ok = self._crops(img, boxes, size)
        if crops is None:
            return None
        *outs, prob = (x.numpy() for x in self.nets[net](crops))
        boxes, hit = boxes[ok], prob[:, 1] > threshold
        return (boxes[hit], prob[hit, 1], *(o[hit] for o in outs))



Score = Annotated[float, Field(ge=0, le=1)]


class MTCNNParams(DetectorParams):
    min_score: float = Field(0.0, description="O-Net score threshold (0: the last of thresholds, 0.7)")
    min_face_size: float = Field(20, ge=4, description="smallest face searched for, in pixels (the pyramid "
                                 "starts at 12 / min_face_size)")
    thresholds: tuple[Score, Score, Score] = Field(THRESHOLDS, description="P-Net, R-Net and O-Net score "
                                                   "thresholds (facenet-pytorch's defaults)")
    factor: float = Field(FACTOR, gt=0.1, lt=1, description="image pyramid step")
    model_dir: str | None = path_field(None, description="local folder with pnet.pt, rnet.pt and onet.pt (default: "
                                       "the ones the facenet-pytorch wheel ships)")


DETECTORS.register(Plugin(
    kind="detector", name="mtcnn", params=MTCNNParams,
    summary="MTCNN (P/R/O-Net cascade) in torch with facenet-pytorch's weights; boxes and five landmarks",
    factory=lambda p: MTCNNDetector(model_dir=p.model_dir, min_face_size=p.min_face_size, thresholds=p.thresholds,
                                    factor=p.factor, min_score=p.min_score, max_side=p.max_side),
    licence=Licence(code="MIT (deid's port of facenet-pytorch's MTCNN)",
                    weights="MIT (pnet/rnet/onet.pt shipped by facenet-pytorch, from Zhang et al.'s MTCNN)"),
    needs=Needs(landmarks="arcface5"),
    model_files=lambda p: [ModelFile(f"mtcnn-{n}", path) for n, path in weight_files(p.model_dir).items()],
    module=__name__,
))

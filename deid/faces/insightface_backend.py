"""insightface backends: SCRFD/RetinaFace detection with five keypoints, and the ArcFace
identity embedding, from ONNX files in a directory the manifest names (``detect.model_dir``).

deid never downloads insightface models: ``insightface.app.FaceAnalysis`` and the model
zoo's download path are not used. The directory must hold an unzipped model pack
(buffalo_l, buffalo_s, buffalo_sc or antelopev2 work); ``model_dir`` may be a local folder
or any fsspec URI (``s3://bucket/models/buffalo_l``), in which case its ``.onnx`` files are
copied once into a local cache (``$TMPDIR/deid-models/<hash of the URI>/``).

Files are told apart by their graph signature, with the rule insightface's own router
(``insightface.model_zoo.get_model``) applies: five or more outputs is a detector (scores,
boxes and keypoints per feature stride); one square NCHW input of 112 px or more (a
multiple of 16) is a recognition model; 192 px inputs are landmark models, 96 px inputs
the gender/age model, two inputs of 128 px the face swapper. The models themselves are
then loaded with ``get_model`` (so insightface's preprocessing and decoding are used), and
a file the router places differently is an error.

Models load once, in ``__init__``; instances are meant to live in a Ray actor.
"""

from __future__ import annotations

import contextlib
import hashlib
import os
import tempfile
from dataclasses import dataclass
from functools import lru_cache

import numpy as np

from pydantic import Field

from deid.faces.align import align
from deid.faces.base import DetectorBase, DetectorParams, RecognizerBase
from deid.faces.onnx_runtime import check_rgb as _check_rgb
from deid.faces.onnx_runtime import default_providers
from deid.faces.onnx_runtime import gpu_visible as _gpu_visible  # noqa: F401 - re-exported for tests
from deid.faces.onnx_runtime import provider_names as _provider_names
from deid.faces.onnx_runtime import session_options as _session_options
from deid.faces.registry import DETECTORS
from deid.faces.types import Face, clip_box, shrink_for_detection
from deid.plugins import Licence, ModelFile, Needs, Plugin, path_field

#: Packs known to work, with their detection and recognition files.
KNOWN_PACKS = {
    "buffalo_l": ("det_10g.onnx", "w600k_r50.onnx"),
    "buffalo_s": ("det_500m.onnx", "w600k_mbf.onnx"),
    "buffalo_sc": ("det_500m.onnx", "w600k_mbf.onnx"),
    "antelopev2": ("scrfd_10g_bnkps.onnx", "glintr100.onnx"),
}
_PACKS_HINT = "real packs that work: buffalo_l, buffalo_s, buffalo_sc, antelopev2"

DETECTION = "detection"
RECOGNITION = "recognition"


# --------------------------------------------------------------------------- files


def _cache_root() -> str:
    return os.path.join(tempfile.gettempdir(), "deid-models")


def _local_dir(model_dir: str, storage_options: dict | None = None) -> str:
    """A local folder holding the ``.onnx`` files of ``model_dir`` (copied if remote)."""
    if model_dir is None or not str(model_dir).strip():
        raise ValueError(
            "detect.model_dir is not set: the insightface backend needs a directory with an "
            f"unzipped insightface model pack ({_PACKS_HINT})"
        )
    model_dir = str(model_dir).strip()
    import fsspec

    fs, root = fsspec.core.url_to_fs(model_dir, **(storage_options or {}))
    protocols = fs.protocol if isinstance(fs.protocol, (tuple, list)) else (fs.protocol,)
    if "file" in protocols or "local" in protocols:
        path = os.path.abspath(os.path.expanduser(root))
        if not os.path.exists(path):
            raise FileNotFoundError(
                f"{model_dir}: model directory does not exist; expected a folder with the .onnx "
                f"files of an unzipped insightface model pack ({_PACKS_HINT})"
            )
        if not os.path.isdir(path):
            raise ValueError(
                f"{model_dir}: is a file, not a directory; detect.model_dir must be the folder "
                f"holding the pack's .onnx files ({_PACKS_HINT})"
            )
        return path

    root = root.rstrip("/")
    try:
        exists = fs.isdir(root)
    except Exception as exc:  # credentials, network: say which directory
        raise FileNotFoundError(f"{model_dir}: cannot list the model directory ({exc})") from exc
    if not exists:
        raise FileNotFoundError(
            f"{model_dir}: model directory does not exist; expected a folder with the .onnx "
            f"files of an unzipped insightface model pack ({_PACKS_HINT})"
        )
    cache = os.path.join(_cache_root(), hashlib.sha256(model_dir.encode()).hexdigest()[:16])
    os.makedirs(cache, exist_ok=True)
    remotes = sorted(fs.glob(f"{root}/*.onnx"))
    names = {os.path.basename(r) for r in remotes}
    for stale in os.listdir(cache):  # files since removed from model_dir
        if stale.endswith(".onnx") and stale not in names:
            with contextlib.suppress(FileNotFoundError):  # another actor got there first
                os.remove(os.path.join(cache, stale))
    for remote in remotes:
        name = os.path.basename(remote)
        local = os.path.join(cache, name)
        stamp = local + ".ukey"
        key = str(fs.ukey(remote))
        if os.path.exists(local) and os.path.exists(stamp):
            with open(stamp) as f:
                if f.read() == key:
                    continue
        tmp = f"{local}.{os.getpid()}.part"
        fs.get_file(remote, tmp)
        os.replace(tmp, local)  # atomic: actors on one node may copy at the same time
        with open(f"{stamp}.{os.getpid()}", "w") as f:
            f.write(key)
        os.replace(f"{stamp}.{os.getpid()}", stamp)
    return cache


def _graph_kind(path: str) -> str:
    """What insightface's router makes of ``path`` (same rule, read from the graph)."""
    import onnx

    try:
        model = onnx.load_model(path, load_external_data=False)
    except Exception as exc:
        raise ValueError(f"{path}: not a readable ONNX model ({exc})") from exc
    graph = model.graph
    init = {t.name for t in graph.initializer}
    inputs = [i for i in graph.input if i.name not in init]  # as onnxruntime lists them
    if len(graph.output) >= 5:
        return DETECTION
    if not inputs:
        return "unknown"
    dims = inputs[0].type.tensor_type.shape.dim
    if len(dims) != 4:
        return "unknown"
    h, w = (d.dim_value if d.HasField("dim_value") else None for d in dims[2:4])
    if h == 192 and w == 192:
        return "landmark"
    if h == 96 and w == 96:
        return "attribute"
    if len(inputs) == 2 and h == 128 and w == 128:
        return "swapper"
    if h is not None and h == w and h >= 112 and h % 16 == 0:
        return RECOGNITION
    return "unknown"


@lru_cache(maxsize=256)
def _graph_kind_cached(path: str, size: int, mtime_ns: int) -> str:
    del size, mtime_ns  # part of the cache key only
    return _graph_kind(path)


def classify(path: str) -> str:
    """``"detection"``, ``"recognition"``, ``"landmark"``, ``"attribute"``, ``"swapper"``
    or ``"unknown"`` for one ONNX file."""
    st = os.stat(path)
    return _graph_kind_cached(os.path.abspath(path), st.st_size, st.st_mtime_ns)


@dataclass(frozen=True)
class ModelPack:
    directory: str  # local folder the files are in
    detection: str
    recognition: str | None


def find_models(model_dir: str, storage_options: dict | None = None) -> ModelPack:
    """Locate the detection (required) and recognition (optional) ONNX files."""
    local = _local_dir(model_dir, storage_options)
    files = sorted(os.path.join(local, n) for n in os.listdir(local) if n.lower().endswith(".onnx"))
    if not files:
        hint = ""
        nested = sorted(
            d for d in os.listdir(local)
            if os.path.isdir(os.path.join(local, d))
            and any(n.lower().endswith(".onnx") for n in os.listdir(os.path.join(local, d)))
        )
        if nested:
            hint = f" (there are .onnx files in {os.path.join(model_dir, nested[0])}: point detect.model_dir there)"
        raise FileNotFoundError(
            f"no .onnx files in {model_dir}{hint}; expected an unzipped insightface model pack "
            f"with a detection model (SCRFD/RetinaFace .onnx); {_PACKS_HINT} — unzip one into {model_dir}"
        )
    kinds = {p: classify(p) for p in files}
    det = [p for p in files if kinds[p] == DETECTION]
    rec = [p for p in files if kinds[p] == RECOGNITION]
    found = ", ".join(f"{os.path.basename(p)}: {k}" for p, k in kinds.items())
    if not det:
        raise FileNotFoundError(
            f"no detection model (SCRFD/RetinaFace .onnx) in {model_dir} (found {found}); "
            f"{_PACKS_HINT} — unzip one into {model_dir}"
        )
    if len(det) > 1:
        raise ValueError(
            f"more than one detection model in {model_dir}: "
            f"{', '.join(os.path.basename(p) for p in det)}; keep one model pack per directory"
        )
    if len(rec) > 1:
        raise ValueError(
            f"more than one recognition model in {model_dir}: "
            f"{', '.join(os.path.basename(p) for p in rec)}; keep one model pack per directory"
        )
    return ModelPack(directory=local, detection=det[0], recognition=rec[0] if rec else None)


def model_files(model_dir: str, storage_options: dict | None = None) -> list[str]:
    """Absolute, sorted paths of the ONNX files the insightface backend uses from
    ``model_dir``: the detector and, when the pack has one, the recognition model (the
    pack's landmark and gender/age models are not used). Remote directories are copied
    to the local cache first; the paths are those of the local copies."""
    pack = find_models(model_dir, storage_options)
    return sorted(p for p in (pack.detection, pack.recognition) if p)


# --------------------------------------------------------------------------- runtime


def _load(path: str, kind: str, providers: list, model_dir: str):
    """Load ``path`` with insightface's router and check it lands where expected."""
    from insightface.model_zoo import get_model

    kwargs = {"providers": providers}
    opts = _session_options()
    if opts is not None:
        kwargs["sess_options"] = opts
    model = get_model(path, **kwargs)
    taskname = getattr(model, "taskname", None)
    if model is None or taskname != kind:
        raise ValueError(
            f"{path} (in {model_dir}): insightface loads it as {taskname or 'nothing'}, "
            f"expected a {kind} model"
        )
    ctx_id = -1 if _provider_names(providers) == ["CPUExecutionProvider"] else 0
    return model, ctx_id


class InsightFaceDetector(DetectorBase):
    """SCRFD/RetinaFace detector from ``model_dir``; faces carry insightface's five
    keypoints (``landmark_layout="arcface5"``: eye centres, nose tip, mouth corners).

    ``min_score`` > 0 is the detection threshold; 0 keeps the model's own default (0.5).
    """

    backend = "insightface"
    landmark_layout = "arcface5"
    DEFAULT_THRESHOLD = 0.5

    def __init__(self, model_dir: str, det_size: int = 640, min_score: float = 0.0,
                 max_side: int | None = None, providers: list | None = None,
                 storage_options: dict | None = None):
        self.model_dir = model_dir
        self.det_size = int(det_size)
        self.min_score = float(min_score)
        self.threshold = self.min_score if self.min_score > 0 else self.DEFAULT_THRESHOLD
        self.max_side = max_side
        pack = find_models(model_dir, storage_options)
        self.model_file = pack.detection
        self.providers = list(providers) if providers else default_providers()
        self._model, ctx_id = _load(pack.detection, DETECTION, self.providers, model_dir)
        if not getattr(self._model, "use_kps", False):
            raise ValueError(
                f"{pack.detection} (in {model_dir}): the detector outputs no keypoints, and "
                "alignment needs five; use a pack's *kps detector (det_10g, det_500m, "
                "scrfd_10g_bnkps)"
            )
        self._model.prepare(ctx_id=ctx_id, input_size=(self.det_size, self.det_size),
                            det_thresh=self.threshold)

    def detect(self, rgb: np.ndarray) -> list[Face]:
        import cv2

        rgb = _check_rgb(rgb)
        h, w = rgb.shape[:2]
        work, scale = shrink_for_detection(rgb, self.max_side)
        bgr = cv2.cvtColor(work, cv2.COLOR_RGB2BGR)  # insightface takes OpenCV's BGR
        dets, kpss = self._model.detect(bgr, input_size=(self.det_size, self.det_size))
        faces: list[Face] = []
        if kpss is None and len(dets):
            raise RuntimeError(f"{self.model_file}: detector returned boxes without keypoints")
        for i in range(len(dets)):
            x0, y0, x1, y1, score = (float(v) for v in dets[i][:5])
            if score < self.threshold:
                continue
            box = clip_box(x0 / scale, y0 / scale, x1 / scale, y1 / scale, w, h)
            if box[2] - box[0] < 2 or box[3] - box[1] < 2:
                continue
            pts = np.asarray(kpss[i], dtype=np.float64).reshape(5, 2) / scale
            faces.append(Face(box=box, score=score, landmarks5=pts, landmark_layout="arcface5"))
        faces.sort(key=lambda f: (f.box[1], f.box[0]))
        return faces


def arcface5_from_68(pts68: np.ndarray) -> np.ndarray:
    """insightface's five points from the 68-point layout: eye centres (image left, then
    right), nose tip, mouth corners (image left, then right)."""
    p = np.asarray(pts68, dtype=np.float64)
    return np.stack([p[36:42].mean(axis=0), p[42:48].mean(axis=0), p[30], p[48], p[54]])


class InsightFaceEmbedder(RecognizerBase):
    """ArcFace identity embedding (the pack's recognition model) on the 112x112 crop
    aligned to the ArcFace five-point template.

    Embeddings are L2-normalised; distances are cosine distances (1 - cos, 0..2). The
    ``same_person_threshold`` (0.6 = 1 - 0.40, the similarity insightface's own
    recognition defaults use) is on this scale, not comparable to dlib's Euclidean 0.6,
    uncalibrated by deid, and not a default of the checks (they always use dlib).
    """

    same_person_threshold = 0.6

    def __init__(self, model_dir: str, providers: list | None = None, storage_options: dict | None = None):
        self.model_dir = model_dir
        pack = find_models(model_dir, storage_options)
        if pack.recognition is None:
            raise FileNotFoundError(
                f"no recognition model (ArcFace .onnx, 112x112 input) in {model_dir}; "
                f"{_PACKS_HINT} — unzip one into {model_dir}"
            )
        self.model_file = pack.recognition
        self.name = f"insightface:{os.path.splitext(os.path.basename(pack.recognition))[0]}"
        self.providers = list(providers) if providers else default_providers()
        self._model, ctx_id = _load(pack.recognition, RECOGNITION, self.providers, model_dir)
        self._model.prepare(ctx_id=ctx_id)
        self.input_size = int(self._model.input_size[0])
        batch = self._model.input_shape[0]
        self._batch = batch if isinstance(batch, int) and batch > 0 else None

    @property
    def dim(self) -> int:
        d = self._model.output_shape[-1]
        return int(d) if isinstance(d, int) else -1

    def locate(self, rgb: np.ndarray, faces: list[Face]) -> list[np.ndarray]:
        """The five ArcFace-layout points of each face (from insightface's keypoints, or
        derived from 68-point landmarks); dlib's 5-point layout has no mouth: an error."""
        out = []
        for f in faces:
            if f.landmark_layout == "arcface5":
                out.append(np.asarray(f.landmarks5, dtype=np.float64).reshape(5, 2))
            elif f.landmarks68 is not None:
                out.append(arcface5_from_68(f.landmarks68))
            else:
                raise ValueError(
                    f"the insightface embedder needs arcface5 or 68-point landmarks, got {f.landmark_layout!r}"
                )
        return out

    def embed(self, rgb: np.ndarray, shapes: list[np.ndarray]) -> np.ndarray:
        import cv2

        if not shapes:
            return np.zeros((0, max(self.dim, 0)), dtype=np.float64)
        rgb = _check_rgb(rgb)
        crops = [
            cv2.cvtColor(align(rgb, s, self.input_size, layout="arcface5")[0], cv2.COLOR_RGB2BGR)
            for s in shapes
        ]
        step = self._batch or len(crops)
        feats = np.concatenate([self._model.get_feat(crops[i:i + step]) for i in range(0, len(crops), step)])
        feats = np.asarray(feats, dtype=np.float64).reshape(len(crops), -1)
        norms = np.linalg.norm(feats, axis=1, keepdims=True)
        return feats / np.maximum(norms, 1e-12)


    @staticmethod
    def distance(a: np.ndarray, b: np.ndarray) -> np.ndarray:
        """Cosine distance ``1 - cos(a, b)`` along the last axis (inputs normalised here)."""
        a = np.asarray(a, dtype=np.float64)
        b = np.asarray(b, dtype=np.float64)
        a = a / np.maximum(np.linalg.norm(a, axis=-1, keepdims=True), 1e-12)
        b = b / np.maximum(np.linalg.norm(b, axis=-1, keepdims=True), 1e-12)
        return np.clip(1.0 - np.sum(a * b, axis=-1), 0.0, 2.0)


class InsightFaceParams(DetectorParams):
    model_dir: str = path_field(..., description="directory with the detection (and recognition) ONNX files of an "
                           "insightface model pack; local or any fsspec URI")
    det_size: int = Field(640, ge=64, description="detector input size")
    min_score: float = Field(0.0, description="drop detections scoring below this (0: the model's default 0.5)")


DETECTORS.register(Plugin(
    kind="detector", name="insightface", params=InsightFaceParams,
    summary="SCRFD/RetinaFace from an insightface model pack you provide (model_dir), five keypoints",
    factory=lambda p: InsightFaceDetector(model_dir=p.model_dir, det_size=p.det_size, min_score=p.min_score,
                                          max_side=p.max_side),
    licence=Licence(code="MIT (insightface)", weights="insightface model packs: non-commercial research only",
                    non_commercial=True),
    needs=Needs(landmarks="arcface5", gpu=True),
    family="scrfd",  # the packs ship SCRFD detectors
    # the checks use dlib, not the pack's recognizer
    model_files=lambda p: [ModelFile(f"insightface:{os.path.basename(path)}", path)
                           for path in [find_models(p.model_dir).detection]],
    module=__name__,
))

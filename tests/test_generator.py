"""The ``generator`` latent kind and its built-in backend, MobileStyleGAN (deid.latent.generator,
deid.latent.mobilestylegan, deid.latent.irtorch, deid.faces.align's ffhq crop).

Real weights (the random-face wheel's OpenVINO IR, installed by ``make install``), real
detectors, real photos of ../shared/data. CPU only; the CUDA path of the PyTorch port is the
same code on another device (docs/latent.md). About 30 s on 2 cores: one OpenVINO generator
shared by the tests, one PyTorch forward and backward at 1024 px.
"""

from __future__ import annotations

import shutil
import xml.etree.ElementTree as ET
from pathlib import Path

import cv2
import numpy as np
import pytest

from conftest import REPO, base_manifest
from deid.faces.align import FFHQ_TEMPLATES, ffhq_estimate, ffhq_recipe
from deid.faces.types import iou
from deid.latent import load_latent_model
from deid.latent import mobilestylegan as msg
from deid.latent.generator import GeneratorModel, stats_path

#: a real face from the bundled samples (in every checkout; ../shared/data may be absent in CI)
PHOTO = REPO / "manifests" / "samples" / "lfw" / "Celine_Dion" / "Celine_Dion_0001.jpg"
#: torch vs OpenVINO, max abs on the [-1, 1] image: two float32 engines that round differently
#: (measured 1.3e-5 to 1.5e-4 over seeds; OpenVINO alone is 1.1e-4 off a float64 evaluation of
#: the same graph, PyTorch 3.4e-5: docs/latent.md)
MAX_ABS = 3e-4
MEAN_ABS = 5e-6

pytestmark = pytest.mark.skipif(msg.wheel_data_dir() is None, reason=f"random-face is not installed: {msg.INSTALL_HINT}")


def _rgb(path: Path) -> np.ndarray:
    from deid.io.decode import decode_image

    return decode_image(path.read_bytes(), max_pixels=10**8, name=str(path)).rgb


def _detector(backend: str, **params):
    from deid.config.schema import detect_section
    from deid.faces import make_detector

    return make_detector(detect_section(backend=backend, **params))


@pytest.fixture(scope="module")
def model(tmp_path_factory) -> GeneratorModel:
    return load_latent_model({"backend": "mobilestylegan", "runtime": "openvino", "stats_samples": 2000,
                              "cache_dir": str(tmp_path_factory.mktemp("wstats"))})


@pytest.fixture(scope="module")
def strangers(model) -> np.ndarray:
    return model.generate(2, np.random.default_rng(2024), psi=0.7)


# ---------------------------------------------------------------------------- the IR generates faces
def test_the_ir_draws_faces_that_two_detector_families_find(model, strangers):
    assert model.layout == "ffhq" and (model.z_dim, model.w_dim, model.num_ws, model.resolution) == (512, 512, 23, 1024)
    assert strangers.shape == (2, 1024, 1024, 3) and strangers.dtype == np.uint8
    assert np.abs(strangers[0].astype(int) - strangers[1]).mean() > 10  # two different faces
    hog, cf = _detector("dlib-hog"), _detector("centerface")
    for img in strangers:
        small = cv2.resize(img, (512, 512), interpolation=cv2.INTER_AREA)
        a, b = hog.detect(small), cf.detect(small)
        assert len(a) == 1 and len(b) == 1, (len(a), len(b))
        assert iou(a[0].box, b[0].box) > 0.3
        # an FFHQ-aligned face: its box is centred in the crop, half of it wide
        for box in (a[0].box, b[0].box):
            cx, cy = (box[0] + box[2]) / 2 / 512, (box[1] + box[3]) / 2 / 512
            assert abs(cx - 0.5) < 0.08 and 0.45 < cy < 0.7 and 0.3 < (box[2] - box[0]) / 512 < 0.7


def test_encode_is_refused_and_decode_takes_w(model):
    with pytest.raises(NotImplementedError, match="no encoder|without an encoder"):
        model.encode(np.zeros((1, 1024, 1024, 3), np.uint8))
    assert model.decode(np.zeros((0, 512))).shape == (0, 1024, 1024, 3)
    with pytest.raises(ValueError, match=r"\[n, 512\]"):
        model.decode(np.zeros((1, 7)))


# ---------------------------------------------------------------------------- the PyTorch port
def test_torch_port_matches_openvino_on_the_same_ws_and_gives_a_gradient(model):
    import torch

    paths = msg.model_paths()
    gen = msg.torch_generator(paths, "cpu")
    assert (gen.z_dim, gen.w_dim, gen.num_ws, gen.resolution) == (512, 512, 23, 1024) and gen.differentiable
    assert gen.ws_layers[0] == "m.conv1.conv" and gen.ws_layers[-1] == "m.layers.6.to_img.conv"
    # the mapping: the same w
    z = np.random.default_rng(5).standard_normal((3, 512)).astype(np.float32)
    w_ov = model.map(z)
    with torch.no_grad():
        w_t = gen.mapping(torch.from_numpy(z)).double().numpy()
    assert np.abs(w_t - w_ov).max() < 1e-4
    # w+ with two styles mixed (coarse layers from one w, fine from another): both runtimes
    # read layer k from ws[:, k]
    ws = model.broadcast(w_ov[:1]).astype(np.float32)
    ws[:, 12:] = w_ov[1]
    ws_t = torch.from_numpy(ws).requires_grad_(True)
    img_t = gen.synthesis(ws_t)
    img_ov = model.synthesize(ws)
    diff = np.abs(img_t.detach().numpy() - img_ov)
    assert img_t.shape == (1, 3, 1024, 1024)
    assert diff.max() <= MAX_ABS and diff.mean() <= MEAN_ABS, (diff.max(), diff.mean())
    # a gradient w.r.t. every layer's w, through the whole graph
    img_t[:, :, 384:640, 384:640].mean().backward()
    g = ws_t.grad
    assert g is not None and torch.isfinite(g).all()
    assert (g.abs().sum(dim=2) > 0).all(), "a w+ layer gets no gradient"
    # the edit that gives OpenVINO w+ input keeps the IR's own output on a plain w
    import openvino as ov

    core, _, synthesis = msg.read_models(paths)
    plain = core.compile_model(synthesis, "CPU", msg.OV_CONFIG)(w_ov[:1].astype(np.float32))[0]
    edited = model.synthesize(model.broadcast(w_ov[:1]))
    assert np.abs(plain - edited).max() < 1e-4
    assert isinstance(plain, np.ndarray) and ov.__version__


def test_mapping_gradient_is_the_derivative(model):
    """The interpreter's autograd against finite differences, in float64, on the mapping graph."""
    import torch

    from deid.latent.irtorch import IRModule

    _, mapping, _ = msg.read_models(msg.model_paths())
    net = IRModule(mapping).double()
    z = torch.from_numpy(np.random.default_rng(1).standard_normal((1, 512))).requires_grad_(True)
    v = torch.from_numpy(np.random.default_rng(2).standard_normal(512))
    (net(z) @ v).sum().backward()
    d = torch.from_numpy(np.random.default_rng(3).standard_normal((1, 512)))
    eps = 1e-6
    with torch.no_grad():
        fd = ((net(z + eps * d) @ v).sum() - (net(z - eps * d) @ v).sum()) / (2 * eps)
    assert float((z.grad * d).sum()) == pytest.approx(float(fd), rel=1e-5)


# ---------------------------------------------------------------------------- w statistics
def _changed_copy(src: dict[str, Path], dst: Path) -> Path:
    """The IR files with one weight matrix of the mapping network scaled by 1.05."""
    dst.mkdir()
    for name, p in src.items():
        shutil.copy(p, dst / name)
    root = ET.parse(dst / "MappingNetwork.xml").getroot()
    data = next(layer.find("data") for layer in root.iter("layer")
                if layer.get("type") == "Const" and layer.find("data").get("element_type") == "f32"
                and layer.find("data").get("shape").replace(" ", "") == "512,512")
    off, size = int(data.get("offset")), int(data.get("size"))
    raw = bytearray((dst / "MappingNetwork.bin").read_bytes())
    raw[off:off + size] = (np.frombuffer(bytes(raw[off:off + size]), np.float32) * np.float32(1.05)).tobytes()
    (dst / "MappingNetwork.bin").write_bytes(bytes(raw))
    return dst


def test_w_statistics_are_cached_deterministic_and_redone_for_other_weights(tmp_path):
    cache = tmp_path / "cache"
    spec = {"backend": "mobilestylegan", "runtime": "openvino", "stats_samples": 300, "cache_dir": str(cache)}
    a = load_latent_model(spec)
    st = a.stats
    assert a.stats_computed and stats_path(a.weights_fingerprint, 300, 0, cache).is_file()
    assert st.samples == 300 and st.components.shape == (512, 512)
    assert np.allclose(st.components @ st.components.T, np.eye(512), atol=1e-8)
    assert (np.diff(st.component_std) <= 1e-12).all() and (st.lower < st.upper).all() and (st.std > 0).all()
    assert np.allclose(st.from_pca(st.to_pca(a.mean[None])), a.mean[None])
    for v in (a.lower, a.upper, a.mean, a.std):
        assert v.dtype == np.float64 and v.shape == (512,)
    # the same weights: read back, bit for bit
    b = load_latent_model(spec)
    assert not b.stats_computed and b.fingerprint == a.fingerprint
    for f in ("mean", "std", "lower", "upper", "components", "component_std"):
        assert np.array_equal(getattr(b.stats, f), getattr(st, f)), f
    # other weights: another fingerprint, statistics computed for them, even when a file of
    # the first model sits where theirs should be
    other_dir = _changed_copy(msg.model_paths(), tmp_path / "changed")
    other_fp = msg.weights_fingerprint(msg.file_shas(msg.model_paths(str(other_dir)), pinned=False))
    assert other_fp != a.weights_fingerprint
    planted = stats_path(other_fp, 300, 0, cache)
    shutil.copy(stats_path(a.weights_fingerprint, 300, 0, cache), planted)
    c = load_latent_model({**spec, "model_dir": str(other_dir)})
    assert c.stats_computed and c.weights_fingerprint == other_fp and c.fingerprint != a.fingerprint
    assert not np.allclose(c.mean, a.mean)
    assert not load_latent_model({**spec, "model_dir": str(other_dir)}).stats_computed  # now cached
    # more samples: their own file
    assert load_latent_model({**spec, "stats_samples": 400}).stats_computed


def test_model_files_are_declared_and_pinned():
    from deid.latent.registry import LATENT_MODELS

    plugin = LATENT_MODELS.get("mobilestylegan")
    files = plugin.files({})
    assert sorted(f.name for f in files) == sorted(f"mobilestylegan:{n}" for n in msg.FILES)
    assert all(Path(f.path).is_file() for f in files)
    assert msg.file_shas(msg.model_paths(), pinned=True) == msg.PINNED_SHA256
    assert plugin.licence.non_commercial and "NVIDIA Source Code License-NC" in plugin.licence.weights
    assert plugin.needs.latent == "generator" and plugin.needs.landmarks == "ffhq"
    with pytest.raises(FileNotFoundError, match="latent.model_dir"):
        msg.model_paths("/nonexistent/folder")


# ---------------------------------------------------------------------------- FFHQ alignment
def test_ffhq_alignment_round_trips_a_real_face(model):
    import dlib

    from deid.faces.models import dlib_model_path
    from deid.latent.base import paste_back

    rgb = _rgb(PHOTO)
    face = _detector("dlib-hog", landmarks=68).detect(rgb)[0]
    crop, m = model.align(rgb, face)
    assert crop.shape == (1024, 1024, 3) and np.allclose(m, ffhq_recipe(face.landmarks68, 1024))
    # the landmarks of the aligned crop, mapped back, land on the photo's
    sp = dlib.shape_predictor(dlib_model_path("dlib-shape68"))
    box = np.array(face.box, dtype=np.float64).reshape(2, 2) @ m[:, :2].T + m[:, 2]
    pts = sp(crop, dlib.rectangle(*[int(round(v)) for v in box.reshape(-1)]))
    in_crop = np.array([(p.x, p.y) for p in pts.parts()], dtype=np.float64)
    inv = cv2.invertAffineTransform(m)
    back = in_crop @ inv[:, :2].T + inv[:, 2]
    err = np.linalg.norm(back - face.landmarks68, axis=1)
    assert np.median(err) < 1.5 and err.max() < 6, (np.median(err), err.max())  # px, on a ~110 px face
    # the eyes sit where FFHQ puts them
    eyes = (in_crop[36:42].mean(axis=0) + in_crop[42:48].mean(axis=0)) / 2 / 1024
    assert abs(eyes[0] - 0.5) < 0.02 and 0.43 < eyes[1] < 0.5
    # warped into the crop and pasted back through the face oval: the photo again
    out = paste_back(rgb, crop, m, model.mask())
    x0, y0, x1, y1 = face.box
    assert np.abs(out[y0:y1, x0:x1].astype(int) - rgb[y0:y1, x0:x1]).mean() < 3
    # 5-point faces land near the 68-point recipe
    for layout, pts5 in (("dlib5", face.landmarks5), ("arcface5", _detector("centerface").detect(rgb)[0].landmarks5)):
        assert set(FFHQ_TEMPLATES) >= {layout}
        m5 = ffhq_estimate(pts5, 1024, layout)
        corners = np.array([[0, 0], [1024, 0], [0, 1024], [1024, 1024]], dtype=np.float64) @ inv[:, :2].T + inv[:, 2]
        moved = corners @ m5[:, :2].T + m5[:, 2]
        assert np.linalg.norm(moved - np.array([[0, 0], [1024, 0], [0, 1024], [1024, 1024]]), axis=1).mean() < 90, layout


def test_the_generator_draws_in_the_ffhq_frame(model, strangers):
    """The recipe on a generated face's own 68 points is (close to) the identity."""
    det = _detector("dlib-hog", landmarks=68)
    for img in strangers:
        small = cv2.resize(img, (512, 512), interpolation=cv2.INTER_AREA)
        f = det.detect(small)[0]
        m = ffhq_recipe(f.landmarks68 * 2.0, 1024)
        assert np.abs(m[:, :2] - np.eye(2)).max() < 0.06 and np.abs(m[:, 2]).max() < 60, m


# ---------------------------------------------------------------------------- manifests
class _StrangerPaste:
    """A test method that needs a generator: a stranger pasted on every face."""

    name = "test-stranger-paste"
    dp_scope = "none"
    release = None

    def __init__(self, params, latent=None):
        self.model = latent if isinstance(latent, GeneratorModel) else load_latent_model(latent)
        self._mask = self.model.mask()

    def __call__(self, rgb, faces, rng=None):
        from deid.facts import FaceFacts
        from deid.latent.base import paste_back

        out = np.array(rgb, copy=True)
        rng = rng if rng is not None else np.random.default_rng()
        for f in faces:
            paste_back(out, self.model.generate(1, rng, psi=0.7)[0], self.model.matrix(f), self._mask, inplace=True)
        return out, [FaceFacts(method=self.name) for _ in faces]


@pytest.fixture
def generator_method():
    from pydantic import BaseModel, ConfigDict

    from deid.anonymize.registry import METHODS
    from deid.plugins import Licence, Needs, Plugin

    class P(BaseModel):
        model_config = ConfigDict(extra="forbid")

    plugin = METHODS.register(Plugin(kind="method", name=_StrangerPaste.name, params=P,
                                     factory=lambda p, latent=None: _StrangerPaste(p, latent),
                                     summary="test: a generated stranger on every face", licence=Licence(code="test"),
                                     needs=Needs(latent="generator"), module=__name__))
    yield plugin
    METHODS.unregister(plugin.name)


def _manifest(tmp_path, **sections):
    from deid.config import manifest_from_dict

    inp = tmp_path / "in"
    inp.mkdir(exist_ok=True)
    return manifest_from_dict(base_manifest(inp, tmp_path, **sections))


def test_a_manifest_must_accept_the_non_commercial_weights(tmp_path, generator_method):
    from deid.config import ManifestError

    gen = {"latent": {"backend": "mobilestylegan"}, "anonymize": {"method": generator_method.name}}
    with pytest.raises(ManifestError) as err:
        _manifest(tmp_path, **gen)
    text = str(err.value)
    assert "licences.accept_non_commercial" in text and "mobilestylegan" in text and "latent.backend" in text
    m = _manifest(tmp_path, **gen, licences={"accept_non_commercial": ["mobilestylegan"]})
    assert ("latent.backend", "mobilestylegan") in [(w, p.name) for w, p in m.plugins_used()]
    # a latent section that no method uses needs no acceptance
    _manifest(tmp_path, latent={"backend": "mobilestylegan"}, anonymize={"method": "blur"})


def test_a_method_gets_the_latent_kind_it_needs(tmp_path, generator_method):
    from deid.config import ManifestError

    with pytest.raises(ManifestError, match=r"latent.backend.*needs a generator.*mobilestylegan.*pca is a codec"):
        _manifest(tmp_path, anonymize={"method": generator_method.name}, latent={"backend": "pca"})
    # deepblur and dp-image serve either kind (codec|generator: the generator path searches the latent)
    _manifest(tmp_path, anonymize={"method": "deepblur"}, latent={"backend": "mobilestylegan"},
              licences={"accept_non_commercial": ["mobilestylegan"]})


def test_a_run_with_the_generator_records_the_acceptance_per_record(tmp_path, generator_method, model):
    """End to end: a stranger pasted on a real face, the audit row names the accepted weights."""
    import pandas as pd

    from deid.pipeline import run_job

    inp = tmp_path / "in"
    inp.mkdir()
    shutil.copy(PHOTO, inp / "face.jpg")
    (inp / "broken.jpg").write_bytes(b"not an image")
    m = _manifest(tmp_path, anonymize={"method": generator_method.name},
                  latent={"backend": "mobilestylegan", "runtime": "openvino", "stats_samples": 2000,
                          "cache_dir": model.card["w_stats"]["cache"].rsplit("/", 1)[0]},
                  licences={"accept_non_commercial": ["mobilestylegan"]},
                  checks={"residual": "off"})
    res = run_job(m, engine="local", progress=False)
    df = pd.read_parquet(res.records_uri).set_index("input_uri")
    ok = df.loc[str(inp / "face.jpg")]
    assert ok.status == "released" and ok.n_faces == 1
    assert list(ok.non_commercial_accepted) == [{"plugin": "mobilestylegan", "field": "latent.backend",
                                                 "weights": msg.LICENCE.weights}]
    assert ok.faces[0]["id_distance"] > 0.6  # a stranger's face
    assert {f["name"] for f in ok.model_fingerprints} >= {f"mobilestylegan:{n}" for n in msg.FILES}
    bad = df.loc[str(inp / "broken.jpg")]
    assert bad.status == "failed" and bad.non_commercial_accepted is None  # the weights never saw it

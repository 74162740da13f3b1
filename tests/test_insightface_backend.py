"""insightface backend, end to end on tiny ONNX models built here.

Real model packs cannot be downloaded in tests, so the tests write small ONNX graphs with
exactly the signatures insightface's router accepts:

* a SCRFD-style detector (dynamic 1x3xHxW input; score, box and keypoint outputs for
  strides 8/16/32 with two anchors per cell) whose heads are constant 1x1 convolutions
  except one stride-32 cell, which fires: its box and keypoints are known in closed form,
  so the test can check insightface's decoding and NMS, and deid's scaling and clipping,
  on a real photo. Its score also leans on the mean red-minus-blue of the image the
  network sees, so a pure-red image fires everywhere and a pure-blue one nowhere: that
  pins down the RGB->BGR hand-over (insightface swaps channels back itself).
* an ArcFace-style recognizer (Nx3x112x112 -> Nx512): 16x16 average pooling, then a fixed
  random linear map; the test recomputes the embedding in numpy from deid's own aligned
  crop and compares.
* a 192 px landmark model and a 96 px gender/age model, as in the buffalo packs.
"""

from __future__ import annotations

import os
import tempfile

import fsspec
import numpy as np
import onnx
import pytest
from onnx import TensorProto, helper, numpy_helper
from PIL import Image

from deid.config.schema import detect_section
from deid.faces import make_detector
from deid.faces.align import align
from deid.faces.insightface_backend import (
    InsightFaceDetector,
    InsightFaceEmbedder,
    _gpu_visible,
    arcface5_from_68,
    classify,
    find_models,
    model_files,
)
from deid.faces.types import Face

from conftest import LFW as _SAMPLES_LFW  # noqa: E402  (bundled samples: tests run from a clean clone)

LFW = str(_SAMPLES_LFW)
PHOTO_A = os.path.join(LFW, "Celine_Dion", "Celine_Dion_0001.jpg")
PHOTO_B = os.path.join(LFW, "Andre_Agassi")

DET_SIZE = 160  # det input 160x160: stride-32 grid of 5x5 cells
CELL = (2, 2)  # (row, col) of the stride-32 cell that fires; anchor centre (64, 64)
BOX_OFF = np.array([1.0, 1.0, 4.0, 4.0], dtype=np.float32)  # l, t, r, b in strides
KPS_OFF = np.array([-0.5, -0.3, 0.5, -0.3, 0.0, 0.2, -0.4, 0.7, 0.4, 0.7], dtype=np.float32)
P = 20.0  # one-hot logit swing: +10 at CELL, -10 elsewhere
Q = 8.0  # weight of mean(R) - mean(B) (network channels 0 and 2, normalised)
EMB_DIM = 512


# --------------------------------------------------------------------------- model builders


def _const(name, arr):
    return numpy_helper.from_array(np.asarray(arr), name=name)


def _head(nodes, inits, pool, tag, bias, width):
    """1x1 conv with zero weights and ``bias`` (2 anchors x width channels), laid out as
    SCRFD does: (1, 2w, h, w) -> (h*w*2, width)."""
    inits.append(_const(f"{tag}_w", np.zeros((2 * width, 3, 1, 1), np.float32)))
    inits.append(_const(f"{tag}_b", np.asarray(bias, np.float32)))
    nodes.append(helper.make_node("Conv", [pool, f"{tag}_w", f"{tag}_b"], [f"{tag}_c"]))
    return f"{tag}_c"


def _flatten_head(nodes, inits, src, out, width):
    inits.append(_const(f"{out}_shape", np.array([-1, width], np.int64)))
    nodes.append(helper.make_node("Transpose", [src], [f"{out}_t"], perm=[0, 2, 3, 1]))
    nodes.append(helper.make_node("Reshape", [f"{out}_t", f"{out}_shape"], [out]))


def build_detector(path, kps=True, cell=CELL):
    nodes, inits = [], []
    x = "input.1"
    strides = (8, 16, 32)
    # mean(ch0) - mean(ch2) of the network input, per anchor: (1, 2, 1, 1)
    nodes.append(helper.make_node("ReduceMean", [x], ["img_mean"], axes=[2, 3], keepdims=1))
    gate = np.zeros((2, 3, 1, 1), np.float32)
    gate[:, 0], gate[:, 2] = Q, -Q
    inits.append(_const("gate_w", gate))
    nodes.append(helper.make_node("Conv", ["img_mean", "gate_w"], ["gate"]))
    scores, boxes, points = [], [], []
    for s in strides:
        pool = f"pool{s}"
        nodes.append(helper.make_node("AveragePool", [x], [pool], kernel_shape=[s, s], strides=[s, s]))
        if s == 32:
            logits = _head(nodes, inits, pool, f"score{s}", [-P / 2, -P / 2 - 1.0], 1)
            # one-hot of ``cell`` on the dynamic (h, w) grid
            inits += [_const("i2", np.array(2, np.int64)), _const("i3", np.array(3, np.int64)),
                      _const("zero", np.array(0, np.int64)), _const("one", np.array(1, np.int64)),
                      _const("row", np.array(cell[0], np.int64)), _const("col", np.array(cell[1], np.int64)),
                      _const("col_shape", np.array([1, 1, -1, 1], np.int64)),
                      _const("row_shape", np.array([1, 1, 1, -1], np.int64)),
                      _const("swing", np.array([P, P], np.float32).reshape(1, 2, 1, 1))]
            nodes += [
                helper.make_node("Shape", [pool], ["shp"]),
                helper.make_node("Gather", ["shp", "i2"], ["gh"]),
                helper.make_node("Gather", ["shp", "i3"], ["gw"]),
                helper.make_node("Range", ["zero", "gh", "one"], ["ry"]),
                helper.make_node("Range", ["zero", "gw", "one"], ["rx"]),
                helper.make_node("Equal", ["ry", "row"], ["ey"]),
                helper.make_node("Equal", ["rx", "col"], ["ex"]),
                helper.make_node("Cast", ["ey"], ["fy"], to=TensorProto.FLOAT),
                helper.make_node("Cast", ["ex"], ["fx"], to=TensorProto.FLOAT),
                helper.make_node("Reshape", ["fy", "col_shape"], ["fy4"]),
                helper.make_node("Reshape", ["fx", "row_shape"], ["fx4"]),
                helper.make_node("Mul", ["fy4", "fx4"], ["onehot"]),
                helper.make_node("Mul", ["onehot", "swing"], ["onehot2"]),
                helper.make_node("Add", [logits, "onehot2"], ["logit_a"]),
                helper.make_node("Add", ["logit_a", "gate"], ["logit32"]),
            ]
            logits = "logit32"
        else:
            logits = _head(nodes, inits, pool, f"score{s}", [-20.0, -20.0], 1)
        nodes.append(helper.make_node("Sigmoid", [logits], [f"prob{s}"]))
        _flatten_head(nodes, inits, f"prob{s}", f"score_{s}", 1)
        scores.append((f"score_{s}", 1, s))
        b = _head(nodes, inits, pool, f"bbox{s}", np.tile(BOX_OFF, 2), 4)
        _flatten_head(nodes, inits, b, f"bbox_{s}", 4)
        boxes.append((f"bbox_{s}", 4, s))
        if kps:
            k = _head(nodes, inits, pool, f"kps{s}", np.tile(KPS_OFF, 2), 10)
            _flatten_head(nodes, inits, k, f"kps_{s}", 10)
            points.append((f"kps_{s}", 10, s))
    outputs = [helper.make_tensor_value_info(n, TensorProto.FLOAT, [f"n{s}", w]) for n, w, s in scores + boxes + points]
    graph = helper.make_graph(
        nodes, "tiny_scrfd",
        [helper.make_tensor_value_info(x, TensorProto.FLOAT, [1, 3, "height", "width"])],
        outputs, initializer=inits,
    )
    _save(graph, path)


def rec_weights(dim=EMB_DIM):
    rng = np.random.default_rng(7)
    return rng.standard_normal((147, dim)).astype(np.float32), rng.standard_normal(dim).astype(np.float32) * 0.1


def build_recognizer(path, dim=EMB_DIM):
    w, b = rec_weights(dim)
    nodes = [
        helper.make_node("AveragePool", ["input.1"], ["pooled"], kernel_shape=[16, 16], strides=[16, 16], name="pool"),
        helper.make_node("Flatten", ["pooled"], ["flat"], axis=1, name="flatten"),
        helper.make_node("Gemm", ["flat", "fc_w", "fc_b"], ["embedding"], name="fc"),
    ]
    graph = helper.make_graph(
        nodes, "tiny_arcface",
        [helper.make_tensor_value_info("input.1", TensorProto.FLOAT, ["batch", 3, 112, 112])],
        [helper.make_tensor_value_info("embedding", TensorProto.FLOAT, ["batch", dim])],
        initializer=[_const("fc_w", w), _const("fc_b", b)],
    )
    _save(graph, path)


def build_pooled(path, size, out_dim):
    """A one-output model on a size x size input (landmark: 192, gender/age: 96)."""
    nodes = [
        helper.make_node("GlobalAveragePool", ["data"], ["g"], name="gap"),
        helper.make_node("Flatten", ["g"], ["f"], axis=1, name="flatten"),
        helper.make_node("Gemm", ["f", "w", "b"], ["fc1"], name="fc"),
    ]
    graph = helper.make_graph(
        nodes, "tiny_aux",
        [helper.make_tensor_value_info("data", TensorProto.FLOAT, [1, 3, size, size])],
        [helper.make_tensor_value_info("fc1", TensorProto.FLOAT, [1, out_dim])],
        initializer=[_const("w", np.zeros((3, out_dim), np.float32)), _const("b", np.zeros(out_dim, np.float32))],
    )
    _save(graph, path)


def _save(graph, path):
    model = helper.make_model(graph, opset_imports=[helper.make_opsetid("", 13)])
    model.ir_version = 8
    onnx.checker.check_model(model)
    onnx.save(model, str(path))


# --------------------------------------------------------------------------- fixtures


@pytest.fixture(scope="module")
def pack(tmp_path_factory):
    """A buffalo-like pack: detector, recognizer, 2d106 landmarks, gender/age."""
    d = tmp_path_factory.mktemp("tiny_buffalo")
    build_detector(d / "det_tiny.onnx")
    build_recognizer(d / "w600k_tiny.onnx")
    build_pooled(d / "2d106det.onnx", 192, 212)
    build_pooled(d / "genderage.onnx", 96, 3)
    (d / "README.txt").write_text("not a model")
    return d


@pytest.fixture(scope="module")
def detector(pack):
    return InsightFaceDetector(str(pack), det_size=DET_SIZE)


@pytest.fixture(scope="module")
def embedder(pack):
    return InsightFaceEmbedder(str(pack))


@pytest.fixture(scope="module")
def photo():
    return np.asarray(Image.open(PHOTO_A).convert("RGB"))


def expected(h, w):
    """Box (unclipped) and keypoints the tiny detector gives for an h x w image."""
    # insightface: the longer side goes to DET_SIZE, int() of the other; scale from the height
    new_h = DET_SIZE if h >= w else int(DET_SIZE * h / w)
    det_scale = new_h / h
    cx, cy = CELL[1] * 32.0, CELL[0] * 32.0
    box = np.array([cx - BOX_OFF[0] * 32, cy - BOX_OFF[1] * 32, cx + BOX_OFF[2] * 32, cy + BOX_OFF[3] * 32]) / det_scale
    kps = (np.array([cx, cy] * 5) + KPS_OFF.astype(np.float64) * 32).reshape(5, 2) / det_scale
    return box, kps


# --------------------------------------------------------------------------- model files


def test_model_files_picks_detector_and_recognizer(pack):
    files = model_files(str(pack))
    assert files == [str(pack / "det_tiny.onnx"), str(pack / "w600k_tiny.onnx")]
    assert all(os.path.isabs(p) for p in files)
    assert classify(str(pack / "2d106det.onnx")) == "landmark"
    assert classify(str(pack / "genderage.onnx")) == "attribute"
    p = find_models(str(pack))
    assert (p.detection, p.recognition) == (files[0], files[1])
    assert model_files(f"file://{pack}") == files


def test_classification_agrees_with_insightface_router(pack):
    from insightface.model_zoo import get_model

    tasks = {"detection": "detection", "recognition": "recognition", "landmark": "landmark_2d_106", "attribute": "genderage"}
    for name in ("det_tiny.onnx", "w600k_tiny.onnx", "2d106det.onnx", "genderage.onnx"):
        path = str(pack / name)
        model = get_model(path, providers=["CPUExecutionProvider"])
        assert model.taskname == tasks[classify(path)], name


def test_model_files_from_fsspec_uri(pack, tmp_path, monkeypatch):
    monkeypatch.setattr(tempfile, "tempdir", str(tmp_path))  # the local cache goes here
    fs = fsspec.filesystem("memory")
    for name in ("det_tiny.onnx", "w600k_tiny.onnx", "genderage.onnx"):
        fs.pipe(f"/tinypack/{name}", (pack / name).read_bytes())
    try:
        files = model_files("memory://tinypack")
        assert [os.path.basename(p) for p in files] == ["det_tiny.onnx", "w600k_tiny.onnx"]
        for p in files:
            assert p.startswith(str(tmp_path))
            assert open(p, "rb").read() == (pack / os.path.basename(p)).read_bytes()
        # a changed remote file is copied again
        fs.pipe("/tinypack/w600k_tiny.onnx", (pack / "det_tiny.onnx").read_bytes())
        with pytest.raises(ValueError, match="more than one detection model"):
            model_files("memory://tinypack")
        # a file removed from the remote directory leaves the local copy too
        fs.rm("/tinypack/w600k_tiny.onnx")
        assert [os.path.basename(p) for p in model_files("memory://tinypack")] == ["det_tiny.onnx"]
    finally:
        fs.rm("/tinypack", recursive=True)


def test_missing_directory_names_it(tmp_path):
    missing = tmp_path / "no_such_pack"
    with pytest.raises(FileNotFoundError, match="no_such_pack.*does not exist"):
        model_files(str(missing))
    with pytest.raises(FileNotFoundError, match="no_such_pack"):
        InsightFaceDetector(str(missing))


def test_directory_without_detector_names_it(pack, tmp_path):
    d = tmp_path / "rec_only"
    d.mkdir()
    (d / "w600k_tiny.onnx").write_bytes((pack / "w600k_tiny.onnx").read_bytes())
    with pytest.raises(FileNotFoundError) as err:
        model_files(str(d))
    msg = str(err.value)
    assert str(d) in msg and "no detection model" in msg and "buffalo_l" in msg and "w600k_tiny.onnx: recognition" in msg
    with pytest.raises(FileNotFoundError, match="no detection model"):
        make_detector(detect_section(backend="insightface", model_dir=str(d)))


def test_empty_directory_and_nested_pack(pack, tmp_path):
    outer = tmp_path / "antelope"
    outer.mkdir()
    with pytest.raises(FileNotFoundError, match=r"no \.onnx files in .*antelope"):
        model_files(str(outer))
    # the antelopev2 zip unpacks into a folder of its own name
    inner = outer / "antelopev2"
    inner.mkdir()
    (inner / "det.onnx").write_bytes((pack / "det_tiny.onnx").read_bytes())
    with pytest.raises(FileNotFoundError, match="antelopev2: point detect.model_dir there"):
        model_files(str(outer))
    assert model_files(str(inner)) == [str(inner / "det.onnx")]


def test_unset_model_dir():
    with pytest.raises(ValueError, match="model_dir is not set"):
        model_files(None)


def test_detector_without_keypoints_is_refused(tmp_path):
    build_detector(tmp_path / "det_nokps.onnx", kps=False)
    assert model_files(str(tmp_path)) == [str(tmp_path / "det_nokps.onnx")]
    with pytest.raises(ValueError, match="no keypoints"):
        InsightFaceDetector(str(tmp_path), det_size=DET_SIZE)


# --------------------------------------------------------------------------- detection


def test_detect_real_photo_box_scaled_and_clipped(detector, photo):
    h, w = photo.shape[:2]
    assert (h, w) == (250, 250)
    faces = detector.detect(photo)
    # two anchors fire on the same cell with the same box: NMS keeps the stronger one
    assert len(faces) == 1
    f = faces[0]
    assert isinstance(f, Face) and f.landmark_layout == "arcface5"
    box, kps = expected(h, w)
    np.testing.assert_allclose(box, [50, 50, 300, 300], atol=1e-4)  # beyond the image on the right/bottom
    assert f.box == (50, 50, 250, 250)
    assert all(type(v) is int for v in f.box)
    assert isinstance(f.score, float) and 0.99 < f.score <= 1.0
    assert f.landmarks5.shape == (5, 2) and f.landmarks5.dtype == np.float64
    np.testing.assert_allclose(f.landmarks5, kps, atol=1e-3)
    assert f.landmarks68 is None


def test_detect_non_square_image(detector, photo):
    img = np.ascontiguousarray(photo[:200])  # 200 high, 250 wide
    faces = detector.detect(img)
    assert len(faces) == 1
    box, kps = expected(200, 250)
    assert box[0] == pytest.approx(50, abs=1e-3)  # det_scale 160/250
    assert faces[0].box == (50, 50, 250, 200)
    np.testing.assert_allclose(faces[0].landmarks5, kps, atol=1e-3)


def test_max_side_maps_back_to_original(pack, photo):
    det = InsightFaceDetector(str(pack), det_size=DET_SIZE, max_side=125)
    faces = det.detect(photo)
    assert len(faces) == 1
    assert faces[0].box == (50, 50, 250, 250)
    _, kps = expected(250, 250)
    np.testing.assert_allclose(faces[0].landmarks5, kps, atol=1e-2)


def test_channel_order_and_sorting(detector):
    red = np.zeros((DET_SIZE, DET_SIZE, 3), np.uint8)
    red[..., 0] = 255
    blue = red[..., ::-1].copy()
    faces = detector.detect(red)
    # red lifts every stride-32 cell over the threshold; NMS leaves a grid of them
    assert len(faces) >= 2
    assert [f.box for f in faces] == sorted((f.box for f in faces), key=lambda b: (b[1], b[0]))
    assert len({f.box[1] for f in faces}) >= 2 and len({f.box[0] for f in faces}) >= 2
    for f in faces:
        x0, y0, x1, y1 = f.box
        assert 0 <= x0 < x1 <= DET_SIZE and 0 <= y0 < y1 <= DET_SIZE
    # blue pushes even the one-hot cell under it
    assert detector.detect(blue) == []


def test_min_score_is_the_threshold(pack, photo):
    assert InsightFaceDetector(str(pack), det_size=DET_SIZE).threshold == 0.5
    strict = InsightFaceDetector(str(pack), det_size=DET_SIZE, min_score=0.9999999)
    assert strict.threshold == 0.9999999
    assert strict.detect(photo) == []


def test_detect_rejects_non_rgb(detector):
    with pytest.raises(ValueError, match="HxWx3"):
        detector.detect(np.zeros((32, 32), np.uint8))


def test_make_detector_builds_insightface(pack, photo):
    det = make_detector(detect_section(backend="insightface", model_dir=str(pack), det_size=DET_SIZE))
    assert isinstance(det, InsightFaceDetector)
    assert det.det_size == DET_SIZE and det.providers == ["CPUExecutionProvider"]
    assert det.model_file == str(pack / "det_tiny.onnx")
    assert [f.box for f in det.detect(photo)] == [(50, 50, 250, 250)]


def test_gpu_visibility_from_environment(monkeypatch):
    monkeypatch.setenv("CUDA_VISIBLE_DEVICES", "")
    assert _gpu_visible() is False
    monkeypatch.setenv("CUDA_VISIBLE_DEVICES", "-1")
    assert _gpu_visible() is False
    monkeypatch.setenv("CUDA_VISIBLE_DEVICES", "0")
    assert _gpu_visible() is True


# --------------------------------------------------------------------------- embedding


def _expected_embedding(rgb, lm):
    crop, _ = align(rgb, lm, 112, layout="arcface5")
    x = (crop.astype(np.float64) - 127.5) / 127.5  # RGB: what the network sees
    pooled = x.reshape(7, 16, 7, 16, 3).mean(axis=(1, 3)).transpose(2, 0, 1).reshape(-1)
    w, b = rec_weights()
    e = pooled @ w.astype(np.float64) + b
    return e / np.linalg.norm(e)


def test_embedder_on_detected_faces(detector, embedder, photo, pack):
    assert embedder.name == "insightface:w600k_tiny" and embedder.dim == EMB_DIM
    assert embedder.model_file == str(pack / "w600k_tiny.onnx")
    faces = detector.detect(photo)
    emb = embedder.embed_faces(photo, faces)
    assert emb.shape == (1, EMB_DIM) and emb.dtype == np.float64
    np.testing.assert_allclose(np.linalg.norm(emb, axis=1), 1.0, atol=1e-9)
    np.testing.assert_allclose(emb[0], _expected_embedding(photo, faces[0].landmarks5), atol=1e-4)
    assert embedder.distance(emb[0], emb[0]) == pytest.approx(0.0, abs=1e-9)
    assert embedder.embed_faces(photo, []).shape == (0, EMB_DIM)


def test_embedder_batches_and_distances(embedder, photo):
    other = np.asarray(Image.open(os.path.join(PHOTO_B, sorted(os.listdir(PHOTO_B))[0])).convert("RGB"))
    _, lm = expected(250, 250)
    shapes = [lm, lm + [3.0, -2.0]]
    ea = embedder.embed(photo, shapes)
    eb = embedder.embed(other, shapes[:1])
    assert ea.shape == (2, EMB_DIM)
    for i, s in enumerate(shapes):
        np.testing.assert_allclose(ea[i], _expected_embedding(photo, s), atol=1e-4)
    d = embedder.distance(ea[:1], eb)
    assert d.shape == (1,) and 0.0 < d[0] <= 2.0
    assert embedder.distance(ea[0], -ea[0]) == pytest.approx(2.0)
    assert embedder.distance(ea[0], 5.0 * ea[0]) == pytest.approx(0.0, abs=1e-9)


def test_embedder_landmark_layouts(embedder, photo):
    _, lm = expected(250, 250)
    pts68 = np.zeros((68, 2))
    pts68[36:42], pts68[42:48] = lm[0], lm[1]
    pts68[30], pts68[48], pts68[54] = lm[2], lm[3], lm[4]
    np.testing.assert_allclose(arcface5_from_68(pts68), lm)
    from68 = Face(box=(50, 50, 200, 200), score=1.0, landmarks5=np.zeros((5, 2)), landmark_layout="dlib5", landmarks68=pts68)
    np.testing.assert_allclose(embedder.embed_faces(photo, [from68])[0], _expected_embedding(photo, lm), atol=1e-4)
    dlib_only = Face(box=(50, 50, 200, 200), score=1.0, landmarks5=np.zeros((5, 2)), landmark_layout="dlib5")
    with pytest.raises(ValueError, match="arcface5 or 68-point"):
        embedder.embed_faces(photo, [dlib_only])


def test_embedder_needs_recognition_model(pack, tmp_path):
    (tmp_path / "det_tiny.onnx").write_bytes((pack / "det_tiny.onnx").read_bytes())
    with pytest.raises(FileNotFoundError, match=f"no recognition model .* in {tmp_path}"):
        InsightFaceEmbedder(str(tmp_path))


"""SCRFD backend: one .onnx file, decoded by deid.

The real model is ``models/scrfd.onnx`` (``make install`` extracts it, sha256-pinned, from the
``scrfd==0.3.0`` sdist); its tests skip, saying so, only where the file is absent. The decoder
is also checked without it, on the tiny SCRFD-style graph of tests/test_insightface_backend.py
(closed-form box and keypoints) and on hand-made outputs.
"""

from __future__ import annotations

import hashlib

import cv2
import fsspec
import numpy as np
import pytest
from pydantic import ValidationError

from conftest import GROUP, LFW, REPO, lfw_images
from deid.faces import make_detector
from deid.faces.registry import DETECTORS
from deid.faces.scrfd_backend import SCRFDDetector, SCRFDParams, decode, letterbox, resolve
from test_faces import _recall, rgb, voc_truth
from test_insightface_backend import DET_SIZE, build_detector, expected
from test_mtcnn_backend import check_dlib_box, check_group_faces, check_lfw_faces, check_max_side

MODEL = REPO / "models" / "scrfd.onnx"
MODEL_SHA256 = "9c162a817c7dd32d35d1f1c6ae6445032d6e73c6c5fe61d8b5b663ba8bc86b30"  # as pinned in the Makefile
ABSENT = f"{MODEL} is absent: `make install` (or `make models/scrfd.onnx`) extracts it from the scrfd==0.3.0 sdist"
needs_model = pytest.mark.skipif(not MODEL.is_file(), reason=ABSENT)


@pytest.fixture(scope="module")
def scrfd():
    if not MODEL.is_file():
        pytest.skip(ABSENT)
    return make_detector({"backend": "scrfd", "model_path": str(MODEL)})


# ---------------------------------------------------------------------------- the real model
@needs_model
def test_the_pinned_file_and_its_declaration(scrfd):
    assert isinstance(scrfd, SCRFDDetector) and scrfd.model_file == str(MODEL)
    assert hashlib.sha256(MODEL.read_bytes()).hexdigest() == MODEL_SHA256
    assert scrfd.det_size == 640 and scrfd.threshold == 0.5
    plugin = DETECTORS.get("scrfd")
    assert [(f.name, f.path) for f in plugin.files({"model_path": str(MODEL)})] == [("scrfd", str(MODEL))]
    assert plugin.licence.non_commercial and "non-commercial" in plugin.licence.weights


@needs_model
def test_same_faces_as_insightfaces_own_scrfd_class(scrfd):
    from insightface.model_zoo.scrfd import SCRFD

    ref = SCRFD(model_file=str(MODEL))
    ref.prepare(ctx_id=-1, input_size=(640, 640), det_thresh=0.5)
    photos = lfw_images()[:2] + sorted(GROUP.glob("*.jpg"))
    for p in photos:
        img = rgb(p)
        dets, kps = ref.detect(cv2.cvtColor(img, cv2.COLOR_RGB2BGR))
        boxes, scores, pts = scrfd.raw(img)
        assert len(boxes) == len(dets) > 0, p.name
        a, b = np.lexsort((dets[:, 0], dets[:, 1])), np.lexsort((boxes[:, 0], boxes[:, 1]))
        np.testing.assert_allclose(boxes[b], dets[a, :4], atol=1e-3)
        np.testing.assert_allclose(scores[b], dets[a, 4], atol=1e-4)
        np.testing.assert_allclose(pts[b], kps[a], atol=1e-3)


@needs_model
def test_one_centred_face_per_lfw_photo_with_its_five_keypoints(scrfd):
    check_lfw_faces(scrfd, 0.6)


@needs_model
def test_group_photos_boxes_inside_and_keypoints_on_their_faces(scrfd):
    counts = check_group_faces(scrfd, 0.5)
    assert counts == {"kit_with_rose.jpg": 2, "obama_and_biden.jpg": 3, "selfie-many-people.jpg": 6, "two_people.jpg": 2}


@needs_model
def test_recall_on_hand_labelled_boxes(scrfd):
    truth = voc_truth()
    tp, fp, total = _recall(scrfd, truth)
    assert (tp, total) == (43, 43) and fp <= 4  # the others: small unlabelled faces in the background
    assert _recall(SCRFDDetector(str(MODEL), min_score=0.7), truth) == (43, 0, 43)


@needs_model
def test_dlib_box_gives_dlib_landmarks_close_to_hogs(scrfd):
    check_dlib_box(scrfd)


@needs_model
def test_max_side_and_fixed_input_size(scrfd):
    img = rgb(GROUP / "obama_and_biden.jpg")  # 2000 px wide
    check_max_side(scrfd.detect(img), SCRFDDetector(str(MODEL), max_side=1000).detect(img), 3)
    with pytest.raises(ValueError, match=r"input is fixed at \[640, 640\]; set detect.det_size"):
        SCRFDDetector(str(MODEL), det_size=320)


@needs_model
def test_model_path_as_an_fsspec_uri(tmp_path, monkeypatch, scrfd):
    import tempfile

    monkeypatch.setattr(tempfile, "tempdir", str(tmp_path / "tmp"))
    fs = fsspec.filesystem("memory")
    fs.pipe("/models/scrfd.onnx", MODEL.read_bytes())
    try:
        remote = make_detector({"backend": "scrfd", "model_path": "memory://models/scrfd.onnx"})
        img = rgb(lfw_images()[0])
        assert remote.model_file.startswith(str(tmp_path / "tmp"))
        assert [f.box for f in remote.detect(img)] == [f.box for f in scrfd.detect(img)]
    finally:
        fs.rm("/models", recursive=True)


# ---------------------------------------------------------------------------- without the real model
def test_model_path_is_required_and_bad_files_are_clear_errors(tmp_path):
    with pytest.raises(ValidationError, match="model_path"):
        SCRFDParams.model_validate({})
    with pytest.raises(ValueError, match="needs detect.model_path"):
        resolve(None)
    with pytest.raises(FileNotFoundError, match=r"nope\.onnx: SCRFD model file does not exist"):
        SCRFDDetector(str(tmp_path / "nope.onnx"))
    junk = tmp_path / "junk.onnx"
    junk.write_bytes(b"not a model")
    with pytest.raises(ValueError, match=r"junk\.onnx: not a readable ONNX model"):
        SCRFDDetector(str(junk))
    build_detector(tmp_path / "nokps.onnx", kps=False)  # SCRFD without keypoints: 6 outputs
    with pytest.raises(ValueError, match=r"nokps\.onnx: not an SCRFD detector with keypoints"):
        SCRFDDetector(str(tmp_path / "nokps.onnx"), det_size=DET_SIZE)


def test_tiny_scrfd_graph_decoded_as_insightface_does(tmp_path):
    """The tiny graph fires at one stride-32 cell with a known box and keypoints."""
    build_detector(tmp_path / "tiny.onnx")
    det = make_detector({"backend": "scrfd", "model_path": str(tmp_path / "tiny.onnx"), "det_size": DET_SIZE})
    photo = rgb(LFW / "Celine_Dion" / "Celine_Dion_0001.jpg")
    for img in (photo, np.ascontiguousarray(photo[:200])):  # square, and wider than high
        h, w = img.shape[:2]
        faces = det.detect(img)
        box, kps = expected(h, w)
        assert len(faces) == 1  # two anchors on the same cell: NMS keeps one
        assert faces[0].box == tuple(round(v) for v in (box[0], box[1], min(box[2], w), min(box[3], h)))
        np.testing.assert_allclose(faces[0].landmarks5, kps, atol=1e-3)
    # the tiny graph's score leans on red minus blue: pins the RGB channel order it is fed
    red = np.zeros((DET_SIZE, DET_SIZE, 3), np.uint8)
    red[..., 0] = 255
    assert len(det.detect(red)) >= 2 and det.detect(red[..., ::-1].copy()) == []


def test_decode_known_answer():
    size = 64  # grids 8x8, 4x4, 2x2; two anchors per cell
    outs = []
    for width in (1, 4, 10):
        for s in (8, 16, 32):
            outs.append(np.zeros((1, (size // s) ** 2 * 2, width), np.float32))
    row, col, anchor = 1, 3, 1  # stride 16: centre (48, 16)
    i = (row * 4 + col) * 2 + anchor
    outs[1][0, i, 0] = 0.9
    outs[0][0, 5, 0] = 0.3  # stride 8, below the threshold
    outs[4][0, i] = [1.0, 0.5, 2.0, 1.5]  # left, top, right, bottom in strides
    outs[7][0, i] = [-0.5, -0.5, 0.5, -0.5, 0.0, 0.25, -0.25, 0.75, 0.25, 0.75]
    boxes, scores, pts = decode(outs, size, 0.5)
    np.testing.assert_allclose(boxes, [[48 - 16, 16 - 8, 48 + 32, 16 + 24]])
    np.testing.assert_allclose(scores, [0.9], rtol=1e-6)
    np.testing.assert_allclose(pts[0], [[40, 8], [56, 8], [48, 20], [44, 28], [52, 28]])
    with pytest.raises(ValueError, match="do not fit"):
        decode(outs, 96, 0.5)


def test_letterbox_scales_the_longer_side_and_pads():
    img = np.full((100, 200, 3), 255, np.uint8)
    blob, scale = letterbox(img, 64)
    assert blob.shape == (1, 3, 64, 64) and blob.dtype == np.float32 and scale == 0.32
    assert np.allclose(blob[0, :, :32], 127.5 / 128) and np.allclose(blob[0, :, 32:], -127.5 / 128)
    assert letterbox(np.zeros((200, 100, 3), np.uint8), 64)[1] == 0.32

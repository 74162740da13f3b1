"""BlazeFace and face-mesh backends: MediaPipe's real .tflite files (the mediapipe wheel,
installed with --no-deps), on real faces."""

from __future__ import annotations

import importlib.util
import itertools
import shutil
import subprocess
import sys

import numpy as np
import pytest
from conftest import GROUP, lfw_images
from test_faces import _recall, rgb, voc_truth

from deid.faces import make_detector
from deid.faces.align import estimate
from deid.faces.blazeface_backend import (
    MODELS,
    BlazeFaceDetector,
    decode,
    mediapipe_file,
    ssd_anchors,
    tiles,
    weighted_nms,
)
from deid.faces.centerface_backend import CenterFaceDetector
from deid.faces.dlib_backend import DlibDetector, dlib5_points
from deid.faces.facemesh_backend import (
    FACE_OVAL,
    FaceMeshDetector,
    roi_from_detection,
    roi_matrix,
)
from deid.faces.models import file_sha256
from deid.faces.registry import DETECTORS
from deid.faces.types import iou

SHARED_GROUP = GROUP.parents[3] / "shared" / "data" / "group"


@pytest.fixture(scope="module")
def bf():
    return make_detector({"backend": "blazeface"})


@pytest.fixture(scope="module")
def mesh():
    return make_detector({"backend": "face-mesh"})


def central(faces):
    return [f for f in faces if 90 < (f.box[0] + f.box[2]) / 2 < 160 and 90 < (f.box[1] + f.box[3]) / 2 < 160]


# ---------------------------------------------------------------------------- weights
def test_default_weights_come_from_the_mediapipe_wheel_without_importing_it(bf):
    assert isinstance(bf, BlazeFaceDetector) and bf.model == "full" and bf.tile == BlazeFaceDetector.DEFAULT_TILE
    assert bf.model_file.endswith("mediapipe/modules/face_detection/face_detection_full_range_sparse.tflite")
    assert bf.threshold == BlazeFaceDetector.DEFAULT_THRESHOLD == 0.5
    files = DETECTORS.get("blazeface").files({"model": "short"})
    assert [f.name for f in files] == ["blazeface-short"] and files[0].path.endswith("face_detection_short_range.tflite")
    # locating the files runs no mediapipe code (it would import numpy<2-era modules)
    code = ("import sys; from deid.faces.blazeface_backend import mediapipe_file, MODELS; "
            "mediapipe_file(MODELS['full'].file, 'x'); print('mediapipe' in sys.modules)")
    out = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, check=True)
    assert out.stdout.strip() == "False"


def test_without_mediapipe_the_error_says_how_to_install_it(monkeypatch):
    detector = mediapipe_file(MODELS["full"].file, "x")
    monkeypatch.setattr(importlib.util, "find_spec", lambda name, *a: None)
    with pytest.raises(FileNotFoundError, match=r"pip install --no-deps mediapipe==0\.10\.21.*detect\.model_path"):
        mediapipe_file(MODELS["full"].file, "detect.backend blazeface")
    with pytest.raises(FileNotFoundError, match=r"face_landmark\.tflite.*--no-deps mediapipe"):
        FaceMeshDetector(detector_path=detector)


def test_model_path_and_bad_model_files(tmp_path):
    local = tmp_path / "bf.tflite"
    shutil.copy(mediapipe_file(MODELS["full"].file, "x"), local)
    det = BlazeFaceDetector(model_path=str(local))
    img = rgb(lfw_images()[0])
    assert [f.box for f in det.detect(img)] == [f.box for f in BlazeFaceDetector().detect(img)]
    assert DETECTORS.get("blazeface").files({"model_path": str(local)})[0].path == str(local)
    assert file_sha256(det.model_file) == file_sha256(str(local))
    junk = tmp_path / "junk.tflite"
    junk.write_bytes(b"not a model")
    short = mediapipe_file(MODELS["short"].file, "x")  # the short-range file given for the full-range model
    for path, error, message in [(tmp_path / "nope.tflite", FileNotFoundError, r"nope\.tflite: BlazeFace model file does not exist"),
                                 (junk, ValueError, r"junk\.tflite: not a readable TFLite model"),
                                 (short, ValueError, r"not the BlazeFace full model deid knows")]:
        with pytest.raises(error, match=message):
            BlazeFaceDetector(model="full", model_path=str(path))
    with pytest.raises(ValueError, match=r"not the MediaPipe face mesh model deid knows"):
        FaceMeshDetector(model_path=str(local))


# ---------------------------------------------------------------------------- decoding
@pytest.mark.parametrize("model", ["full", "short"])
def test_anchor_count_matches_the_model_output(model):
    det = BlazeFaceDetector(model=model)
    spec = MODELS[model]
    out = {tuple(o["shape"]) for o in det._it.get_output_details()}
    assert out == {(1, len(det.anchors), 16), (1, len(det.anchors), 1)}
    assert len(det.anchors) == spec.num_anchors == {"full": 48 * 48, "short": 16 * 16 * 2 + 8 * 8 * 6}[model]
    assert (det.anchors > 0).all() and (det.anchors < 1).all()


def test_anchors_known_answer():
    full = ssd_anchors(192, (4,), 0.0)
    np.testing.assert_allclose(full[:2], [[0.5 / 48, 0.5 / 48], [1.5 / 48, 0.5 / 48]])  # row by row
    np.testing.assert_allclose(full[48], [0.5 / 48, 1.5 / 48])
    short = ssd_anchors(128, (8, 16, 16, 16), 1.0)
    np.testing.assert_allclose(short[:3], [[1 / 32, 1 / 32], [1 / 32, 1 / 32], [3 / 32, 1 / 32]])  # 2 per cell
    np.testing.assert_allclose(short[512:518], [[1 / 16, 1 / 16]] * 6)  # 3 merged layers x 2, one cell
    np.testing.assert_allclose(short[-1], [15 / 16, 15 / 16])


def test_decode_known_answer():
    anchors = np.array([[0.25, 0.5], [0.75, 0.75]])
    raw = np.zeros((2, 16), np.float32)
    raw[0, :4] = [2.0, -4.0, 20.0, 30.0]  # x, y offsets and w, h in input pixels
    raw[0, 4:6] = [-5.0, -6.0]  # first keypoint relative to the anchor centre
    logits = np.array([[2.0], [-3.0]], np.float32)
    boxes, scores, pts = decode(raw, logits, anchors, 100, threshold=0.5)
    cx, cy = 25 + 2.0, 50 - 4.0
    np.testing.assert_allclose(boxes, [[cx - 10, cy - 15, cx + 10, cy + 15]], rtol=1e-6)
    np.testing.assert_allclose(scores, [1 / (1 + np.exp(-2.0))], rtol=1e-6)
    np.testing.assert_allclose(pts[0, 0], [20.0, 44.0])
    np.testing.assert_allclose(pts[0, 5], [25.0, 50.0])  # zero offset: the anchor centre
    assert [a.shape for a in decode(raw, logits, anchors, 100, threshold=0.99)] == [(0, 4), (0,), (0, 6, 2)]


def test_weighted_nms_merges_by_score():
    boxes = np.array([[0, 0, 10, 10], [2, 0, 12, 10], [50, 50, 60, 60]], float)
    scores = np.array([0.6, 0.9, 0.7])
    pts = np.zeros((3, 6, 2))
    pts[:, :, 0] = [[0], [10], [55]]
    b, s, p = weighted_nms(boxes, scores, pts)
    assert s.tolist() == [0.9, 0.7]  # the best one's score
    np.testing.assert_allclose(b[0], [(0 * 0.6 + 2 * 0.9) / 1.5, 0, (10 * 0.6 + 12 * 0.9) / 1.5, 10])
    np.testing.assert_allclose(p[0, :, 0], 10 * 0.9 / 1.5)
    np.testing.assert_allclose(b[1], boxes[2])
    assert [a.shape for a in weighted_nms(boxes[:0], scores[:0], pts[:0])] == [(0, 4), (0,), (0, 6, 2)]


def test_tiles_cover_the_image_with_overlap():
    assert tiles(300, 200, 384) == [(0, 0, 300, 200)]  # small photos: the whole photo only
    assert tiles(2000, 1000, None) == [(0, 0, 2000, 1000)]
    regions = tiles(2000, 1000, 384)
    assert regions[0] == (0, 0, 2000, 1000)
    for side in (384, 768, 1536):
        level = [r for r in regions[1:] if r[2] - r[0] == side]
        assert level and max(r[2] for r in level) == 2000 and min(r[0] for r in level) == 0
        xs = sorted({r[0] for r in level})
        assert max(b - a for a, b in itertools.pairwise(xs)) <= 0.75 * side + 1  # >= 25% overlap
    assert all(r[2] - r[0] < 2000 for r in regions[1:])


# ---------------------------------------------------------------------------- real photos
def test_one_centred_face_per_lfw_photo_with_its_keypoints(bf):
    for p in lfw_images():
        faces = bf.detect(rgb(p))
        c = central(faces)
        assert len(c) == 1, (p.name, [f.box for f in faces])
        f = c[0]
        assert f.landmark_layout == "blazeface5" and f.landmarks5.shape == (5, 2) and f.score > 0.5
        (rex, rey), (lex, ley), (_, ny), (mx, my), m2 = f.landmarks5
        # the person's right eye first: the image's left in an upright face; mouth centre twice
        assert rex < lex and max(rey, ley) < ny < my and np.array_equal(m2, (mx, my))  # nose: x beyond an eye when turned
        x0, y0, x1, y1 = f.box
        assert all(x0 <= x <= x1 and y0 <= y <= y1 for x, y in f.landmarks5)
        _, _, six = bf.raw(rgb(p))
        assert six.shape[1:] == (6, 2)


def test_recall_on_hand_labelled_boxes(bf):
    truth = voc_truth()
    assert _recall(bf, truth) == (43, 0, 43)
    assert _recall(BlazeFaceDetector(tile=None), truth)[0] == 43  # these photos are ~500 px
    # the short-range model needs faces >= ~1/7 of its input: smaller tiles
    assert _recall(BlazeFaceDetector(model="short", tile=None), truth)[0] < 20
    tp, fp, _ = _recall(BlazeFaceDetector(model="short", tile=192), truth)
    assert tp == 43 and fp <= 12


def test_tiles_find_the_small_faces_of_large_photos(bf):
    img = rgb(GROUP / "obama_and_biden.jpg")  # 2000 x 1428: the girl's face is ~130 px
    h, w = img.shape[:2]
    whole = BlazeFaceDetector(tile=None).detect(img)
    tiled = bf.detect(img)
    assert len(whole) == 2
    girl = (1608, 1060, 1770, 1225)
    assert max(iou(f.box, girl) for f in whole) < 0.3 <= max(iou(f.box, girl) for f in tiled)
    for a in whole:  # the big faces stay put
        assert max(iou(a.box, b.box) for b in tiled) > 0.8
    for f in tiled:
        assert 0 <= f.box[0] < f.box[2] <= w and 0 <= f.box[1] < f.box[3] <= h


def test_quarter_turned_photos(bf):
    """What BlazeFace does with faces lying on their side: the full-range model misses most,
    the short-range model (trained with rotations) finds them; docs/backends.md."""
    short = BlazeFaceDetector(model="short")
    up = found_full = found_short = 0
    for p in lfw_images():
        img = rgb(p)
        up += bool(central(bf.detect(img)))
        for k in (1, 3):
            turned = np.ascontiguousarray(np.rot90(img, k))
            found_full += bool(central(bf.detect(turned)))
            faces = central(short.detect(turned))
            found_short += bool(faces)
            for f in faces:  # boxes in the turned photo's own pixels
                assert 0 <= f.box[0] < f.box[2] <= turned.shape[1] and 0 <= f.box[1] < f.box[3] <= turned.shape[0]
    n = 2 * len(lfw_images())
    assert up == len(lfw_images())
    assert found_short >= 0.9 * n
    assert found_full < found_short


def test_dlib_box_gives_dlib_landmarks_close_to_hogs(bf, mesh):
    hog = DlibDetector()
    for det in (bf, mesh):
        err = []
        for p in lfw_images():
            img = rgb(p)
            h = hog.detect(img)[0]
            f = max(det.detect(img), key=lambda f: iou(f.box, h.box))
            assert f.dlib_box is not None and f.landmark_layout != "dlib5" and f.landmarks68 is None
            iod = np.linalg.norm(h.landmarks5[0] - h.landmarks5[2])
            err.append(np.linalg.norm(dlib5_points(img, f) - h.landmarks5, axis=1).mean() / iod)
        assert np.median(err) < 0.03, det.backend


def test_max_side_maps_boxes_and_keypoints_back(bf):
    img = rgb(GROUP / "two_people.jpg")  # 1126 px wide
    full = bf.detect(img)
    small = BlazeFaceDetector(max_side=563).detect(img)
    assert len(full) >= 2 and len(small) >= 2
    for a in sorted(full, key=lambda f: -f.score)[:2]:
        b = max(small, key=lambda s: iou(a.box, s.box))
        assert iou(a.box, b.box) > 0.7
        assert np.abs(a.landmarks5 - b.landmarks5).max() < 0.1 * a.width


# ---------------------------------------------------------------------------- face mesh
def test_roi_matrix_maps_the_crop_centre_and_rotation():
    m = roi_matrix(100.0, 50.0, 192.0, np.pi / 2)
    np.testing.assert_allclose(m @ [96, 96, 1], [100, 50], atol=1e-9)
    np.testing.assert_allclose(m @ [192, 96, 1], [100, 146], atol=1e-9)  # crop +x -> image +y
    box = np.array([10.0, 20.0, 50.0, 80.0])
    kp = np.zeros((6, 2))
    kp[0], kp[1] = (20, 40), (40, 60)  # the eye line at 45 degrees
    cx, cy, side, angle = roi_from_detection(box, kp)
    assert (cx, cy, side) == (30.0, 50.0, 90.0) and angle == pytest.approx(np.pi / 4)


def test_face_mesh_on_lfw(mesh):
    cf = CenterFaceDetector()
    err = []
    for p in lfw_images():
        img = rgb(p)
        faces = central(mesh.detect(img))
        assert len(faces) == 1, p.name
        f = faces[0]
        assert f.landmark_layout == "arcface5" and f.mesh.shape == (468, 3) and np.isfinite(f.mesh).all()
        x0, y0 = f.box[:2]
        assert (f.mesh[:, 0].min(), f.mesh[:, 1].min()) == pytest.approx((x0, y0), abs=1)
        (lex, ley), (rex, rey), (_, ny), (lmx, lmy), (rmx, rmy) = f.landmarks5
        assert lex < rex and lmx < rmx and max(ley, rey) < ny < min(lmy, rmy)
        chin = f.mesh[FACE_OVAL[18]]
        assert chin[1] > max(lmy, rmy) and f.mesh[FACE_OVAL[0]][1] < min(ley, rey)  # forehead .. chin
        # the mesh's arcface5 points agree with CenterFace's (its own arcface5 keypoints)
        c = max(cf.detect(img), key=lambda g: iou(g.box, f.box))
        iod = np.linalg.norm(c.landmarks5[0] - c.landmarks5[1])
        err.append(np.linalg.norm(f.landmarks5 - c.landmarks5, axis=1) / iod)
        estimate(f.landmarks5, 112, "arcface5")  # alignment works on them
    err = np.array(err)
    assert np.median(err) < 0.1 and err.max() < 0.3, np.round(err, 2)


def test_face_mesh_recall_and_presence(mesh):
    assert _recall(mesh, voc_truth()) == (43, 0, 43)
    photo = SHARED_GROUP / "dlib_examples_faces" / "bald_guys.jpg"
    if not photo.is_file():
        pytest.skip(f"{photo} is not here")
    img = rgb(photo)
    # the mesh's face-presence score drops what BlazeFace's tiles take for faces (a fist)
    keep_all = FaceMeshDetector(min_presence=0.0).detect(img)
    assert len(mesh.detect(img)) < len(keep_all)


def test_make_detector_builds_both():
    assert isinstance(make_detector({"backend": "blazeface", "model": "short", "tile": None}), BlazeFaceDetector)
    m = make_detector({"backend": "face-mesh", "min_presence": 0.7})
    assert isinstance(m, FaceMeshDetector) and m.min_presence == 0.7
    names = [f.name for f in DETECTORS.get("face-mesh").files({})]
    assert names == ["blazeface-full", "face-mesh"]

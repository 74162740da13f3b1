"""Detection, landmarks, alignment and identity embeddings on real faces (real dlib models)."""

from __future__ import annotations

import itertools
import xml.etree.ElementTree as ET

import numpy as np
import pytest
from PIL import Image

from conftest import GROUP, VOC, lfw_images
from deid.config.schema import detect_section
from deid.faces import make_detector
from deid.faces.align import TEMPLATES, align, five_from_68, warp_back
from deid.faces.dlib_backend import DlibDetector, DlibEmbedder
from deid.faces.types import iou


def rgb(path) -> np.ndarray:
    return np.asarray(Image.open(path).convert("RGB"))


def voc_truth() -> dict[str, list[tuple[int, int, int, int]]]:
    truth = {}
    for xml in ("training.xml", "testing.xml"):
        for im in ET.parse(VOC / xml).getroot().iter("image"):
            truth[im.get("file")] = [
                (int(b.get("left")), int(b.get("top")), int(b.get("left")) + int(b.get("width")), int(b.get("top")) + int(b.get("height")))
                for b in im.findall("box")
            ]
    return truth


@pytest.fixture(scope="module")
def hog():
    return DlibDetector()


@pytest.fixture(scope="module")
def embedder():
    return DlibEmbedder()


def test_one_face_per_lfw_photo(hog):
    for p in lfw_images():
        faces = hog.detect(rgb(p))
        assert len(faces) == 1, p.name
        f = faces[0]
        cx, cy = (f.box[0] + f.box[2]) / 2, (f.box[1] + f.box[3]) / 2
        assert 90 < cx < 160 and 90 < cy < 160  # LFW deep-funneled faces are centred
        assert f.landmarks5.shape == (5, 2) and f.landmark_layout == "dlib5"


def _recall(detector, truth) -> tuple[int, int, int]:
    tp = fp = total = 0
    for name, boxes in truth.items():
        found = detector.detect(rgb(VOC / name))
        total += len(boxes)
        tp += sum(max([iou(b, g.box) for g in found] or [0]) >= 0.3 for b in boxes)
        fp += sum(max([iou(b, g.box) for b in boxes] or [0]) < 0.3 for g in found)
    return tp, fp, total


def test_face_counts_match_hand_labelled_boxes(hog):
    truth = voc_truth()
    assert sum(map(len, truth.values())) == 43
    tp, fp, total = _recall(hog, truth)
    assert tp / total >= 0.95, (tp, total)
    assert fp <= 2
    # default upsample=1 is what finds these small faces: without it most are missed
    tp0, _, _ = _recall(DlibDetector(upsample=0), truth)
    assert tp0 < tp * 0.5


def test_68_point_landmarks_agree_with_5_point(hog):
    d68 = DlibDetector(landmarks=68)
    img = rgb(lfw_images()[0])
    f5, f68 = hog.detect(img)[0], d68.detect(img)[0]
    assert f68.landmarks68.shape == (68, 2)
    # eye corners and nose base from the 68-point model are within a few pixels
    err = np.linalg.norm(five_from_68(f68.landmarks68) - f5.landmarks5, axis=1)
    assert err.max() < 8, err


def test_max_side_downscales_detection_and_maps_boxes_back(hog):
    img = rgb(GROUP / "obama_and_biden.jpg")  # 2000 px wide
    full = hog.detect(img)
    small = DlibDetector(max_side=1000).detect(img)
    assert len(full) == len(small) == 3
    for a in full:
        assert max(iou(a.box, b.box) for b in small) > 0.6


def test_cnn_detector_finds_the_face():
    det = make_detector(detect_section(backend="dlib-cnn", upsample=0))
    faces = det.detect(rgb(lfw_images()[0]))
    assert len(faces) == 1 and faces[0].score > 0.5


def test_alignment_puts_landmarks_on_the_template(hog):
    size = 128
    errs = []
    for p in lfw_images():
        img = rgb(p)
        face = hog.detect(img)[0]
        crop, m = align(img, face.landmarks5, size)
        assert crop.shape == (size, size, 3)
        # landmarks mapped by the same matrix land near the template
        pts = np.c_[face.landmarks5, np.ones(5)] @ m.T
        errs.append(np.abs(pts / size - TEMPLATES["dlib5"]).max())
        # and the detector finds a face in the aligned crop where the template says
        layer, cover = warp_back(crop, m, img.shape[:2])
        x0, y0, x1, y1 = face.box
        assert cover[(y0 + y1) // 2, (x0 + x1) // 2] == pytest.approx(1.0)
        inside = cover > 0.999
        assert inside.sum() > 0.5 * (x1 - x0) * (y1 - y0)
        assert np.abs(layer[inside].astype(int) - img[inside]).mean() < 12  # round trip keeps the face
    assert max(errs) < 0.08, errs


def test_identity_embeddings_separate_people(hog, embedder):
    by_person: dict[str, list[np.ndarray]] = {}
    for p in lfw_images():
        img = rgb(p)
        vec = embedder.embed_faces(img, hog.detect(img))
        assert vec.shape == (1, 128)
        by_person.setdefault(p.parent.name, []).append(vec[0])
    same = [embedder.distance(a, b) for v in by_person.values() for a, b in itertools.combinations(v, 2)]
    diff = [embedder.distance(a, b) for (_, v1), (_, v2) in itertools.combinations(by_person.items(), 2) for a in v1 for b in v2]
    assert np.mean(np.array(same) < 0.6) >= 0.9
    assert np.mean(np.array(diff) >= 0.6) >= 0.95


def test_68_point_model_drives_alignment_when_asked():
    img = rgb(lfw_images()[0])
    f68 = DlibDetector(landmarks=68).detect(img)[0]
    assert np.array_equal(f68.landmarks5, five_from_68(f68.landmarks68))

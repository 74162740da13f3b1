"""MTCNN backend: facenet-pytorch's weights (never its code) on real photos."""

from __future__ import annotations

import shutil
import sys

import numpy as np
import pytest

from conftest import GROUP, LFW, VOC, lfw_images
from deid.config.schema import detect_section
from deid.faces import make_detector
from deid.faces import mtcnn_nets
from deid.faces.dlib_backend import DlibDetector, dlib5_points
from deid.faces.mtcnn_backend import MTCNNDetector, nms_min, proposals, pyramid, regress, square
from deid.faces.mtcnn_nets import weight_files
from deid.faces.registry import DETECTORS
from deid.faces.types import iou
from test_faces import _recall, rgb, voc_truth

#: facenet-pytorch's own detect_face (MTCNN(), default params) on two photos: boxes and scores,
#: landmarks (x, y). Computed once with its source run beside a numpy stand-in for
#: torchvision's NMS; deid's cascade agreed to 0.0005 px on 130 photos (218 faces).
REFERENCE = {
    LFW / "Celine_Dion" / "Celine_Dion_0001.jpg": (
        [[83.695, 55.348, 181.071, 187.318, 0.999]],
        [[[106.373, 106.783], [152.7, 108.137], [124.34, 140.512], [108.557, 154.688], [148.12, 155.213]]]),
    GROUP / "kit_with_rose.jpg": (
        [[257.717, 79.345, 349.493, 198.825, 1.0], [79.058, 106.824, 157.663, 209.907, 0.999]],
        [[[278.077, 131.276], [318.028, 127.133], [294.984, 156.984], [283.723, 174.779], [318.682, 171.95]],
         [[99.559, 150.85], [137.876, 148.291], [121.452, 173.106], [103.446, 183.053], [139.667, 180.741]]]),
}


@pytest.fixture(scope="module")
def mtcnn():
    return make_detector(detect_section(backend="mtcnn"))


def test_weights_come_from_the_facenet_pytorch_wheel_without_importing_it(mtcnn):
    assert isinstance(mtcnn, MTCNNDetector) and isinstance(make_detector({"backend": "mtcnn"}), MTCNNDetector)
    assert "facenet_pytorch" not in sys.modules  # its __init__ would import torchvision
    assert [mtcnn.files[n].split("/")[-2:] for n in ("pnet", "rnet", "onet")] == [
        ["data", "pnet.pt"], ["data", "rnet.pt"], ["data", "onet.pt"]]
    assert all("facenet_pytorch" in p for p in mtcnn.files.values())
    files = DETECTORS.get("mtcnn").files()
    assert [(f.name, f.path) for f in files] == [(f"mtcnn-{n}", mtcnn.files[n]) for n in ("pnet", "rnet", "onet")]
    assert mtcnn.thresholds == (0.6, 0.7, 0.7) and mtcnn.factor == 0.709 and mtcnn.min_face_size == 20


def test_same_numbers_as_facenet_pytorch(mtcnn):
    for path, (boxes, points) in REFERENCE.items():
        got_boxes, got_scores, got_points = mtcnn.raw(rgb(path))
        order = np.lexsort((got_boxes[:, 0], got_boxes[:, 1]))
        want = np.asarray(boxes)
        np.testing.assert_allclose(got_boxes[order], want[:, :4], atol=2e-3)
        np.testing.assert_allclose(got_scores[order], want[:, 4], atol=2e-3)
        np.testing.assert_allclose(got_points[order], points, atol=2e-3)


# ---------------------------------------------------------------------------- checks (tests/test_scrfd_backend.py too)
def check_lfw_faces(det, min_score: float) -> None:
    """One central face per LFW sample, its five points in arcface5 order inside its box."""
    for p in lfw_images():
        faces = det.detect(rgb(p))
        central = [f for f in faces if 90 < (f.box[0] + f.box[2]) / 2 < 160 and 90 < (f.box[1] + f.box[3]) / 2 < 160]
        assert len(central) == 1, (p.name, [f.box for f in faces])
        f = central[0]
        assert f.landmark_layout == "arcface5" and f.landmarks5.shape == (5, 2) and f.score > min_score
        (lex, ley), (rex, rey), (nx, ny), (lmx, lmy), (rmx, rmy) = f.landmarks5
        # arcface5 order: eye on the image's left, the other eye, nose tip, mouth corners left, right
        assert lex < nx < rex and lmx < rmx
        assert max(ley, rey) < ny < min(lmy, rmy)
        x0, y0, x1, y1 = f.box
        assert all(x0 <= x <= x1 and y0 <= y <= y1 for x, y in f.landmarks5)


def check_group_faces(det, min_score: float) -> dict[str, int]:
    """Faces on the bundled group photos: sorted, inside the image, points on their faces;
    returns the count per photo."""
    counts = {}
    for p in sorted(GROUP.glob("*.jpg")):
        img = rgb(p)
        h, w = img.shape[:2]
        faces = det.detect(img)
        counts[p.name] = len(faces)
        assert [f.box for f in faces] == sorted((f.box for f in faces), key=lambda b: (b[1], b[0]))
        for f in faces:
            x0, y0, x1, y1 = f.box
            assert 0 <= x0 < x1 <= w and 0 <= y0 < y1 <= h and min_score <= f.score <= 1
            pts = f.landmarks5
            # inside the box; a face the photo's edge cuts (its box clipped) has points past the edge
            edge = x0 == 0 or y0 == 0 or x1 == w or y1 == h
            sx, sy = (f.width, f.height) if edge else (0, 0)
            assert ((pts[:, 0] >= x0 - sx) & (pts[:, 0] <= x1 + sx) & (pts[:, 1] >= y0 - sy)
                    & (pts[:, 1] <= y1 + sy)).all(), (p.name, f)
            if f.width >= 40:  # frontal enough to order
                assert pts[0, 0] < pts[1, 0] and pts[3, 0] < pts[4, 0] and pts[:2, 1].max() < pts[3:, 1].min()
    return counts


def check_dlib_box(det) -> None:
    """dlib's 5-point landmarks from ``Face.dlib_box`` land near the HOG-based ones, nearer
    than from the detector's own box."""
    hog = DlibDetector()
    mapped, raw = [], []
    for p in lfw_images():
        img = rgb(p)
        h = hog.detect(img)[0]
        m = max(det.detect(img), key=lambda f: iou(f.box, h.box))
        iod = np.linalg.norm(h.landmarks5[0] - h.landmarks5[2])
        assert m.dlib_box is not None and m.dlib_box != m.box
        mapped.append(np.linalg.norm(dlib5_points(img, m) - h.landmarks5, axis=1).mean() / iod)
        m.dlib_box = None  # the detector's own box instead
        raw.append(np.linalg.norm(dlib5_points(img, m) - h.landmarks5, axis=1).mean() / iod)
    assert np.median(mapped) < 0.03
    assert np.mean(mapped) < np.mean(raw)


def check_max_side(full: list, small: list, n: int) -> None:
    """The faces found on a photo shrunk by ``max_side`` are those found on the original."""
    assert len(full) == len(small) == n
    for a in full:
        b = max(small, key=lambda s: iou(a.box, s.box))
        assert iou(a.box, b.box) > 0.7
        assert np.abs(a.landmarks5 - b.landmarks5).max() < 0.1 * a.width


# ---------------------------------------------------------------------------- MTCNN
def test_one_centred_face_per_lfw_photo_with_its_five_landmarks(mtcnn):
    check_lfw_faces(mtcnn, 0.9)


def test_group_photos_boxes_inside_and_landmarks_on_their_faces(mtcnn):
    counts = check_group_faces(mtcnn, 0.7)
    assert counts["kit_with_rose.jpg"] == 2 and counts["two_people.jpg"] == 2
    assert counts["selfie-many-people.jpg"] >= 4


def test_recall_on_hand_labelled_boxes(mtcnn):
    truth = voc_truth()
    assert _recall(mtcnn, truth) == (42, 0, 43)
    # the one missed (2008_002079.jpg, 37 px, frontal) is R-Net's: it scores it between 0.5 and 0.7
    missed = {"2008_002079.jpg": truth["2008_002079.jpg"]}
    assert _recall(mtcnn, missed)[0] == len(missed["2008_002079.jpg"]) - 1
    assert _recall(MTCNNDetector(thresholds=(0.6, 0.5, 0.7)), missed) == (len(missed["2008_002079.jpg"]), 0, 6)
    # min_score replaces the O-Net threshold
    strict = MTCNNDetector(min_score=0.9995)
    assert strict.thresholds == (0.6, 0.7, 0.9995)
    assert 0 < len(strict.detect(rgb(VOC / "2008_002079.jpg"))) < len(mtcnn.detect(rgb(VOC / "2008_002079.jpg")))


def test_dlib_box_gives_dlib_landmarks_close_to_hogs(mtcnn):
    check_dlib_box(mtcnn)


def test_max_side_maps_boxes_and_landmarks_back(mtcnn):
    img = rgb(GROUP / "kit_with_rose.jpg")
    check_max_side(mtcnn.detect(img), MTCNNDetector(max_side=max(img.shape[:2]) // 2).detect(img), 2)


def test_nothing_on_blank_or_tiny_images(mtcnn):
    assert mtcnn.detect(np.full((120, 160, 3), 128, np.uint8)) == []
    assert mtcnn.detect(np.zeros((10, 10, 3), np.uint8)) == []  # below P-Net's 12 px at every scale
    with pytest.raises(ValueError, match="HxWx3"):
        mtcnn.detect(np.zeros((32, 32), np.uint8))


def test_cascade_pieces_known_answers():
    # pyramid: from 12/20 while the shorter side (scaled) stays >= 12 px
    assert pyramid(100, 250, 20, 0.5) == [0.6, 0.3, 0.15]
    assert pyramid(10, 10, 20, 0.709) == []
    # P-Net cell (row 1, col 2) at scale 0.5 -> window x 10..32, y 6..28
    prob = np.zeros((3, 4), np.float32)
    prob[1, 2] = 0.9
    reg = np.zeros((4, 3, 4), np.float32)
    reg[:, 1, 2] = [0.1, 0.0, -0.1, 0.2]
    boxes, scores, r = proposals(reg, prob, 0.5, 0.6)
    np.testing.assert_array_equal(boxes, [[10, 6, 32, 28]])
    np.testing.assert_allclose(scores, [0.9])
    np.testing.assert_allclose(r, [[0.1, 0.0, -0.1, 0.2]])
    np.testing.assert_allclose(regress(boxes, r, 0), [[12.2, 6, 29.8, 32.4]], rtol=1e-6)
    np.testing.assert_allclose(regress(boxes, r, 1), [[12.3, 6, 29.7, 32.6]], rtol=1e-6)
    np.testing.assert_allclose(square(np.array([[0.0, 0, 10, 20]])), [[-5, 0, 15, 20]])
    # "min" overlap: a box inside a bigger, better one goes, whatever its IoU
    b = np.array([[0, 0, 99, 99], [10, 10, 29, 29], [200, 200, 210, 210]], float)
    assert nms_min(b, np.array([0.9, 0.8, 0.7]), 0.7).tolist() == [0, 2]
    assert nms_min(b, np.array([0.5, 0.8, 0.7]), 0.7).tolist() == [1, 2]


def test_model_dir_and_clear_errors(tmp_path, monkeypatch, mtcnn):
    d = tmp_path / "weights"
    d.mkdir()
    for n, p in mtcnn.files.items():
        shutil.copy(p, d / f"{n}.pt")
    img = rgb(lfw_images()[0])
    other = make_detector({"backend": "mtcnn", "model_dir": str(d)})
    assert other.files == {n: str(d / f"{n}.pt") for n in ("pnet", "rnet", "onet")}
    assert [f.box for f in other.detect(img)] == [f.box for f in mtcnn.detect(img)]
    (d / "rnet.pt").unlink()
    with pytest.raises(FileNotFoundError, match=r"weights \(detect.model_dir\): no rnet.pt"):
        MTCNNDetector(model_dir=str(d))
    # another network's weights: a clear error naming the file
    shutil.copy(d / "pnet.pt", d / "rnet.pt")
    with pytest.raises(ValueError, match=r"rnet.pt: not facenet-pytorch's rnet state dict"):
        MTCNNDetector(model_dir=str(d))
    # weights_only: a file that would run code when unpickled is refused
    import torch

    torch.save({"conv1.weight": _Evil()}, d / "rnet.pt")
    with pytest.raises(ValueError, match=r"rnet.pt: not facenet-pytorch's rnet state dict"):
        MTCNNDetector(model_dir=str(d))
    assert not _Evil.ran
    # without facenet-pytorch and without model_dir: how to get the weights
    monkeypatch.setattr(mtcnn_nets.importlib.util, "find_spec", lambda name: None)
    with pytest.raises(FileNotFoundError, match=r"pip install --no-deps facenet-pytorch==2.6.0.*detect.model_dir"):
        weight_files()


class _Evil:
    ran = False

    def __reduce__(self):
        return (_Evil._run, ())

    @staticmethod
    def _run():  # pragma: no cover - must never run
        _Evil.ran = True


def test_building_the_networks_leaves_torch_random_state_as_it_was():
    """The O-Net of CenterFace's small-face cascade and MTCNN's nets are built with random layers
    then overwritten by the weights; building them must not move torch's global generator (an
    encoder fitted after a detector was built drew other initial weights)."""
    import torch

    from deid.faces.registry import make_detector

    torch.manual_seed(0)
    before = torch.random.get_rng_state().clone()
    make_detector({"backend": "centerface"})   # the default: small-face cascade on, O-Net built
    make_detector({"backend": "mtcnn"})
    assert torch.equal(torch.random.get_rng_state(), before)

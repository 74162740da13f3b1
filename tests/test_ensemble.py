"""The ensemble detector: members of different families, rotated views, weighted box fusion."""

from __future__ import annotations

import numpy as np
from hypothesis import given, settings
from hypothesis import strategies as st
from PIL import Image

from conftest import VOC, lfw_images
from deid.faces import Face, iou, make_detector
from deid.faces.views import fuse
from test_residual_gate import SELFIE, SELFIE_FACES

GROUP_PHOTO = VOC / "2008_002079.jpg"  # 500x375, heads of 12-15 px


def test_the_default_ensemble_finds_every_face_of_the_selfie():
    rgb = np.asarray(Image.open(SELFIE).convert("RGB"))
    faces = make_detector({"backend": "ensemble"}).detect(rgb)
    for truth in SELFIE_FACES:
        assert max(iou(truth, f.box) for f in faces) >= 0.5, truth
    assert len(faces) == len(SELFIE_FACES)  # fused: one box per face, no duplicates
    assert {f.landmark_layout for f in faces} <= {"dlib5", "arcface5"}


def test_a_rotated_view_maps_faces_back_to_input_pixels():
    """dlib HOG misses a face lying on its side; the ensemble's rot270 view stands it up, and
    the face comes back at its place in the input: where the upright face's box, rotated, is."""
    upright = np.asarray(Image.open(lfw_images()[0]).convert("RGB"))
    h, w = upright.shape[:2]
    lying = np.ascontiguousarray(np.rot90(upright))  # 90 degrees counter-clockwise
    hog = make_detector({"backend": "dlib-hog"})
    assert hog.detect(lying) == []
    (ref,) = hog.detect(upright)
    x0, y0, x1, y1 = ref.box  # rot90 CCW maps (x, y) -> (y, w - x)
    expect = (y0, w - x1, y1, w - x0)
    faces = make_detector({"backend": "ensemble", "members": [{"backend": "dlib-hog"}], "tta": ["rot270"]}).detect(lying)
    assert len(faces) == 1 and iou(faces[0].box, expect) > 0.9, (faces[0].box, expect)
    pts = ref.landmarks5
    assert np.abs(faces[0].landmarks5 - np.stack([pts[:, 1], w - pts[:, 0]], 1)).max() < 2.0


_box = st.tuples(st.integers(0, 300), st.integers(0, 300), st.integers(5, 120), st.integers(5, 120)).map(
    lambda t: (t[0], t[1], t[0] + t[2], t[1] + t[3]))


@settings(max_examples=200, deadline=None)
@given(st.lists(st.tuples(_box, st.floats(0.01, 1.0), st.integers(0, 2)), max_size=12), st.floats(0.1, 0.9))
def test_fusion_keeps_every_detection_covered_and_merges_only_overlaps(dets, threshold):
    found = [(Face(box=b, score=s, landmarks5=np.zeros((5, 2))), m, "") for b, s, m in dets]
    fused = fuse(found, threshold)
    assert len(fused) <= len(found)
    # recall first: every detection belongs to some fused face it overlaps
    for f, _, _ in found:
        assert any(iou(f.box, g.box) > 0 for g in fused)
    # fused faces that survive are not the same face twice at the fusion threshold, seen from their seeds
    assert all(g.score in {s for _, s, _ in dets} for g in fused)
    assert len(fuse(found, threshold, min_votes=len({m for _, _, m in dets}) + 1)) == 0


_views = st.sampled_from(["", "", "rot90", "rot270", "tilt+", "tilt-"])


@settings(max_examples=300, deadline=None)
@given(st.lists(st.tuples(_box, st.floats(0.01, 1.0), _views), max_size=12), st.floats(0.1, 0.9))
def test_fusion_of_upright_and_turned_views_leaves_every_detection_under_some_face(dets, threshold):
    """Recall first, with the turned views' rule (a cluster holding an upright detection takes
    the upright box): every detection, of any view, still overlaps some fused face; a turned
    detection elsewhere under a large box comes back as a face of its own."""
    found = [(Face(box=b, score=s, landmarks5=np.zeros((5, 2))), 0, v) for b, s, v in dets]
    fused = fuse(found, threshold)
    assert len(fused) <= len(found)
    for f, _, _ in found:
        assert any(iou(f.box, g.box) > 0 for g in fused), f.box


def test_a_turned_detection_beside_the_upright_box_of_its_cluster_is_a_face_of_its_own():
    """Known answer: a large box from a tilted view (best score) overlaps an upright face on its
    left and a face on its right that only a turned view found; the cluster takes the upright
    box, and the right-hand face comes back on its own instead of being dropped."""
    big = (Face(box=(0, 0, 100, 100), score=0.9, landmarks5=np.zeros((5, 2))), 0, "tilt+")
    left = (Face(box=(0, 0, 50, 100), score=0.8, landmarks5=np.zeros((5, 2))), 0, "")
    right = (Face(box=(55, 0, 100, 100), score=0.7, landmarks5=np.zeros((5, 2))), 0, "rot90")
    boxes = sorted(f.box for f in fuse([big, left, right], 0.4))
    assert boxes == [(0, 0, 50, 100), (55, 0, 100, 100)], boxes


def test_a_turned_only_box_over_upright_faces_is_dropped_and_one_beside_them_kept():
    """Known answer: a box that only a turned view found, lying 80% under two upright faces'
    boxes (a box across neighbours), is dropped; one lying 40% under them is kept."""
    lm = np.zeros((5, 2))
    a = (Face(box=(0, 0, 50, 100), score=0.8, landmarks5=lm), 0, "")
    b = (Face(box=(50, 0, 100, 100), score=0.8, landmarks5=lm), 0, "")
    across = (Face(box=(10, 0, 90, 100), score=0.9, landmarks5=lm), 0, "tilt-")  # IoU 0.4 with a and b: < 0.5
    assert sorted(f.box for f in fuse([a, b, across], 0.5)) == [(0, 0, 50, 100), (50, 0, 100, 100)]
    beside = (Face(box=(60, 0, 160, 100), score=0.9, landmarks5=lm), 0, "tilt-")  # 40% under b
    assert (60, 0, 160, 100) in [f.box for f in fuse([a, b, beside], 0.5)]


def test_the_demo_photo_gets_no_box_across_two_neighbours():
    """2008_002079: the tilt- view finds one box over the two adjacent faces at the right, which
    the upright pass finds one by one; the default CenterFace keeps the two, not the third."""
    rgb = np.asarray(Image.open(GROUP_PHOTO).convert("RGB"))
    faces = make_detector({"backend": "centerface"}).detect(rgb)
    right = [f.box for f in faces if f.box[0] > 400 and f.box[1] > 140]
    assert len(right) == 2, right
    assert all(iou(p, q) < 0.2 for i, p in enumerate(right) for q in right[i + 1:]), right


def test_tta_min_score_holds_only_the_rotated_views_to_a_higher_score():
    """The lying face is found only in the rot270 view: a floor above its score drops it, a
    floor below keeps it; the upright photo's face (the unrotated view) ignores the floor."""
    upright = np.asarray(Image.open(lfw_images()[0]).convert("RGB"))
    lying = np.ascontiguousarray(np.rot90(upright))
    (ref,) = make_detector({"backend": "dlib-hog"}).detect(upright)

    def ens(floor):
        return make_detector({"backend": "ensemble", "members": [{"backend": "dlib-hog"}], "tta": ["rot270"],
                              "tta_min_score": floor})

    assert len(ens(ref.score * 0.5).detect(lying)) == 1
    assert ens(ref.score + 1.0).detect(lying) == []
    (face,) = ens(ref.score + 1.0).detect(upright)
    assert iou(face.box, ref.box) > 0.9


def test_tiles_find_small_faces_and_tile_min_score_holds_them_to_a_higher_score():
    """2008_002079 (500x375) has heads of 12-15 px: upscaled tiles find more of them than the
    photo alone; with tile_min_score above every score the tiles add nothing."""
    rgb = np.asarray(Image.open(GROUP_PHOTO).convert("RGB"))
    plain = make_detector({"backend": "centerface"}).detect(rgb)
    tiles = {"backend": "ensemble", "members": [{"backend": "centerface"}], "tiles": True, "tile_min_side": 256}
    tiled = make_detector(tiles).detect(rgb)
    assert len(tiled) > len(plain)
    held = make_detector({**tiles, "tile_min_score": 1.01}).detect(rgb)
    assert [f.box for f in held] == [f.box for f in plain]

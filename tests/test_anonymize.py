"""Classical anonymizers on real faces: what changes, what does not, and what it does to identity."""

from __future__ import annotations

import numpy as np
import pytest
from PIL import Image

from conftest import GROUP, lfw_images
from deid.anonymize import make_anonymizer
from deid.anonymize.region import alpha_mask, region_for
from deid.audit.check import IdentityChecker
from deid.faces.dlib_backend import DlibDetector, DlibEmbedder


@pytest.fixture(scope="module")
def hog():
    return DlibDetector()


@pytest.fixture(scope="module")
def checker(hog):
    return IdentityChecker(DlibEmbedder(), hog, threshold=0.6)


def rgb(path) -> np.ndarray:
    return np.asarray(Image.open(path).convert("RGB"))


@pytest.mark.parametrize("method", ["blur", "pixelate", "mask"])
def test_only_face_regions_change(hog, method):
    img = rgb(GROUP / "two_people.jpg")
    faces = hog.detect(img)
    assert len(faces) == 2
    anon = make_anonymizer(method)
    out, facts = anon(img, faces, np.random.default_rng())
    assert out.shape == img.shape and out.dtype == np.uint8
    assert len(facts) == 2 and all(f.method == method and f.dp_scope == "none" and f.epsilon is None for f in facts)
    changed = np.any(out != img, axis=2)
    allowed = np.zeros(img.shape[:2], bool)
    for f in faces:
        reg = region_for(f, img.shape[:2], anon.params.margin, anon.params.feather)
        allowed[reg.wy0 : reg.wy1, reg.wx0 : reg.wx1] = True
    assert not changed[~allowed].any(), "pixels outside the face windows changed"
    for f in faces:
        x0, y0, x1, y1 = f.box
        assert changed[y0:y1, x0:x1].mean() > 0.9, "the face itself must change"
    assert not np.shares_memory(out, img)


def test_mask_fills_the_face_with_the_colour(hog):
    img = rgb(lfw_images()[0])
    face = hog.detect(img)[0]
    out, _ = make_anonymizer("mask", {"color": [255, 0, 255], "shape": "box"})(img, [face], None)
    x0, y0, x1, y1 = face.box
    assert (out[y0:y1, x0:x1] == [255, 0, 255]).all()


def test_pixelate_block_count(hog):
    img = rgb(GROUP / "kit_with_rose.jpg")
    face = hog.detect(img)[0]
    blocks = 6
    anon = make_anonymizer("pixelate", {"blocks": blocks, "feather": 0.0, "shape": "box", "margin": 0.0})
    out, _ = anon(img, [face], None)
    x0, y0, x1, y1 = face.box
    row = out[(y0 + y1) // 2, x0:x1]
    runs = 1 + np.count_nonzero(np.any(np.diff(row.astype(int), axis=0) != 0, axis=1))
    assert blocks - 1 <= runs <= blocks + 2


def test_feathering_is_outside_the_region():
    from deid.faces.types import Face

    face = Face(box=(40, 40, 80, 80), score=1.0, landmarks5=np.zeros((5, 2)))
    reg = region_for(face, (200, 200), margin=0.25, feather=0.2)
    a = alpha_mask(reg, "box", 0.2 * face.size)
    # full strength over the whole grown region, ramp outside, zero at the window edge
    gx0, gy0 = int(reg.gx0 - reg.wx0), int(reg.gy0 - reg.wy0)
    gx1, gy1 = int(reg.gx1 - reg.wx0), int(reg.gy1 - reg.wy0)
    assert (a[gy0:gy1, gx0:gx1] == 1).all()
    assert a[0, 0] == 0 and 0 < a[gy0 - 3, (gx0 + gx1) // 2] < 1


@pytest.mark.parametrize("method,weak,strong", [
    ("blur", {"strength": 0.02}, {"strength": 0.3}),
    ("pixelate", {"blocks": 32}, {"blocks": 4}),
])
def test_stronger_settings_move_identity_further(hog, checker, method, weak, strong):
    d_weak, d_strong = [], []
    for p in lfw_images():
        img = rgb(p)
        faces = hog.detect(img)
        for params, sink in ((weak, d_weak), (strong, d_strong)):
            out, _ = make_anonymizer(method, params)(img, faces, None)
            sink.append(checker.check(img, out, faces)[0].id_distance)
    assert np.mean(d_strong) > np.mean(d_weak) + 0.1
    assert np.mean(np.array(d_weak) >= 0.6) < 0.5  # a light touch does not de-identify
    assert np.mean(np.array(d_strong) >= 0.6) >= 0.9


def test_identity_check_on_unchanged_face_is_zero_and_fails(hog, checker):
    img = rgb(lfw_images()[0])
    faces = hog.detect(img)
    [res] = checker.check(img, img.copy(), faces)
    assert res.id_distance == pytest.approx(0.0, abs=1e-6)
    assert res.passed is False and res.still_detected is True
    out, _ = make_anonymizer("mask")(img, faces, None)
    [res] = checker.check(img, out, faces)
    assert res.passed is True and res.still_detected is False and res.id_distance > 0.6

"""The adaptive attacks' parts on real faces: reversal operators, the aware attacker's maps
and their cache (deid.evaluate.reversal, deid.evaluate.aware). The attacks themselves run
end to end in tests/test_evaluate.py."""

from __future__ import annotations

from pathlib import Path

import numpy as np
import pytest
from PIL import Image

from deid.anonymize.classical import Blur, Pixelate
from deid.evaluate import aware, reversal
from deid.evaluate.core import Evaluator
from deid.faces import make_detector

HERE = Path(__file__).resolve().parent
PUBLIC = HERE / "fixtures" / "lfw-public-ref"
FACE = sorted((HERE.parent / "manifests" / "samples" / "lfw").glob("*/*.jpg"))[0]


@pytest.fixture(scope="module")
def face():
    rgb = np.asarray(Image.open(FACE).convert("RGB"))
    faces = make_detector({"backend": "dlib-hog"}).detect(rgb)
    assert faces, FACE
    return rgb, faces


def _mse(a, b, box):
    x0, y0, x1, y1 = box
    return float(((a[y0:y1, x0:x1].astype(float) - b[y0:y1, x0:x1].astype(float)) ** 2).mean())


@pytest.mark.parametrize("strength", [0.03, 0.05])
def test_deconvolution_with_the_stated_sigma_brings_a_blurred_face_closer(face, strength):
    rgb, faces = face
    params = {"strength": strength}
    blurred, _ = Blur(params)(rgb, faces)
    rows = [{"box": f.box, "check": "measured"} for f in faces]
    rev = reversal.reverse("blur", params, blurred, rows)
    assert set(rev) == {"wiener-0.01", "richardson-lucy"}
    box = faces[0].box
    for name, img in rev.items():
        assert img.shape == rgb.shape and img.dtype == np.uint8
        assert _mse(img, rgb, box) < 0.8 * _mse(blurred, rgb, box), name
    # outside the method's region the released pixels are kept as they are
    x0, y0, x1, y1 = box
    assert np.array_equal(rev["wiener-0.01"][:, : max(0, x0 - 2 * (x1 - x0))], blurred[:, : max(0, x0 - 2 * (x1 - x0))])
    # a face with the small-face treatment is not the method's: nothing is reversed there
    small = reversal.reverse("blur", params, blurred, [dict(rows[0], check="not_applicable")])
    assert all(np.array_equal(v, blurred) for v in small.values())


def test_upsampling_the_stated_cells_brings_a_pixelated_face_closer(face):
    rgb, faces = face
    out, _ = Pixelate({"blocks": 12})(rgb, faces)
    rev = reversal.reverse("pixelate", {"blocks": 12}, out, [{"box": f.box} for f in faces])
    assert set(rev) == {"bicubic", "smooth"}
    for name, img in rev.items():
        assert _mse(img, rgb, faces[0].box) < _mse(out, rgb, faces[0].box), name
    assert reversal.reverse("mask", {}, out, [{"box": faces[0].box}]) == {}


def test_the_mlp_map_is_scikit_learns_forward_pass():
    from sklearn.neural_network import MLPRegressor

    rng = np.random.default_rng(0)
    x, y = rng.normal(size=(80, 16)), rng.normal(size=(80, 8))
    mlp = MLPRegressor(hidden_layer_sizes=(32,), max_iter=50, random_state=0).fit(x, y)
    m = aware.MLPMap(mu=np.zeros(16), sd=np.ones(16), W1=mlp.coefs_[0], b1=mlp.intercepts_[0], W2=mlp.coefs_[1],
                     b2=mlp.intercepts_[1], ymu=np.zeros(8), ysd=np.ones(8))
    assert np.allclose(m.apply(x), mlp.predict(x), atol=1e-10)


def test_fitted_maps_recover_a_known_linear_relation():
    rng = np.random.default_rng(1)
    a = rng.normal(size=(200, 12))
    w = rng.normal(size=(12, 12))
    o = a @ w + 0.5 + 0.01 * rng.normal(size=(200, 12))
    maps, rep = aware.fit_maps(a, o)
    assert rep["holdout_distance"]["linear"] < 0.05 * rep["holdout_distance_unmapped"]
    assert rep["holdout_distance"]["mlp"] < 0.5 * rep["holdout_distance_unmapped"]
    with pytest.raises(aware.Unavailable, match="at least 10"):
        aware.fit_maps(a[:5], o[:5])


def test_aware_maps_are_cached_on_disk_and_reloaded_without_refitting(tmp_path, monkeypatch):
    monkeypatch.setenv("DEID_CACHE_DIR", str(tmp_path / "cache"))
    recs = {"mobilefacenet": None}
    ev = Evaluator(recognizers=recs, public_ref=str(PUBLIC), public_n=24, progress=False)
    (maps, report), = ev.aware_maps("pixelate", {"blocks": 8}).values()
    assert report["n_public"] >= 20 and ev._public is not None
    files = list((tmp_path / "cache" / "evaluate-aware").glob("*.npz"))
    assert len(files) == 1
    with np.load(files[0], allow_pickle=False) as z:   # plain arrays: nothing to unpickle
        assert "linear.W" in z and "mlp.W1" in z
    ev2 = Evaluator(recognizers=recs, public_ref=str(PUBLIC), public_n=24, progress=False)
    (maps2, report2), = ev2.aware_maps("pixelate", {"blocks": 8}).values()
    assert ev2._public is None and report2 == report   # loaded: the public set was not measured again
    x = np.random.default_rng(0).normal(size=(3, maps["linear"].W.shape[0]))
    for k in ("linear", "mlp"):
        assert np.allclose(maps[k].apply(x), maps2[k].apply(x))
    # other params are another attacker: fitted anew
    ev2.aware_maps("pixelate", {"blocks": 16})
    assert len(list((tmp_path / "cache" / "evaluate-aware").glob("*.npz"))) == 2


def test_the_aware_attacker_says_why_it_cannot_run(tmp_path, monkeypatch):
    monkeypatch.delenv("DEID_PUBLIC_REF", raising=False)
    ev = Evaluator(recognizers={"mobilefacenet": None}, progress=False)
    with pytest.raises(aware.Unavailable, match="--public-ref"):
        ev.aware_maps("blur", {})
    ev = Evaluator(recognizers={"mobilefacenet": None}, public_ref=str(PUBLIC), public_n=24, progress=False)
    with pytest.raises(aware.Unavailable, match="--manifest"):
        ev.aware_maps("dp-image", {"epsilon": 10})
    with pytest.raises(aware.Unavailable, match="no images"):
        Evaluator(recognizers={"mobilefacenet": None}, public_ref=str(tmp_path), progress=False).aware_maps("blur", {})


def test_a_dp_image_group_without_the_manifest_says_why_it_was_not_audited():
    from deid.evaluate.core import Group

    ev = Evaluator(recognizers={"mobilefacenet": None}, progress=False)
    g = Group(key=("r", "dp-image", "{}"), run_id="r", method="dp-image", params={"epsilon": 1.0})
    assert "--manifest" in ev._dp_audit(g)["why"]
    assert ev._dp_audit(Group(key=("r", "blur", "{}"), run_id="r", method="blur", params={})) is None
    assert Evaluator(recognizers={"mobilefacenet": None}, dp_audit=False)._dp_audit(g) is None


def test_the_second_detector_is_of_another_family():
    from deid.evaluate.utility import second_detector_for

    assert second_detector_for("centerface") == "face-mesh"   # the default detector's run
    assert second_detector_for("face-mesh") == "centerface"
    assert second_detector_for("dlib-hog") == "dlib-cnn" and second_detector_for("dlib-cnn") == "dlib-hog"


@pytest.mark.parametrize("sigma", [1.5, 3.0, 4.0])
def test_richardson_lucy_is_scikit_images_update(face, sigma):
    """Known answer: the OpenCV-Gaussian Richardson-Lucy equals scikit-image's on a real face
    (interior, away from the borders where the two pad differently) and sharpens the blur."""
    import cv2
    from skimage.restoration import richardson_lucy

    rgb, faces = face
    x0, y0, x1, y1 = faces[0].box
    img = rgb[y0:y1, x0:x1].astype(float) / 255.0
    blurred = cv2.GaussianBlur(img, (0, 0), sigma, borderType=cv2.BORDER_REFLECT)
    ours = reversal.richardson_lucy_gaussian(blurred, sigma, 10)
    psf = reversal._gaussian_psf(sigma)
    ref = np.stack([richardson_lucy(np.clip(blurred[..., c], 1e-6, 1), psf, num_iter=10, clip=False)
                    for c in range(3)], -1)
    m = int(4 * sigma) + 10
    assert np.abs(ours - ref)[m:-m, m:-m].max() < 0.02
    assert np.abs(ours - img)[m:-m, m:-m].mean() < 0.85 * np.abs(blurred - img)[m:-m, m:-m].mean()

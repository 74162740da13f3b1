"""The universal adversarial perturbation (AnonymousNet stage IV, deid.anonymize.uap): fitted on
real public faces against the real MobileFaceNet (PyTorch), it moves held-out faces' embeddings
further than random noise of the same bound; it never leaves its bound or its region; the file
round-trips with its card; the attribute method adds it inside the swapped region."""

from __future__ import annotations

import json

import numpy as np
import pytest
from PIL import Image

from tests.conftest import REPO, lfw_images

torch = pytest.importorskip("torch")

from deid.anonymize import uap
from deid.evaluate import uap_fit

PUBLIC = REPO / "tests" / "fixtures" / "lfw-public-ref"


@pytest.fixture(scope="module")
def net():
    from deid.evaluate.recognizers import MobileFaceNetTorch

    return MobileFaceNetTorch()


@pytest.fixture(scope="module")
def heldout():
    """Aligned crops of the lfw-eval fixture and the bundled LFW samples: people of lfw-dev,
    none of them in lfw-public-ref (the fit set)."""
    a, _ = uap_fit.public_crops(str(REPO / "tests" / "fixtures" / "lfw-eval"), 40)
    b, _ = uap_fit.public_crops(str(REPO / "manifests" / "samples" / "lfw"), 40)
    return np.concatenate([a, b])


@pytest.fixture(scope="module")
def small_fit(tmp_path_factory):
    """A short fit on the public fixture (the card, the file, the bound); the effect is tested
    on the shipped perturbation, fitted with the make target's settings."""
    u = uap_fit.fit_public(str(PUBLIC), n=16, holdout=0.25, xi=8.0, epochs=1, inner_steps=1, seed=3, command="test")
    path = tmp_path_factory.mktemp("uap") / "u.npz"
    u.save(str(path))
    return u, path


def test_a_fit_stays_in_its_bound_and_round_trips_with_its_card(small_fit):
    u, path = small_fit
    assert np.abs(u.v).max() <= 8.0 + 1e-5 and np.abs(u.v).max() > 1.0
    again = uap.UAP.load(str(path))
    assert np.array_equal(again.v, u.v) and again.card == u.card and again.fingerprint == u.fingerprint
    c = u.card
    assert c["format"] == uap.FORMAT and c["recognizer"] == "mobilefacenet" and c["xi"] == 8.0
    assert c["n_fit"] + c["n_heldout"] <= 16 and c["n_heldout"] >= 3 and len(c["set_fingerprint"]) == 64
    assert 0.0 <= c["fit_fooling_rate"] <= 1.0 and c["command"] == "test"
    # public data only: no file name of the set is in the card
    assert not any(p.stem in json.dumps(c) for p in PUBLIC.glob("*.jpg"))


def test_a_file_that_is_not_a_perturbation_is_refused_naming_it(tmp_path):
    bad = tmp_path / "not-a-uap.npz"
    np.savez(bad, v=np.zeros((4, 4, 3), np.float32))
    with pytest.raises(ValueError, match="not-a-uap.npz"):
        uap.UAP.load(str(bad))
    with pytest.raises(ValueError, match="no such built-in"):
        uap.UAP.load("builtin:nothing")


def test_the_shipped_perturbation_moves_heldout_faces_further_than_noise(net, heldout):
    """On faces of people outside the fit set: the embedding distance to the clean face under
    the perturbation beats random signs of the same L-infinity bound (the strongest noise of
    that bound) on nearly every face, and by a wide margin in the median."""
    u = uap.UAP.load("builtin:uap-mobilefacenet")
    assert u.card["recognizer_fingerprint"] == net.fingerprint and u.xi == 8.0
    d = uap.fooling(net, heldout, u.v, 1.1)
    noise = np.random.default_rng().choice([-u.xi, u.xi], u.v.shape).astype(np.float32)
    dn = uap.fooling(net, heldout, noise, 1.1)
    print(f"\nheld-out ({len(d)} faces): perturbation median {np.median(d):.3f}, noise {np.median(dn):.3f}, "
          f"fooled {np.mean(d >= 1.1):.1%}")
    assert len(d) >= 24
    assert np.mean(d > dn) >= 0.9
    assert np.median(d) >= 2.0 * np.median(dn)


def test_apply_stays_inside_the_region_and_the_bound():
    u = uap.UAP.load("builtin:uap-mobilefacenet")
    rgb = np.asarray(Image.open(lfw_images()[0]).convert("RGB"))
    from deid.faces.dlib_backend import DlibDetector
    from deid.faces.insightface_backend import arcface5_from_68

    f = DlibDetector("dlib-hog", upsample=1, landmarks=68).detect(rgb)[0]
    a5 = arcface5_from_68(np.asarray(f.landmarks68, np.float64))
    x0, y0, x1, y1 = (int(v) for v in f.box)
    alpha = np.zeros((y1 - y0, x1 - x0), np.float32)
    alpha[:, : (x1 - x0) // 2] = 1.0  # the left half of the box only
    out = u.apply(rgb, a5, alpha, window=(x0, y0, x1, y1))
    diff = out.astype(int) - rgb.astype(int)
    inside = np.zeros(rgb.shape[:2], bool)
    inside[y0:y1, x0:x0 + (x1 - x0) // 2] = True
    assert not diff[~inside].any()
    assert np.abs(diff).max() <= 8 + 1 and np.count_nonzero(diff[inside]) > 0.5 * diff[inside].size
    assert uap.psnr(rgb, out) > 30.0

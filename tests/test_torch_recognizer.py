"""MobileFaceNet run by PyTorch (deid.evaluate.recognizers.MobileFaceNetTorch): the same
embeddings as the TFLite interpreter on real faces, at any batch size, and gradients that
agree with finite differences. It is what the universal perturbation is computed on."""

from __future__ import annotations

import numpy as np
import pytest
from PIL import Image

from tests.conftest import lfw_images

torch = pytest.importorskip("torch")

from deid.evaluate.recognizers import Landmarker, MobileFaceNet, MobileFaceNetTorch, arcface_crop  # noqa: E402
from deid.faces.dlib_backend import DlibDetector  # noqa: E402


@pytest.fixture(scope="module")
def crops() -> np.ndarray:
    det, lm = DlibDetector("dlib-hog", upsample=1), Landmarker()
    out = []
    for p in lfw_images()[:7]:
        rgb = np.asarray(Image.open(p).convert("RGB"))
        faces = det.detect(rgb)
        assert faces, p
        f = max(faces, key=lambda f: (f.box[2] - f.box[0]))
        out.append(arcface_crop(rgb, lm.geometry(rgb, f.box)))
    return np.stack(out)


@pytest.fixture(scope="module")
def nets():
    return MobileFaceNet(), MobileFaceNetTorch()


def test_same_embeddings_as_tflite(crops, nets):
    tfl, tor = nets
    assert tor.fingerprint == tfl.fingerprint
    a = tfl.embed_crops(crops)
    for batch in (1, 2, 7):  # the TFLite graph was exported for batch 2
        b = tor.embed_crops(crops, batch=batch)
        assert np.abs(a - b).max() < 1e-4, batch
    # different people stay apart and the same face matches itself: the numbers are embeddings
    d = np.linalg.norm(a[:, None] - a[None], axis=2)
    assert d[~np.eye(len(a), dtype=bool)].min() > 0.3


def test_gradient_matches_finite_difference(crops, nets):
    _, tor = nets
    x0 = torch.from_numpy(crops[:2].astype(np.float64)).permute(0, 3, 1, 2).float()
    ref = tor.embed_tensor(x0).detach()
    x = x0.clone().requires_grad_(True)
    loss = (tor.embed_tensor(x) * ref.flip(0)).sum()
    loss.backward()
    g = x.grad
    assert torch.isfinite(g).all() and g.abs().sum() > 0
    rng = np.random.default_rng(7)
    for _ in range(3):
        v = torch.from_numpy(rng.standard_normal(x0.shape)).float()
        v /= v.norm()
        h = 0.5
        with torch.no_grad():
            lp = (tor.embed_tensor(x0 + h * v) * ref.flip(0)).sum()
            lm = (tor.embed_tensor(x0 - h * v) * ref.flip(0)).sum()
        fd = float((lp - lm) / (2 * h))
        an = float((g * v).sum())
        assert abs(fd - an) <= 0.05 * abs(an) + 1e-4, (fd, an)

"""Latent models: the shipped eigenfaces on real faces, fitting, TorchScript loading, the CLI.

Thresholds were measured (bench/latent_grid.py, docs/latent.md) and leave a margin: on the
12 bundled LFW samples the shipped model's plain reconstruction has a mean per-pixel RMSE of
18.4 (0..255 units; 13.1..23.6 per face) against 52.4 for the public mean face; all 12 pasted
reconstructions are re-detected; 99.1% of their codes lie inside the public bounds.
"""

from __future__ import annotations

import hashlib
import io
import json
import shutil
import subprocess
import sys
from importlib import resources
from pathlib import Path

import fsspec
import numpy as np
import pytest
import torch
from PIL import Image

from conftest import REPO, lfw_images
from deid.faces.align import align
from deid.faces.dlib_backend import DlibDetector
from deid.faces.types import iou
from deid.latent import bounds_from_codes, face_mask, fingerprint, load_latent_model, paste_back
from deid.latent.base import LatentModel
from deid.latent.pca import PCALatentModel, fit_pca, in_holdout, pca_svd, set_fingerprint
from deid.latent.torchscript import TorchScriptLatentModel


@pytest.fixture(scope="module")
def model() -> PCALatentModel:
    return load_latent_model("builtin:eigenfaces")


@pytest.fixture(scope="module")
def hog() -> DlibDetector:
    return DlibDetector()


@pytest.fixture(scope="module")
def samples(hog):
    """(rgb, face) of the 12 bundled LFW photos: one face each."""
    out = []
    for p in lfw_images():
        rgb = np.asarray(Image.open(p).convert("RGB"))
        faces = hog.detect(rgb)
        assert len(faces) == 1, p.name
        out.append((rgb, faces[0]))
    return out


@pytest.fixture(scope="module")
def aligned(model, samples):
    return [align(rgb, f.landmarks5, model.crop_size, layout=model.layout, scale=model.align_scale) for rgb, f in samples]


def rmse(a: np.ndarray, b: np.ndarray) -> float:
    return float(np.sqrt(np.mean((a.astype(np.float64) - b.astype(np.float64)) ** 2)))


# -- the shipped model ----------------------------------------------------------------------


def test_builtin_model_is_consistent(model):
    assert isinstance(model, LatentModel) and model.backend == "pca"
    d, s = model.dim, model.crop_size
    assert (s, d) == (64, 128)
    for a in (model.lower, model.upper, model.mean, model.std):
        assert a.shape == (d,) and a.dtype == np.float64 and np.all(np.isfinite(a))
    assert np.all(model.lower < model.upper) and np.all(model.std > 0)
    assert np.all((model.lower < model.mean) & (model.mean < model.upper))
    # PCA codes: variance descends, codes centred on the fitting set
    assert np.all(np.diff(model.std[:16]) < 0)
    assert np.all(np.abs(model.mean) < 1e-3 * model.std[0])
    c = model.card
    assert c["backend"] == "pca" and c["dim"] == d and c["crop_size"] == s and c["layout"] == model.layout == "dlib5"
    assert c["align_scale"] == model.align_scale
    assert c["fitted_on"].endswith("lfw-public-ref") and c["n_images"] >= 2500 and c["n_faces"] >= c["n_images_with_face"]
    assert len(c["set_fingerprint"]) == 64 and int(c["set_fingerprint"], 16) >= 0
    assert "quantile" in c["bounds_method"] and c["quantile"] == 0.005
    assert c["fit_command"].startswith("deid latent fit --images ") and "--components 128" in c["fit_command"]
    assert 0.85 < c["explained_variance"] < 0.95
    assert c["holdout"] > 0 and c["holdout_rmse"] < 25
    assert c["l1_sensitivity"] == pytest.approx(float(np.sum(model.upper - model.lower)))
    # the file is small and its fingerprint is its sha256
    data = (resources.files("deid.latent") / "models" / "eigenfaces-64-128.npz").read_bytes()
    assert len(data) < 3_000_000
    assert model.fingerprint == hashlib.sha256(data).hexdigest()


def test_fingerprint_is_stable(model):
    again = PCALatentModel.load("builtin:eigenfaces-64-128")
    assert again.fingerprint == model.fingerprint == fingerprint("builtin:eigenfaces") == fingerprint(model)
    assert load_latent_model(None).fingerprint == model.fingerprint
    assert load_latent_model({"backend": "pca", "uri": "builtin:eigenfaces"}).fingerprint == model.fingerprint
    # the canonical bytes are reproducible from the arrays
    rebuilt = PCALatentModel.from_bytes(model.to_bytes())
    rebuilt._data = None
    assert hashlib.sha256(rebuilt.to_bytes()).hexdigest() == model.fingerprint


def test_reconstruction_of_real_faces(model, aligned):
    crops = np.stack([c for c, _ in aligned])
    z = model.encode(crops)
    assert z.shape == (len(crops), model.dim) and z.dtype == np.float64
    rec = model.decode(z)
    assert rec.shape == crops.shape and rec.dtype == np.uint8
    mean_face = model.decode(model.mean[None])[0]
    err = [rmse(c, r) for c, r in zip(crops, rec)]
    base = [rmse(c, mean_face) for c in crops]
    assert np.mean(err) < 22.0 and max(err) < 28.0
    assert np.mean(err) < 0.5 * np.mean(base)
    assert all(e < b for e, b in zip(err, base))
    # batch independence: one face at a time gives the same crops (up to rounding)
    one = np.concatenate([model.decode(model.encode(c[None])) for c in crops[:3]])
    assert np.abs(one.astype(int) - rec[:3]).max() <= 1


def test_plain_reconstruction_pasted_back_is_still_a_face(model, samples, aligned, hog):
    mask = model.mask()
    found = 0
    for (rgb, face), (crop, m) in zip(samples, aligned):
        out = paste_back(rgb, model.decode(model.encode(crop[None]))[0], m, mask)
        assert out.shape == rgb.shape and out.dtype == np.uint8
        # only the face oval changed: the photo's corners are untouched
        assert np.array_equal(out[:20, :20], rgb[:20, :20]) and np.array_equal(out[-20:, -20:], rgb[-20:, -20:])
        assert rmse(out, rgb) > 1.0
        found += any(iou(g.box, face.box) >= 0.3 for g in hog.detect(out))
    assert found >= len(samples) - 1


def test_bounds_contain_the_codes_of_unseen_faces(model, aligned):
    z = model.encode(np.stack([c for c, _ in aligned]))
    inside = (z >= model.lower) & (z <= model.upper)
    assert inside.mean() >= 0.97
    clipped = model.clip(z)
    assert np.all(clipped >= model.lower) and np.all(clipped <= model.upper)


def test_truncation_is_nested(model, aligned):
    m32 = load_latent_model({"backend": "pca", "uri": "builtin:eigenfaces", "dim": 32})
    assert m32.dim == 32 and m32.card["dim"] == 32 and m32.card["truncated_from"] == model.fingerprint
    crops = np.stack([c for c, _ in aligned[:4]])
    assert np.allclose(m32.encode(crops), model.encode(crops)[:, :32])
    assert np.array_equal(m32.lower, model.lower[:32]) and np.array_equal(m32.std, model.std[:32])
    assert m32.fingerprint == model.truncated(32).fingerprint != model.fingerprint
    assert m32.card["l1_sensitivity"] == pytest.approx(float(np.sum(model.upper[:32] - model.lower[:32])))
    with pytest.raises(ValueError, match="dim"):
        model.truncated(model.dim + 1)


def test_face_mask_and_interface_checks(model):
    mk = face_mask(64, "dlib5", 0.8)
    assert mk.shape == (64, 64) and mk.dtype == np.float32 and mk.min() == 0.0 and mk.max() == 1.0
    assert mk[36, 32] == 1.0 and mk[0, 0] == 0.0 and mk[63, 63] == 0.0 and mk[:, 0].max() == 0.0
    with pytest.raises(ValueError, match="uint8"):
        model.encode(np.zeros((1, 64, 64, 3), dtype=np.float32))
    with pytest.raises(ValueError, match=r"\[n, 64, 64, 3\]"):
        model.encode(np.zeros((64, 64, 3), dtype=np.uint8))
    with pytest.raises(ValueError, match="codes"):
        model.decode(np.zeros((2, model.dim + 1)))
    assert model.encode(np.zeros((0, 64, 64, 3), np.uint8)).shape == (0, model.dim)
    assert model.decode(np.zeros((0, model.dim))).shape == (0, 64, 64, 3)


def test_spec_errors():
    with pytest.raises(ValueError, match="unknown key"):
        load_latent_model({"backend": "pca", "uri": "builtin:eigenfaces", "url": "x"})
    with pytest.raises(ValueError, match="unknown backend"):
        load_latent_model({"backend": "stylegan"})
    with pytest.raises(ValueError, match="missing bounds"):
        load_latent_model({"backend": "torchscript", "encoder": "e.pt", "decoder": "d.pt", "crop_size": 8})
    with pytest.raises(FileNotFoundError, match="no built-in"):
        load_latent_model("builtin:nope")


# -- fitting --------------------------------------------------------------------------------


def _sample_folder(tmp_path: Path) -> Path:
    src = tmp_path / "ref"
    for p in lfw_images():
        (src / p.parent.name).mkdir(parents=True, exist_ok=True)
        shutil.copy(p, src / p.parent.name / p.name)
    return src


def test_fit_pca_on_a_tiny_folder(tmp_path):
    src = _sample_folder(tmp_path)
    out = tmp_path / "m.npz"
    m = fit_pca(str(src), 32, 4, out=str(out), align_scale=0.8)
    loaded = PCALatentModel.load(str(out))
    assert loaded.fingerprint == m.fingerprint == hashlib.sha256(out.read_bytes()).hexdigest()
    c = loaded.card
    files = sorted(p.relative_to(src).as_posix() for p in src.rglob("*.jpg"))
    want = set_fingerprint((f, hashlib.sha256((src / f).read_bytes()).hexdigest()) for f in files)
    assert c["set_fingerprint"] == want and c["n_images"] == 12 and c["n_faces"] == 12
    assert c["fit_command"] == (f"deid latent fit --images {src} --out {out} --crop 32 --components 4 --align-scale 0.8 "
                                "--quantile 0.005 --faces all --min-face 48 --upsample 1 --holdout 0")
    assert (loaded.dim, loaded.crop_size) == (4, 32) and 0 < c["explained_variance"] < 1
    # fitting the same folder again: same set, same bounds
    again = fit_pca(str(src), 32, 4, align_scale=0.8)
    assert again.card["set_fingerprint"] == want
    assert np.allclose(again.lower, loaded.lower) and np.allclose(again.std, loaded.std)
    # one more (or one changed) file is another set
    shutil.copy(src / files[0], src / "extra.jpg")
    assert fit_pca(str(src), 32, 4, align_scale=0.8).card["set_fingerprint"] != want


def test_fit_pca_holdout_and_errors(tmp_path):
    src = _sample_folder(tmp_path)
    held = [p for p in lfw_images() if in_holdout(f"{p.parent.name}/{p.name}", 0.3)]
    m = fit_pca(str(src), 24, 3, holdout=0.3)
    assert m.card["holdout_n_images"] == len(held) > 0 and m.card["n_images"] == 12 - len(held)
    assert m.card["holdout_rmse"] > m.card["fit_rmse"] > 0
    with pytest.raises(ValueError, match="n_components"):
        fit_pca(str(src), 24, 50)
    with pytest.raises(FileNotFoundError):
        fit_pca(str(tmp_path / "missing"), 24, 3)
    with pytest.raises(ValueError, match="not a deid PCA model"):
        PCALatentModel.from_bytes(b"not a zip")


def test_randomized_svd_matches_exact():
    rng = np.random.default_rng(1)
    x = (rng.standard_normal((300, 20)) @ rng.standard_normal((20, 500)) * 10 + rng.standard_normal((300, 500)) + 128)
    x = x.clip(0, 255).astype(np.uint8)
    me, ce, ve, te = pca_svd(x, 8, method="exact")
    mr, cr, vr, tr = pca_svd(x, 8, method="randomized", chunk=64)
    assert np.allclose(me, mr) and te == pytest.approx(tr)
    assert np.allclose(ve, vr, rtol=1e-4)
    assert np.abs(ce - cr).max() < 1e-3
    assert np.allclose(ce @ ce.T, np.eye(8), atol=1e-5)


# -- TorchScript ----------------------------------------------------------------------------


class _LinearEncoder(torch.nn.Module):
    """NCHW [0,1] -> PCA codes, the same maps as a PCA model (which flattens HWC)."""

    def __init__(self, mean: torch.Tensor, comp: torch.Tensor):
        super().__init__()
        self.register_buffer("mean", mean)
        self.register_buffer("comp", comp)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return (x.permute(0, 2, 3, 1).flatten(1) - self.mean) @ self.comp.T


class _LinearDecoder(torch.nn.Module):
    def __init__(self, mean: torch.Tensor, comp: torch.Tensor, size: int):
        super().__init__()
        self.register_buffer("mean", mean)
        self.register_buffer("comp", comp)
        self.size = size

    def forward(self, z: torch.Tensor) -> torch.Tensor:
        x = z @ self.comp + self.mean
        return x.reshape(z.shape[0], self.size, self.size, 3).permute(0, 3, 1, 2)


class _Flatten(torch.nn.Module):
    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return x.flatten(1)


class _Unflatten(torch.nn.Module):
    def __init__(self, size: int):
        super().__init__()
        self.size = size

    def forward(self, z: torch.Tensor) -> torch.Tensor:
        return z.reshape(z.shape[0], 3, self.size, self.size)


def _save_script(module: torch.nn.Module, uri: str) -> None:
    buf = io.BytesIO()
    torch.jit.save(torch.jit.script(module), buf)
    with fsspec.open(uri, "wb") as f:
        f.write(buf.getvalue())


def test_torchscript_matches_pca_from_file_uri(tmp_path, model, aligned):
    mean = torch.from_numpy(model.mean_face.reshape(-1).copy())
    comp = torch.from_numpy(model._comp.copy())
    enc_uri, dec_uri = (tmp_path / "enc.pt").as_uri(), (tmp_path / "dec.pt").as_uri()
    assert enc_uri.startswith("file://")
    _save_script(_LinearEncoder(mean, comp), enc_uri)
    _save_script(_LinearDecoder(mean, comp, model.crop_size), dec_uri)
    card = {"fitted_on": "lfw-public-ref", "set_fingerprint": model.card["set_fingerprint"]}
    np.savez(tmp_path / "bounds.npz", lower=model.lower, upper=model.upper, mean=model.mean, std=model.std,
             card=np.frombuffer(json.dumps(card).encode(), dtype=np.uint8))
    ts = load_latent_model({"backend": "torchscript", "encoder": enc_uri, "decoder": dec_uri,
                            "bounds": (tmp_path / "bounds.npz").as_uri(), "crop_size": model.crop_size,
                            "align_scale": model.align_scale, "device": "cpu", "batch_size": 5})
    assert isinstance(ts, TorchScriptLatentModel) and ts.dim == model.dim and str(ts.device) == "cpu"
    assert ts.card["set_fingerprint"] == model.card["set_fingerprint"] and ts.card["stats"] == "public reference codes"
    assert np.array_equal(ts.std, model.std) and len(ts.fingerprint) == 64
    crops = np.stack([c for c, _ in aligned])
    z = ts.encode(crops)
    assert z.dtype == np.float64 and np.allclose(z, model.encode(crops), atol=1e-3)
    assert np.abs(ts.decode(z).astype(int) - model.decode(z)).max() <= 1
    # same files, same fingerprint; loading again is deterministic
    again = TorchScriptLatentModel(enc_uri, dec_uri, (tmp_path / "bounds.npz").as_uri(), model.crop_size,
                                   align_scale=model.align_scale, device="cpu")
    assert again.fingerprint == ts.fingerprint


def test_torchscript_memory_uri_value_range_and_checks():
    size, d = 4, 48
    _save_script(_Flatten(), "memory://latent-test/enc.pt")
    _save_script(_Unflatten(size), "memory://latent-test/dec.pt")
    lo, hi = -np.ones(d), np.ones(d)
    crops = np.random.default_rng(0).integers(0, 256, (7, size, size, 3), dtype=np.uint8)
    spec = {"backend": "torchscript", "encoder": "memory://latent-test/enc.pt", "decoder": "memory://latent-test/dec.pt",
            "bounds": {"lower": lo, "upper": hi}, "crop_size": size, "batch_size": 3}
    for vr, vmin in (("0,1", 0.0), ("-1,1", -1.0)):
        m = load_latent_model({**spec, "value_range": vr})
        z = m.encode(crops)
        assert z.shape == (7, d) and z.min() >= vmin and z.max() <= 1.0
        assert z.min() < vmin + 0.05  # the range is really used
        assert np.array_equal(m.decode(z), crops)  # uint8 -> float -> uint8 is lossless
        assert m.card["stats"] == "derived-from-bounds" and m.card["value_range"] == vr
        assert np.allclose(m.mean, 0) and np.all(m.std > 0)
    # bounds that do not match the encoder fail at load (the probe), not mid-run
    with pytest.raises(ValueError, match="encoder returned 48"):
        load_latent_model({**spec, "bounds": {"lower": lo[:10], "upper": hi[:10]}})
    with pytest.raises(ValueError, match="lower must be < upper"):
        load_latent_model({**spec, "bounds": {"lower": hi, "upper": lo}})
    with pytest.raises(ValueError, match="value_range"):
        load_latent_model({**spec, "value_range": "0,255"})
    # a decoder at another resolution is resized to the crop size
    _save_script(_Unflatten(8), "memory://latent-test/dec8.pt")
    m = load_latent_model({**spec, "decoder": "memory://latent-test/dec8.pt",
                           "bounds": {"lower": -np.ones(192), "upper": np.ones(192)}, "probe": False})
    assert m.decode(np.zeros((2, 192))).shape == (2, size, size, 3)


def test_bounds_from_codes():
    z = np.random.default_rng(0).standard_normal((2000, 3))
    b = bounds_from_codes(z, 0.005)
    assert np.all(np.abs(b["lower"] + 2.576) < 0.25) and np.all(np.abs(b["upper"] - 2.576) < 0.25)
    inside = ((z >= b["lower"]) & (z <= b["upper"])).mean()
    assert 0.985 < inside < 0.995


# -- CLI ------------------------------------------------------------------------------------


def test_cli_info_subprocess(model):
    deid = Path(sys.executable).parent / "deid"
    r = subprocess.run([str(deid), "latent", "info", "builtin:eigenfaces", "--json"], capture_output=True, text=True,
                       timeout=120, cwd=REPO)
    assert r.returncode == 0, r.stderr
    card = json.loads(r.stdout)
    assert card["fingerprint"] == model.fingerprint and card["dim"] == model.dim
    assert card["set_fingerprint"] == model.card["set_fingerprint"] and card["fit_command"].startswith("deid latent fit")
    r = subprocess.run([str(deid), "latent", "info", "/nonexistent/model.npz"], capture_output=True, text=True, timeout=120)
    assert r.returncode == 2 and "error" in r.stderr


def test_cli_fit_and_info(tmp_path):
    from typer.testing import CliRunner

    from deid.cli.app import app

    src = _sample_folder(tmp_path)
    out = tmp_path / "cli.npz"
    r = CliRunner().invoke(app, ["latent", "fit", "--images", str(src), "--out", str(out), "--crop", "32",
                                 "--components", "3", "--quiet"])
    assert r.exit_code == 0, r.output
    assert "eigenfaces-32-3" in r.output and "set " in r.output
    card = PCALatentModel.load(str(out)).card
    assert card["fit_command"].startswith(f"deid latent fit --images {src} --out {out} --crop 32 --components 3")
    r = CliRunner().invoke(app, ["latent", "info", str(out)])
    assert r.exit_code == 0 and card["set_fingerprint"] in r.output

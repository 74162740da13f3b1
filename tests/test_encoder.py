"""The encoder into the generator's w and the private-encoder method, on real faces with the
real generator (MobileStyleGAN), the real detector and the real recognizer (MobileFaceNet).

One small encoder is fitted once for the module (few synthetic pairs, a tiny network): the
numbers are those of a short fit, not of `make encoder`'s; the claims tested are directions
(better than the average latent; a higher beta, a higher identity similarity)."""

from __future__ import annotations

import json
import shutil
from pathlib import Path

import numpy as np
import pytest

from conftest import REPO, base_manifest, lfw_images

pytest.importorskip("openvino")

# the bundled 96 public LFW photos (tests/fixtures/README.md): present in every clone, so CI runs these
PUBLIC = REPO / "tests" / "fixtures" / "lfw-public-ref"
# the beta test's face: the first of the full public set (its start cosine is positive; see the test)
SHARED_PUBLIC = REPO.parent / "shared" / "data" / "lfw-public-ref"


@pytest.fixture(scope="module")
def stats_dir(tmp_path_factory):
    return str(tmp_path_factory.mktemp("stats"))


@pytest.fixture(scope="module")
def gen(stats_dir):
    from deid.cli.fit_encoder import FIT_CROP
    from deid.latent.registry import load_latent_model

    try:
        return load_latent_model({"backend": "mobilestylegan", "runtime": "openvino", "stats_samples": 500,
                                  "cache_dir": stats_dir, "crop_size": FIT_CROP})
    except FileNotFoundError as exc:
        pytest.skip(f"MobileStyleGAN not installed: {exc}")


@pytest.fixture(scope="module")
def recognizer():
    from deid.evaluate.models import ModelMissing
    from deid.evaluate.recognizers import MobileFaceNetTorch

    try:
        return MobileFaceNetTorch()
    except ModelMissing as exc:
        pytest.skip(str(exc))


@pytest.fixture(scope="module")
def fitted(tmp_path_factory, stats_dir, gen, recognizer):
    """A small encoder fitted on synthetic pairs only; its card's held-out numbers are on
    lfw-public-ref faces the fit never saw."""
    from deid.cli.fit_encoder import FitOptions, fit_encoder

    if not PUBLIC.is_dir():
        pytest.skip("lfw-public-ref not available")
    d = tmp_path_factory.mktemp("enc")
    opts = FitOptions(out=str(d / "enc.pt"), latent={"backend": "mobilestylegan", "runtime": "openvino",
                                                     "stats_samples": 500, "cache_dir": stats_dir},
                      pairs=16, steps=80, batch=16, input_size=64, width=8, components=16, public=str(PUBLIC),
                      holdout=6, cache_dir=str(d / "cache"), progress=False, command="test_encoder fitted",
                      threads=1)  # one thread: torch's per-core threads spin on shared CI cores
    card = fit_encoder(opts)
    return opts, card


def test_the_encoder_beats_the_average_latent_on_held_out_public_faces(fitted, gen):
    """Held-out faces (the last 6 of lfw-public-ref by name; the fit used synthetic pairs only):
    the reconstruction is nearer the face than the average latent's, on average and for most
    faces (paired)."""
    _, card = fitted
    ho = card["heldout"]
    assert ho["n"] == 6 and card["data"]["public"]["heldout_faces"] == 6
    assert ho["rmse_encoder"] < ho["rmse_mean_w"], ho
    # the synthetic validation pairs: the encoder explains part of w's variance it never saw
    assert card["data"]["synthetic"]["validation_unexplained_w_variance"] < 1.0


def test_the_file_round_trips_and_refuses_another_generator(fitted, gen, tmp_path):
    from deid.latent.encoder import Encoder, load_encoder, to_bytes

    opts, card = fitted
    enc = load_encoder(opts.out)
    data = Path(opts.out).read_bytes()
    import hashlib

    assert enc.fingerprint == hashlib.sha256(data).hexdigest() == card["fingerprint"]
    assert enc.generator_fingerprint == gen.weights_fingerprint
    enc.check_generator(gen)
    crops = np.stack([gen.align(*_photo_face(p))[0] for p in lfw_images()[:2]])
    ws = enc.encode(crops)
    assert ws.dtype == np.float32 and ws.shape == (2, gen.num_ws, gen.w_dim)
    assert np.array_equal(ws[:, 0], ws[:, -1])          # plain w on every layer
    assert not np.allclose(ws[0], ws[1])                 # two faces, two codes
    # any fsspec URI, the same numbers; the crop size does not matter (resized inside)
    import fsspec

    with fsspec.open("memory://enc/e.pt", "wb") as f:
        f.write(data)
    again = load_encoder("memory://enc/e.pt")
    assert np.array_equal(again.encode(crops), ws)
    small = np.stack([np.asarray(__import__("cv2").resize(c, (128, 128), interpolation=3)) for c in crops])
    assert np.abs(again.encode(small) - ws).max() < 0.5 * np.abs(ws - gen.mean.astype(np.float32)).max()
    # a file fitted for other weights is refused, naming the file
    other = dict(enc.card)
    other["generator"] = dict(other["generator"], weights_fingerprint="0" * 64)
    bad = tmp_path / "other-generator.pt"
    bad.write_bytes(to_bytes(enc.net, other))
    with pytest.raises(ValueError, match=r"other-generator\.pt.*fitted for the generator"):
        load_encoder(str(bad)).check_generator(gen)
    # not an encoder file: a clear error naming it
    junk = tmp_path / "junk.pt"
    junk.write_bytes(b"not a torch file")
    with pytest.raises(ValueError, match=r"junk\.pt: not a deid encoder file.*make encoder"):
        load_encoder(str(junk))
    with pytest.raises(FileNotFoundError, match=r"missing\.pt: encoder file not found.*make encoder"):
        load_encoder(str(tmp_path / "missing.pt"))
    assert isinstance(enc, Encoder) and card["licence"].startswith("the encoder is fitted through the generator")
    assert card["command"] == "test_encoder fitted" and card["beta"] is None


def _photo_face(path):
    from PIL import Image

    from deid.faces.registry import make_detector

    rgb = np.asarray(Image.open(path).convert("RGB"))
    faces = make_detector({"backend": "centerface"}).detect(rgb)
    return rgb, max(faces, key=lambda f: f.width * f.height)


def test_a_higher_beta_gives_a_higher_identity_similarity(fitted, gen, recognizer):
    """One step of the private-encoder loss from the same encoder at beta 0, 0.5 and 1, on one
    public face: the identity cosine of its reconstruction rises with beta. The loss is
    |beta - cos|, so when the encoder's cosine is below 0.5 the steps for 0.5 and 1 are the
    same one (equal up to float rounding): the trend is monotone, strictly from 0 to 0.5."""
    import copy

    import torch

    from deid.cli.fit_encoder import (FitOptions, arc_crops, arc_theta, finetune_loss, public_crops,
                                      public_files, split_public, _torch_generator)
    from deid.latent.base import face_mask
    from deid.latent.encoder import Encoder, load_encoder, to_bytes
    from deid.faces.registry import make_detector

    # The loss is |beta - cos|: when the start cosine is negative, the steps for 0, 0.5 and 1 are
    # all the same one (measured on the first face of the bundled fixture: equal to 1e-16), so
    # this needs a face whose start cosine is positive: the first of the full public set.
    if not SHARED_PUBLIC.is_dir():
        pytest.skip(f"{SHARED_PUBLIC} not available")
    opts, card = fitted
    base = load_encoder(opts.out)
    fit_files, held = split_public(public_files(str(SHARED_PUBLIC)), 1, 6)
    crops, used, _ = public_crops(fit_files, gen, make_detector({"backend": "centerface"}), progress=False)
    assert len(crops) == 1 and not set(used) & set(held)
    tgen = _torch_generator(opts.latent, "cpu")
    s = crops.shape[1]
    mask = torch.from_numpy(face_mask(s, "ffhq", gen.align_scale, 0.03))[None, None]
    theta = arc_theta(s, gen.align_scale)
    e0 = recognizer.embed_crops(arc_crops(crops, gen.align_scale))
    cos = {}
    for beta in (0.0, 0.5, 1.0):
        net = copy.deepcopy(base.net)
        for p in net.parameters():
            p.requires_grad_(True)
        o = FitOptions(out="", finetune_lr=3e-3, w_reg=0.0)
        opt = torch.optim.Adam(net.parameters(), lr=o.finetune_lr)
        loss, _, _, _ = finetune_loss(net, tgen, recognizer, crops, beta, o, mask, theta)
        opt.zero_grad()
        loss.backward()
        opt.step()
        enc = Encoder(to_bytes(net, base.card))
        rec = gen.decode_ws(enc.encode(crops))
        cos[beta] = float(np.sum(e0 * recognizer.embed_crops(arc_crops(rec, gen.align_scale))))
    assert cos[0.0] < cos[0.5] <= cos[1.0] + 1e-3, cos


def test_private_encoder_on_real_photos_through_a_run(fitted, stats_dir, tmp_path):
    """A real run: one audit row per input (a broken file included), the encoder's
    fingerprint in the audit, not DP, the face changed and the photo's far corners not."""
    import pandas as pd
    from PIL import Image

    from deid.config import manifest_from_dict
    from deid.pipeline import run_job

    opts, card = fitted
    inp = tmp_path / "in"
    inp.mkdir()
    photo = lfw_images()[0]
    shutil.copy(photo, inp / "face.jpg")
    (inp / "broken.jpg").write_bytes(b"not an image")
    m = manifest_from_dict(base_manifest(
        inp, tmp_path, detect={"backend": "centerface"},
        anonymize={"method": "private-encoder", "params": {"encoder": opts.out}},
        latent={"backend": "mobilestylegan", "runtime": "openvino", "stats_samples": 500, "cache_dir": stats_dir},
        licences={"accept_non_commercial": ["mobilestylegan", "private-encoder"]}, checks={"residual": "off"}))
    res = run_job(m, engine="local", progress=False)
    df = pd.read_parquet(res.records_uri).set_index("input_uri")
    assert len(df) == 2
    ok, bad = df.loc[str(inp / "face.jpg")], df.loc[str(inp / "broken.jpg")]
    assert ok.status == "released" and ok.method == "private-encoder" and ok.dp_scope == "none"
    assert json.loads(ok.params_json)["encoder"] == opts.out
    fps = {f["name"]: f["sha256"] for f in ok.model_fingerprints}
    assert fps["private-encoder:encoder"] == card["fingerprint"]
    assert bad.status == "failed"
    src = np.asarray(Image.open(photo).convert("RGB")).astype(int)
    out_path = Path(ok.output_uri)
    out = np.asarray(Image.open(out_path).convert("RGB")).astype(int)
    x0, y0, x1, y1 = ok.faces[0]["box"]
    assert np.abs(out[y0:y1, x0:x1] - src[y0:y1, x0:x1]).mean() > 5   # the face is redrawn
    assert np.abs(out[:20, :20] - src[:20, :20]).mean() < 3             # a far corner is not (JPEG only)


def test_beta_must_match_the_encoder_card(fitted, gen):
    from deid.anonymize.private_encoder import PrivateEncoder

    opts, _ = fitted
    with pytest.raises(ValueError, match=r"beta 0\.5.*enc\.pt.*without the identity term"):
        PrivateEncoder({"encoder": opts.out, "beta": 0.5}, latent=gen)


def test_evaluate_labels_the_fine_tuning_recognizer_not_independent(fitted, stats_dir, recognizer, tmp_path):
    """An encoder whose card names the recognizer of its identity term: a run's audit
    fingerprints name that recognizer, and deid evaluate's role for it says not independent
    (another recognizer, and runs of other methods, keep theirs)."""
    from deid.config import manifest_from_dict
    from deid.evaluate.core import _role
    from deid.evaluate.recognizers import DlibResNet
    from deid.latent.encoder import load_encoder, to_bytes
    from deid.pipeline import RunError
    from deid.pipeline.fingerprints import model_fingerprints

    opts, _ = fitted
    enc = load_encoder(opts.out)
    card = dict(enc.card, beta=0.0, identity_recognizer={"name": recognizer.name, "sha256": recognizer.fingerprint})
    path = tmp_path / "tuned.pt"
    path.write_bytes(to_bytes(enc.net, card))
    inp = tmp_path / "in"
    inp.mkdir()
    m = manifest_from_dict(base_manifest(
        inp, tmp_path, detect={"backend": "centerface"},
        anonymize={"method": "private-encoder", "params": {"encoder": str(path), "beta": 0.0}},
        latent={"backend": "mobilestylegan", "runtime": "openvino", "stats_samples": 500, "cache_dir": stats_dir},
        licences={"accept_non_commercial": ["mobilestylegan", "private-encoder"]}))
    fps = model_fingerprints(m)
    rows = [{"model_fingerprints": fps}]
    assert {"name": "private-encoder:identity-recognizer:mobilefacenet", "sha256": recognizer.fingerprint} in fps
    assert _role(recognizer, rows).startswith("not independent") and "dlib-resnet128" in _role(recognizer, rows)
    assert _role(DlibResNet(), rows) == "deid's own checks"
    assert _role(recognizer, [{"model_fingerprints": [f for f in fps if "identity" not in f["name"]]}]) \
        == "independent attacker"
    # beta must match the card's: a file fitted at 0 is refused for 0.5, naming the file
    m2 = manifest_from_dict(base_manifest(
        inp, tmp_path, detect={"backend": "centerface"},
        anonymize={"method": "private-encoder", "params": {"encoder": str(path), "beta": 0.5}},
        latent={"backend": "mobilestylegan", "runtime": "openvino", "stats_samples": 500, "cache_dir": stats_dir},
        licences={"accept_non_commercial": ["mobilestylegan", "private-encoder"]}))
    with pytest.raises(RunError, match=r"beta 0\.5: .*tuned\.pt was fitted with beta 0"):
        model_fingerprints(m2)
    # a missing encoder stops the run before any record, saying how to get one
    m3 = manifest_from_dict(base_manifest(
        inp, tmp_path, detect={"backend": "centerface"},
        anonymize={"method": "private-encoder", "params": {"encoder": str(tmp_path / "none.pt")}},
        latent={"backend": "mobilestylegan", "runtime": "openvino", "stats_samples": 500, "cache_dir": stats_dir},
        licences={"accept_non_commercial": ["mobilestylegan", "private-encoder"]}))
    with pytest.raises(RunError, match=r"none\.pt: encoder file not found; run `make encoder`"):
        model_fingerprints(m3)


def test_generator_dp_image_and_deepblur_start_from_the_encoder(fitted, stats_dir):
    """The generator methods take the encoder's w as the start (``encoder``): at epsilon 1000
    and no search steps the release follows the encoded face, not the public mean."""
    from deid.anonymize import make_anonymizer

    opts, _ = fitted
    latent = {"backend": "mobilestylegan", "runtime": "openvino", "stats_samples": 500, "cache_dir": stats_dir}
    rgb, face = _photo_face(lfw_images()[0])
    x0, y0, x1, y1 = (int(v) for v in face.box)
    outs = {}
    for enc in (opts.out, None):
        a = make_anonymizer("dp-image", {"epsilon": 1000.0, "encoder": enc, "search_steps": 0}, latent)
        out, facts = a(rgb, [face], np.random.default_rng())
        assert facts[0].dp is not None and facts[0].dp.epsilon == 1000.0
        outs[enc] = out[y0:y1, x0:x1].astype(float)
    # the encoder's start is not the mean: the two releases differ inside the face
    assert np.abs(outs[opts.out] - outs[None]).mean() > 3.0
    b = make_anonymizer("deepblur", {"encoder": opts.out, "search_steps": 0}, latent)
    out, facts = b(rgb, [face], np.random.default_rng())
    assert facts[0].scope == "none" and np.abs(out[y0:y1, x0:x1].astype(float) - rgb[y0:y1, x0:x1]).mean() > 3.0

"""latent.backend stylegan2: a user's checkpoint as a generator latent model, through the same
loaders, on tiny models the tests build and save in the original format."""

from __future__ import annotations

from pathlib import Path

import numpy as np
import pytest

from conftest import base_manifest
from deid.config import ManifestError, manifest_from_dict
from deid.latent.registry import load_latent_model
from test_checkpoints import _ros, _save_ros


def test_a_rosinality_checkpoint_is_a_generator_latent_model(tmp_path):
    g = _ros(1)
    path = _save_ros(g, tmp_path / "tiny.pt")
    model = load_latent_model({"backend": "stylegan2", "checkpoint": str(path), "weights_licence": "MIT (test)",
                               "stats_samples": 200, "cache_dir": str(tmp_path / "stats")})
    assert model.backend == "stylegan2" and model.num_ws == g.num_ws and model.resolution == g.resolution
    imgs = model.generate(3, np.random.default_rng(0), psi=0.7)
    assert imgs.shape == (3, g.resolution, g.resolution, 3) and imgs.dtype == np.uint8
    assert len({i.tobytes() for i in imgs}) == 3  # three random latents, three images
    assert model.card["weights_licence"] == "MIT (test)" and model.card["weights_non_commercial"] is False
    # the same file gives the same fingerprint; another file another one
    again = load_latent_model({"backend": "stylegan2", "checkpoint": str(path), "weights_licence": "MIT (test)",
                               "stats_samples": 200, "cache_dir": str(tmp_path / "stats")})
    other = load_latent_model({"backend": "stylegan2", "checkpoint": str(_save_ros(_ros(2), tmp_path / "b.pt")),
                               "weights_licence": "MIT (test)", "stats_samples": 200,
                               "cache_dir": str(tmp_path / "stats")})
    assert again.fingerprint == model.fingerprint != other.fingerprint


def _swap_manifest(tmp_path: Path, ckpt: Path, **latent) -> dict:
    return base_manifest(tmp_path / "in", tmp_path, anonymize={"method": "synthetic-swap"},
                         latent={"backend": "stylegan2", "checkpoint": str(ckpt), **latent})


def test_the_weights_licence_must_be_stated_and_a_non_commercial_one_acknowledged(tmp_path):
    ckpt = _save_ros(_ros(1), tmp_path / "tiny.pt")
    with pytest.raises(ManifestError) as exc:
        manifest_from_dict(_swap_manifest(tmp_path, ckpt))
    assert "latent.weights_licence" in str(exc.value)
    with pytest.raises(ManifestError) as exc:
        manifest_from_dict(_swap_manifest(tmp_path, ckpt, weights_licence="NVIDIA Source Code License-NC"))
    assert "licences.accept_non_commercial" in str(exc.value) and "stylegan2" in str(exc.value)
    data = _swap_manifest(tmp_path, ckpt, weights_licence="NVIDIA Source Code License-NC")
    data["licences"] = {"accept_non_commercial": ["stylegan2"]}
    m = manifest_from_dict(data)
    assert [(w, p.name) for w, p, _ in m.non_commercial_used()] == [("latent.backend", "stylegan2")]
    assert manifest_from_dict(_swap_manifest(tmp_path, ckpt, weights_licence="CC-BY-4.0, my own model")) \
        .non_commercial_used() == []


def test_a_file_that_is_no_checkpoint_is_a_clear_error(tmp_path):
    bad = tmp_path / "notes.pt"
    bad.write_bytes(b"not a checkpoint at all")
    with pytest.raises(ValueError, match="notes.pt"):
        load_latent_model({"backend": "stylegan2", "checkpoint": str(bad), "weights_licence": "MIT",
                           "stats_samples": 200, "cache_dir": str(tmp_path / "stats")})

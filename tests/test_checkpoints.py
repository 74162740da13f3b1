"""User-brought StyleGAN2-family checkpoints: rosinality .pt, NVIDIA stylegan2-ada .pkl, pSp / e4e.

Every test model is tiny and random-initialised, built here and saved in the original's file
layout: rosinality's ``{'g_ema': state_dict, 'latent_avg': ...}`` (the module's state dict is
that layout), NVIDIA's network pickle (objects pickled through ``torch_utils.persistence``'s
reconstruct hook with their state and embedded module source, as ``training_loop`` writes them;
the module names are registered in ``sys.modules`` by a fixture, for this test only), and pSp /
e4e's ``{'state_dict': {'encoder.*', 'decoder.*'}, 'opts', 'latent_avg'}`` with a 4-block
IR-SE backbone (real files: IR-SE50, 24 blocks; the layout is the same).

Cross-checks against the original implementations (not in this suite: their code is not part
of deid) gave bit-identical outputs: rosinality's model.py (CPU ops) at 8 and 32 px, NVIDIA's
networks.py (``force_fp32``, const noise) for skip / orig / resnet, conditional and
``conv_clamp`` models and for a network pickle their own code wrote (G, D, G_ema,
augment_pipe), and pSp's / e4e's IR-SE50 encoders with a 64 px decoder.
"""

from __future__ import annotations

import argparse
import hashlib
import os
import pickle
import sys
import types
from collections import OrderedDict
from pathlib import Path

import fsspec
import numpy as np
import pytest
import torch

from deid.latent.checkpoints import (
    CheckpointError,
    load_generator,
    load_psp_encoder,
    load_rosinality_pt,
    load_stylegan2_ada_pkl,
    read_network_pickle,
    sniff,
)
from deid.latent.stylegan2 import AdaGenerator, PSPEncoder, RosinalityGenerator

TINY_ROS = {"size": 16, "style_dim": 16, "n_mlp": 2, "channels": {4: 16, 8: 12, 16: 8}}
TINY_ADA_CH = {4: 16, 8: 12, 16: 8, 32: 8}


def _jitter(module: torch.nn.Module, seed: int) -> torch.nn.Module:
    """Non-zero noise strengths and biases (zero at init), so noise and biases count."""
    g = torch.Generator().manual_seed(seed)
    with torch.no_grad():
        for n, p in module.named_parameters():
            if "noise" in n or n.endswith("bias"):
                p.copy_(torch.randn(p.shape, generator=g) * 0.3)
        for n, b in module.named_buffers():
            if n.endswith(("w_avg", "running_mean")):
                b.copy_(torch.randn(b.shape, generator=g) * 0.1)
            if n.endswith("running_var"):
                b.copy_(torch.rand(b.shape, generator=g) + 0.5)
    return module.eval()


def _ros(seed: int = 0) -> RosinalityGenerator:
    torch.manual_seed(seed)
    return _jitter(RosinalityGenerator(**TINY_ROS), seed)


def _save_ros(gen: RosinalityGenerator, path: Path, **extra) -> Path:
    torch.save({"g_ema": gen.state_dict(), **extra}, path)
    return path


# --------------------------------------------------------------------------------------------- rosinality


def test_rosinality_state_dict_is_the_original_layout():
    sd = _ros().state_dict()
    # names and shapes of rosinality's Generator (model.py), size 16, n_mlp 2
    assert sd["style.1.weight"].shape == (16, 16) and "style.2.bias" in sd and "style.3.weight" not in sd
    assert sd["input.input"].shape == (1, 16, 4, 4)
    assert sd["conv1.conv.weight"].shape == (1, 16, 16, 3, 3)
    assert sd["conv1.conv.modulation.weight"].shape == (16, 16) and sd["conv1.noise.weight"].shape == (1,)
    assert sd["convs.0.conv.weight"].shape == (1, 12, 16, 3, 3)
    assert sd["convs.0.conv.blur.kernel"].shape == (4, 4) and "convs.1.conv.blur.kernel" not in sd
    assert sd["to_rgb1.bias"].shape == (1, 3, 1, 1) and sd["to_rgbs.1.upsample.kernel"].shape == (4, 4)
    assert sd["convs.3.activate.bias"].shape == (8,)
    assert [k for k in sd if k.startswith("noises.")] == [f"noises.noise_{i}" for i in range(5)]
    assert sd["noises.noise_4"].shape == (1, 1, 16, 16)
    assert "w_avg" not in sd  # latent_avg lives beside g_ema, not in it
    # the FIR kernels are the original's: [1,3,3,1] outer product, normalised, times 4
    k = torch.tensor([1.0, 3, 3, 1])
    assert torch.allclose(sd["convs.0.conv.blur.kernel"], (k[:, None] * k[None]) / 64 * 4)


def test_rosinality_round_trip_exact(tmp_path):
    g = _ros(1)
    avg = g.mean_w(256, seed=3)
    path = _save_ros(g, tmp_path / "550000.pt", latent_avg=avg, g=g.state_dict(),
                     args=argparse.Namespace(size=16, latent=16, n_mlp=2, channel_multiplier=2, iter=10))
    loaded, meta = load_rosinality_pt(path)
    assert (loaded.z_dim, loaded.w_dim, loaded.num_ws, loaded.resolution) == (16, 16, 6, 16)
    assert not loaded.training and torch.equal(loaded.w_avg, avg)
    z = torch.randn(3, 16, generator=torch.Generator().manual_seed(5))
    with torch.no_grad():
        w = loaded.mapping(z)
        assert torch.equal(w, g.style(z)) and w.shape == (3, 16)
        ws = torch.randn(3, 6, 16, generator=torch.Generator().manual_seed(6))
        g.w_avg = avg
        assert torch.equal(loaded.synthesis(ws), g.synthesis(ws))
        assert torch.equal(loaded.synthesis(ws, clamp=False), g.synthesis(ws, clamp=False))
        assert torch.equal(loaded.mapping(z, truncation_psi=0.5), avg + 0.5 * (w - avg))
        img = loaded(z)
    assert img.shape == (3, 3, 16, 16) and img.min() >= -1 and img.max() <= 1
    data = path.read_bytes()
    assert meta["format"] == "rosinality-pt" and meta["source"] == str(path)
    assert meta["sha256"] == hashlib.sha256(data).hexdigest() and meta["bytes"] == len(data)
    assert meta["n_mlp"] == 2 and meta["channels"] == {"4": 16, "8": 12, "16": 8} and meta["has_w_avg"]
    assert meta["args"]["size"] == 16 and meta["licence"] is None
    assert set(meta["checkpoint_keys"]) == {"g_ema", "g", "latent_avg", "args"}


def test_rosinality_bare_state_dict_licence_and_no_latent_avg(tmp_path):
    g = _ros(2)
    torch.save(g.state_dict(), tmp_path / "bare.pt")
    loaded, meta = load_rosinality_pt(tmp_path / "bare.pt")
    assert loaded.w_avg is None and not meta["has_w_avg"]
    z = torch.randn(2, 16)
    with pytest.raises(ValueError, match="w_avg"):
        loaded.mapping(z, truncation_psi=0.7)
    loaded.w_avg = loaded.mean_w(100, seed=0)
    assert torch.equal(loaded.w_avg, loaded.mean_w(100, seed=0))  # seeded: reproducible
    assert loaded.mapping(z, truncation_psi=0.7).shape == (2, 16)
    _save_ros(g, tmp_path / "lic.pt", license="CC-BY-4.0, trained on my own photos")
    assert load_rosinality_pt(tmp_path / "lic.pt")[1]["licence"] == "CC-BY-4.0, trained on my own photos"


def test_noise_modes(tmp_path):
    g, _ = load_rosinality_pt(_save_ros(_ros(3), tmp_path / "g.pt"))
    ws = torch.randn(2, g.num_ws, g.w_dim)
    with torch.no_grad():
        const = g.synthesis(ws, clamp=False)
        assert torch.equal(const, g.synthesis(ws, noise_mode="const", clamp=False))
        r1 = g.synthesis(ws, noise_mode="random", generator=torch.Generator().manual_seed(1), clamp=False)
        r2 = g.synthesis(ws, noise_mode="random", generator=torch.Generator().manual_seed(1), clamp=False)
        none = g.synthesis(ws, noise_mode="none", clamp=False)
    assert torch.equal(r1, r2) and not torch.equal(r1, const) and not torch.equal(none, const)
    with pytest.raises(ValueError, match="noise_mode"):
        g.synthesis(ws, noise_mode="fixed")
    with pytest.raises(ValueError, match=r"\[N, 6, 16\]"):
        g.synthesis(ws[:, :5])


# --------------------------------------------------------------------------------------------- stylegan2-ada

MODULE_SRC = ("# stands for the pickled source of training/networks.py; deid must never execute it\n"
              "raise SystemExit('module_src was executed')\n")


@pytest.fixture
def nvidia(monkeypatch):
    """NVIDIA's module names (torch_utils.persistence, dnnlib.util), for this test only, so that
    pickle writes references to them exactly as in network pickles."""
    tu, pers = types.ModuleType("torch_utils"), types.ModuleType("torch_utils.persistence")
    dn, dnu = types.ModuleType("dnnlib"), types.ModuleType("dnnlib.util")

    def _reconstruct_persistent_obj(meta):  # what NVIDIA's loader would call; deid maps the name away
        raise AssertionError("the original reconstruct hook must never run")

    _reconstruct_persistent_obj.__module__ = "torch_utils.persistence"
    _reconstruct_persistent_obj.__qualname__ = "_reconstruct_persistent_obj"
    pers._reconstruct_persistent_obj = _reconstruct_persistent_obj
    tu.persistence = pers

    class EasyDict(dict):
        pass

    EasyDict.__module__, EasyDict.__qualname__ = "dnnlib.util", "EasyDict"
    dnu.EasyDict, dn.util, dn.EasyDict = EasyDict, dnu, EasyDict
    for name, mod in (("torch_utils", tu), ("torch_utils.persistence", pers), ("dnnlib", dn), ("dnnlib.util", dnu)):
        monkeypatch.setitem(sys.modules, name, mod)
    return types.SimpleNamespace(reconstruct=_reconstruct_persistent_obj, EasyDict=EasyDict)


class _Persistent:
    """Pickles as NVIDIA's persistent_class instances do: reconstruct hook + meta."""

    def __init__(self, meta, hook):
        self.meta, self.hook = meta, hook

    def __reduce__(self):
        return self.hook, (self.meta,)


def _persistent(module: torch.nn.Module, hook, class_name: str | None = None, init_kwargs=None):
    state = dict(module.__dict__)
    state["_modules"] = OrderedDict((k, None if v is None else _persistent(v, hook))
                                    for k, v in module._modules.items())
    for k, v in list(state.items()):
        if type(v) is float:  # NVIDIA's gains are numpy floats (lr_multiplier / np.sqrt(...))
            state[k] = np.float64(v)
    state["_init_args"], state["_init_kwargs"] = (), dict(init_kwargs or {})
    name = class_name or {"AdaGenerator": "Generator"}.get(type(module).__name__, type(module).__name__)
    meta = {"type": "class", "version": 6, "module_src": MODULE_SRC, "class_name": name, "state": state}
    return _Persistent(meta, hook)


def _ada(seed=0, res=32, **synthesis_kwargs) -> AdaGenerator:
    torch.manual_seed(seed)
    sk = {"channels": {r: c for r, c in TINY_ADA_CH.items() if r <= res}, **synthesis_kwargs}
    return _jitter(AdaGenerator(24, 0, 16, res, 3, mapping_kwargs={"num_layers": 2}, synthesis_kwargs=sk), seed)


def _write_pkl(path: Path, nvidia, g_ema: torch.nn.Module, **extra) -> Path:
    kw = {"z_dim": g_ema.z_dim, "c_dim": g_ema.c_dim, "w_dim": g_ema.w_dim, "img_resolution": g_ema.resolution,
          "img_channels": 3, "mapping_kwargs": nvidia.EasyDict(num_layers=2),
          "synthesis_kwargs": nvidia.EasyDict(channel_base=512, channel_max=16, num_fp16_res=0)}
    snap = {"G": _persistent(g_ema, nvidia.reconstruct, init_kwargs=kw),
            "D": _persistent(torch.nn.Linear(4, 1), nvidia.reconstruct, "Discriminator"),
            "G_ema": _persistent(g_ema, nvidia.reconstruct, init_kwargs=kw),
            "augment_pipe": _persistent(torch.nn.Module(), nvidia.reconstruct, "AugmentPipe"),
            "training_set_kwargs": nvidia.EasyDict(path="/data/faces.zip", resolution=g_ema.resolution,
                                                   use_labels=False, max_size=10, xflip=False),
            **extra}
    with open(path, "wb") as f:
        pickle.dump(snap, f, protocol=4)
    return path


@pytest.mark.parametrize("arch,conv_clamp", [("skip", None), ("resnet", 0.5)])
def test_ada_pickle_round_trip_exact(tmp_path, nvidia, arch, conv_clamp):
    g = _ada(1, architecture=arch, conv_clamp=conv_clamp)
    path = _write_pkl(tmp_path / "network-snapshot-000100.pkl", nvidia, g)
    data = path.read_bytes()
    assert sniff(data) == "pickle" and b"torch_utils.persistence" in data and b"module_src was executed" in data
    loaded, meta = load_stylegan2_ada_pkl(path)
    assert isinstance(loaded, AdaGenerator) and not loaded.training
    assert (loaded.z_dim, loaded.w_dim, loaded.num_ws, loaded.resolution) == (24, 16, 8, 32)
    assert sorted(loaded.state_dict()) == sorted(g.state_dict())
    assert torch.equal(loaded.w_avg, g.mapping.w_avg)
    z = torch.randn(3, 24, generator=torch.Generator().manual_seed(2))
    ws = torch.randn(3, 8, 16, generator=torch.Generator().manual_seed(3))
    with torch.no_grad():
        assert torch.equal(loaded.mapping(z), g.mapping(z))
        assert torch.equal(loaded.mapping(z, truncation_psi=0.6), g.mapping(z, truncation_psi=0.6))
        assert torch.equal(loaded.synthesis(ws, clamp=False), g.synthesis(ws, clamp=False))
        img = loaded.synthesis(ws)
    assert img.shape == (3, 3, 32, 32) and img.min() >= -1 and img.max() <= 1
    assert meta["format"] == "stylegan2-ada-pkl" and meta["sha256"] == hashlib.sha256(data).hexdigest()
    assert meta["architecture"] == arch and meta["conv_clamp"] == conv_clamp and meta["network"] == "G_ema"
    assert meta["channels"] == {"4": 16, "8": 12, "16": 8, "32": 8} and meta["has_w_avg"]
    assert meta["module_src_sha256"] == hashlib.sha256(MODULE_SRC.encode()).hexdigest()
    assert meta["training_set"] == {"resolution": 32, "use_labels": False, "max_size": 10, "xflip": False}
    assert meta["pickle_keys"] == ["D", "G", "G_ema", "augment_pipe", "training_set_kwargs"]


def test_ada_state_dict_is_the_original_layout():
    sd = _ada().state_dict()
    assert sd["mapping.fc0.weight"].shape == (16, 24) and sd["mapping.w_avg"].shape == (16,)
    assert sd["synthesis.b4.const"].shape == (16, 4, 4)
    assert sd["synthesis.b8.conv0.affine.weight"].shape == (16, 16) and sd["synthesis.b8.conv0.weight"].shape == (12, 16, 3, 3)
    assert sd["synthesis.b8.conv0.noise_const"].shape == (8, 8) and sd["synthesis.b8.conv0.noise_strength"].shape == ()
    assert sd["synthesis.b32.torgb.weight"].shape == (3, 8, 1, 1) and sd["synthesis.b16.resample_filter"].shape == (4, 4)
    assert "synthesis.b4.conv0.weight" not in sd and "mapping.fc2.weight" not in sd


def test_ada_conditional_and_bare_generator_pickle(tmp_path, nvidia):
    torch.manual_seed(4)
    g = _jitter(AdaGenerator(8, 5, 16, 16, 3, mapping_kwargs={"num_layers": 3},
                             synthesis_kwargs={"channels": TINY_ADA_CH, "architecture": "orig"}), 4)
    with open(tmp_path / "g.pkl", "wb") as f:
        pickle.dump(_persistent(g, nvidia.reconstruct, init_kwargs={"z_dim": 8}), f)
    loaded, meta = load_stylegan2_ada_pkl(tmp_path / "g.pkl")
    assert meta["c_dim"] == 5 and meta["network"] == "Generator" and meta["architecture"] == "orig"
    z, c = torch.randn(2, 8), torch.randn(2, 5)
    with torch.no_grad():
        assert torch.equal(loaded(z, c=c, clamp=False), g(z, c=c, clamp=False))
    with pytest.raises(ValueError, match="conditional"):
        loaded.mapping(z)


# --------------------------------------------------------------------------------------------- hostile files


class _Payload:
    """Pickles as ``os.system(cmd)``: what a hostile network pickle does."""

    def __init__(self, cmd):
        self.cmd = cmd

    def __reduce__(self):
        return os.system, (self.cmd,)


def _touch(marker: Path) -> str:
    return f"touch {marker}"


def test_malicious_pickle_is_refused_and_does_not_run(tmp_path, nvidia):
    marker = tmp_path / "pwned"
    payload = pickle.dumps({"G_ema": _Payload(_touch(marker))}, protocol=4)
    pickle.loads(payload)  # positive control: the payload is live under the default unpickler
    assert marker.exists()
    marker.unlink()
    path = tmp_path / "evil.pkl"
    path.write_bytes(payload)
    with pytest.raises(CheckpointError) as exc:
        load_stylegan2_ada_pkl(path)
    assert str(path) in str(exc.value) and "refused" in str(exc.value) and "system" in str(exc.value)
    assert not marker.exists()


def test_malicious_object_inside_network_state_is_refused(tmp_path, nvidia):
    marker = tmp_path / "pwned"
    g = _ada(5, res=8)
    g.mapping.fc0.evil = _Payload(_touch(marker))  # a plain attribute of one layer: in its pickled state
    path = _write_pkl(tmp_path / "evil.pkl", nvidia, g)
    with pytest.raises(CheckpointError, match="refused.*system"):
        load_stylegan2_ada_pkl(path)
    assert not marker.exists()


def test_malicious_storage_bytes_are_refused(tmp_path):
    marker = tmp_path / "pwned"

    class _EvilStorage:  # a storage whose bytes are a hostile pickle instead of tensor data
        def __reduce__(self):
            return torch.storage._load_from_bytes, (pickle.dumps(_Payload(_touch(marker)), protocol=2),)

    path = tmp_path / "evil.pkl"
    path.write_bytes(pickle.dumps({"G_ema": _EvilStorage()}, protocol=4))
    with pytest.raises(CheckpointError, match="refused"):
        load_stylegan2_ada_pkl(path)
    assert not marker.exists()


def test_malicious_pt_is_refused(tmp_path):
    marker = tmp_path / "pwned"
    path = tmp_path / "evil.pt"
    torch.save({"g_ema": _Payload(_touch(marker))}, path)
    with pytest.raises(CheckpointError) as exc:
        load_rosinality_pt(path)
    assert str(path) in str(exc.value) and "refused" in str(exc.value) and "system" in str(exc.value)
    assert not marker.exists()


def test_module_source_is_never_executed(tmp_path, nvidia):
    # MODULE_SRC raises SystemExit when executed; reading the records only hashes it
    obj = read_network_pickle(_write_pkl(tmp_path / "n.pkl", nvidia, _ada(6, res=8)).read_bytes(), "n.pkl")
    assert obj["G_ema"].class_name == "Generator" and obj["D"].class_name == "Discriminator"
    assert obj["G_ema"].src_sha256 == hashlib.sha256(MODULE_SRC.encode()).hexdigest()
    assert isinstance(obj["training_set_kwargs"], dict) and obj["training_set_kwargs"]["resolution"] == 8


# --------------------------------------------------------------------------------------------- bad files


def test_truncated_and_corrupt_files(tmp_path, nvidia):
    pt = _save_ros(_ros(), tmp_path / "g.pt")
    cut = tmp_path / "cut.pt"
    cut.write_bytes(pt.read_bytes()[: pt.stat().st_size // 2])
    with pytest.raises(CheckpointError, match=rf"{cut}: truncated or corrupt torch checkpoint"):
        load_rosinality_pt(cut)
    pkl = _write_pkl(tmp_path / "n.pkl", nvidia, _ada(res=8))
    cutp = tmp_path / "cut.pkl"
    cutp.write_bytes(pkl.read_bytes()[: pkl.stat().st_size // 2])
    with pytest.raises(CheckpointError, match=rf"{cutp}: truncated or corrupt pickle"):
        load_stylegan2_ada_pkl(cutp)
    junk = tmp_path / "junk.pkl"
    junk.write_bytes(b"\x80\x04" + os.urandom(300))
    with pytest.raises(CheckpointError, match=rf"{junk}: (truncated or corrupt|refused)"):
        load_stylegan2_ada_pkl(junk)
    empty = tmp_path / "empty.pt"
    empty.write_bytes(b"")
    with pytest.raises(CheckpointError, match=rf"{empty}: the file is empty"):
        load_rosinality_pt(empty)
    with pytest.raises(FileNotFoundError, match="nope.pt: no such checkpoint file"):
        load_rosinality_pt(tmp_path / "nope.pt")


def test_wrong_formats(tmp_path, nvidia):
    pt = _save_ros(_ros(), tmp_path / "g.pt")
    pkl = _write_pkl(tmp_path / "n.pkl", nvidia, _ada(res=8))
    with pytest.raises(CheckpointError, match=rf"{pkl}: not a torch checkpoint: .*load_stylegan2_ada_pkl"):
        load_rosinality_pt(pkl)
    with pytest.raises(CheckpointError, match=rf"{pt}: not a network pickle: .*load_rosinality_pt"):
        load_stylegan2_ada_pkl(pt)
    png = tmp_path / "face.png"
    png.write_bytes(b"\x89PNG\r\n\x1a\n" + bytes(64))
    for loader in (load_rosinality_pt, load_stylegan2_ada_pkl, load_psp_encoder, load_generator):
        with pytest.raises(CheckpointError, match=rf"{png}: not a .*neither a torch checkpoint nor a pickle"):
            loader(png)
    other = tmp_path / "resnet.pt"
    torch.save({"model": torch.nn.Linear(2, 2).state_dict()}, other)
    with pytest.raises(CheckpointError, match=rf"{other}: not a rosinality stylegan2-pytorch checkpoint: no 'g_ema'"):
        load_rosinality_pt(other)
    with pytest.raises(CheckpointError, match=rf"{other}: not a pSp / e4e checkpoint: no 'state_dict'"):
        load_psp_encoder(other)
    with pytest.raises(CheckpointError, match=rf"{pt}: not a pSp / e4e checkpoint.*load_rosinality_pt"):
        load_psp_encoder(pt)


def test_mismatched_state_dicts(tmp_path, nvidia):
    sd = _ros().state_dict()
    missing = dict(sd)
    del missing["convs.1.noise.weight"]
    torch.save({"g_ema": missing}, tmp_path / "missing.pt")
    with pytest.raises(CheckpointError, match=r"missing.pt: the g_ema state dict does not match its architecture: "
                                              r"missing 1 key\(s\): convs.1.noise.weight"):
        load_rosinality_pt(tmp_path / "missing.pt")
    shaped = dict(sd, **{"convs.2.conv.weight": torch.zeros(1, 8, 5, 3, 3)})
    torch.save({"g_ema": shaped}, tmp_path / "shape.pt")
    with pytest.raises(CheckpointError, match=r"shape.pt: .*shape mismatch: convs.2.conv.weight \[1, 8, 5, 3, 3\] vs "
                                              r"\[1, 8, 12, 3, 3\]"):
        load_rosinality_pt(tmp_path / "shape.pt")
    extra = dict(sd, **{"style.1.extra": torch.zeros(1)})
    torch.save({"g_ema": extra}, tmp_path / "extra.pt")
    with pytest.raises(CheckpointError, match=r"extra.pt: .*unexpected 1 key\(s\): style.1.extra"):
        load_rosinality_pt(tmp_path / "extra.pt")
    torch.save({"g_ema": sd, "latent_avg": torch.zeros(7)}, tmp_path / "avg.pt")
    with pytest.raises(CheckpointError, match=r"avg.pt: latent_avg has shape \[7\], the generator's W has 16 dims"):
        load_rosinality_pt(tmp_path / "avg.pt")
    # a pickled generator whose tensors do not fit its own layers
    g = _ada(res=8)
    g.synthesis.b8.torgb.weight = torch.nn.Parameter(torch.zeros(3, 7, 1, 1))
    with pytest.raises(CheckpointError, match=r"bad.pkl: the G_ema state dict .*synthesis.b8.torgb.weight \[3, 7, 1, 1\]"):
        load_stylegan2_ada_pkl(_write_pkl(tmp_path / "bad.pkl", nvidia, g))
    with pytest.raises(CheckpointError, match=r"nog.pkl: the pickle has no 'G_ema'"):
        with open(tmp_path / "nog.pkl", "wb") as f:
            pickle.dump({"D": 1}, f)
        load_stylegan2_ada_pkl(tmp_path / "nog.pkl")


def test_stylegan3_is_refused(tmp_path, nvidia):
    g = _ada(res=8)
    g.synthesis.input = torch.nn.Linear(2, 2)  # StyleGAN3's SynthesisNetwork starts with an `input` layer
    with pytest.raises(CheckpointError, match=r"sg3.pkl: a StyleGAN3 \(alias-free\) generator: not supported"):
        load_stylegan2_ada_pkl(_write_pkl(tmp_path / "sg3.pkl", nvidia, g))


# --------------------------------------------------------------------------------------------- pSp / e4e

TINY_ENC = {"units": (1, 1, 1, 1), "widths": (16, 32, 64, 128)}  # real files: IR-SE50, (3, 4, 14, 3), (64 ... 512)


def _psp_ckpt(path: Path, encoder_type: str, seed: int, latent_avg: torch.Tensor | None, start: bool = True, **opts):
    torch.manual_seed(seed)
    dec = _jitter(RosinalityGenerator(32, 32, 2, channels={4: 16, 8: 16, 16: 8, 32: 8}), seed)
    enc = _jitter(PSPEncoder(encoder_type, dec.num_ws, 32, start_from_latent_avg=False, **TINY_ENC), seed)
    sd = {**enc.state_dict(), **{f"decoder.{k}": v for k, v in dec.state_dict().items()}}
    ckpt = {"state_dict": sd, "opts": {"encoder_type": encoder_type, "start_from_latent_avg": start,
                                       "output_size": 32, "stylegan_size": 32, "exp_dir": "/home/x/exp", **opts}}
    if latent_avg is not None:
        ckpt["latent_avg"] = latent_avg
    torch.save(ckpt, path)
    return enc, dec


def test_psp_encoder_state_dict_is_the_original_layout():
    sd = PSPEncoder("GradualStyleEncoder", 8, 32, start_from_latent_avg=False, **TINY_ENC).state_dict()
    assert sd["encoder.input_layer.0.weight"].shape == (16, 3, 3, 3) and "encoder.input_layer.1.running_var" in sd
    assert sd["encoder.input_layer.2.weight"].shape == (16,)  # PReLU
    assert "encoder.body.0.shortcut_layer.0.weight" not in sd  # 16 -> 16: a MaxPool shortcut, no weights
    assert sd["encoder.body.1.shortcut_layer.0.weight"].shape == (32, 16, 1, 1)
    assert sd["encoder.body.1.res_layer.1.weight"].shape == (32, 16, 3, 3)
    assert sd["encoder.body.3.res_layer.5.fc1.weight"].shape == (8, 128, 1, 1)  # SE, reduction 16
    assert sd["encoder.styles.0.convs.6.weight"].shape == (32, 32, 3, 3) and "encoder.styles.0.convs.8.weight" not in sd
    assert "encoder.styles.7.convs.10.weight" in sd  # the fine styles pool 64 -> 1: 6 convs
    assert sd["encoder.styles.7.linear.weight"].shape == (32, 32)
    assert sd["encoder.latlayer1.weight"].shape == (128, 64, 1, 1) and sd["encoder.latlayer2.weight"].shape == (128, 32, 1, 1)


def test_ir_se50_taps_the_original_layers():
    e = PSPEncoder("Encoder4Editing", 3, 512, start_from_latent_avg=False)
    assert len(e.encoder.body) == 24 and e.encoder._taps == (6, 20, 23)  # pSp / e4e: c1, c2, c3 at 6, 20, 23
    assert e.encoder.body[3].stride == 2 and e.encoder.body[4].stride == 1


@pytest.mark.parametrize("encoder_type,avg_shape", [("GradualStyleEncoder", (8, 32)), ("Encoder4Editing", (32,))])
def test_psp_e4e_round_trip_exact(tmp_path, encoder_type, avg_shape):
    avg = torch.randn(avg_shape, generator=torch.Generator().manual_seed(9))
    path = tmp_path / f"{encoder_type}.pt"
    enc, dec = _psp_ckpt(path, encoder_type, 7, avg)
    E, G, meta = load_psp_encoder(path)
    assert isinstance(E, PSPEncoder) and not E.training and not G.training
    assert sorted(E.state_dict()) == sorted(enc.state_dict())
    x = torch.rand(1, 3, 256, 256, generator=torch.Generator().manual_seed(1)) * 2 - 1
    with torch.no_grad():
        raw = enc(x)  # the saved encoder, without latent_avg
        ws = E(x)
        assert ws.shape == (1, 8, 32)
        assert torch.equal(ws, raw + avg.reshape(1, -1, 32))  # codes + latent_avg, as pSp / e4e do
        assert torch.equal(G.synthesis(ws), dec.synthesis(ws))
    assert torch.equal(G.w_avg, avg if avg.ndim == 1 else avg[0])
    assert meta["format"] == ("psp" if encoder_type == "GradualStyleEncoder" else "e4e")
    assert meta["encoder_type"] == encoder_type and meta["n_styles"] == 8 and meta["num_ws"] == 8
    assert meta["backbone"] == "ir_se units=[1, 1, 1, 1] widths=[16, 32, 64, 128]"
    assert meta["start_from_latent_avg"] and meta["latent_avg_source"] == "latent_avg"
    assert "exp_dir" not in meta["opts"] and meta["opts"]["output_size"] == 32
    assert meta["sha256"] == hashlib.sha256(path.read_bytes()).hexdigest()
    with pytest.raises(ValueError, match=r"\[N, 3, 256, 256\]"):
        E(torch.zeros(1, 3, 128, 128))
    # e4e and pSp differ in how they combine the style heads: the same weights give other codes
    other = "Encoder4Editing" if encoder_type == "GradualStyleEncoder" else "GradualStyleEncoder"
    twin = PSPEncoder(other, 8, 32, start_from_latent_avg=False, **TINY_ENC).eval()
    twin.load_state_dict(enc.state_dict())
    with torch.no_grad():
        assert not torch.allclose(twin(x), raw)


def test_psp_without_latent_avg(tmp_path):
    enc, _ = _psp_ckpt(tmp_path / "plain.pt", "GradualStyleEncoder", 8, None, start=False)
    E, G, meta = load_psp_encoder(tmp_path / "plain.pt")
    x = torch.zeros(1, 3, 256, 256)
    with torch.no_grad():
        assert torch.equal(E(x), enc(x))
    assert G.w_avg is None and meta["latent_avg_source"] is None and not meta["start_from_latent_avg"]
    _psp_ckpt(tmp_path / "need.pt", "GradualStyleEncoder", 8, None, start=True)
    with pytest.raises(CheckpointError, match="need.pt: trained start_from_latent_avg but has no latent_avg"):
        load_psp_encoder(tmp_path / "need.pt")
    _psp_ckpt(tmp_path / "e4e.pt", "Encoder4Editing", 8, None, start=True)  # e4e estimates it, as the original
    E, G, meta = load_psp_encoder(tmp_path / "e4e.pt")
    assert meta["latent_avg_source"] == "decoder.mean_w(10000, seed=0)"
    assert torch.equal(E.latent_avg, G.mean_w(10000, seed=0))


def test_psp_unsupported_variants(tmp_path):
    _psp_ckpt(tmp_path / "t.pt", "GradualStyleEncoder", 1, None, start=False)
    ck = torch.load(tmp_path / "t.pt", weights_only=True)
    ck["opts"]["encoder_type"] = "BackboneEncoderUsingLastLayerIntoW"
    torch.save(ck, tmp_path / "w.pt")
    with pytest.raises(CheckpointError, match=r"w.pt: encoder_type 'BackboneEncoderUsingLastLayerIntoW' is not supported"):
        load_psp_encoder(tmp_path / "w.pt")
    ck["opts"]["encoder_type"] = "GradualStyleEncoder"
    ck["state_dict"]["encoder.input_layer.0.weight"] = torch.zeros(16, 1, 3, 3)
    torch.save(ck, tmp_path / "sketch.pt")
    with pytest.raises(CheckpointError, match=r"sketch.pt: the encoder takes 1-channel inputs"):
        load_psp_encoder(tmp_path / "sketch.pt")
    ck = torch.load(tmp_path / "t.pt", weights_only=True)
    del ck["state_dict"]["encoder.styles.2.linear.bias"]
    torch.save(ck, tmp_path / "broken.pt")
    with pytest.raises(CheckpointError, match=r"broken.pt: the encoder state dict .*missing 1 key\(s\): styles.2.linear.bias"):
        load_psp_encoder(tmp_path / "broken.pt")


# --------------------------------------------------------------------------------------------- dispatch, URIs


def test_load_generator_by_content_and_fsspec(tmp_path, nvidia):
    g = _ros(11)
    pt = _save_ros(g, tmp_path / "a.bin")
    pkl = _write_pkl(tmp_path / "b.bin", nvidia, _ada(11, res=8))
    _, dec = _psp_ckpt(tmp_path / "c.bin", "Encoder4Editing", 11, torch.zeros(32))
    ws = torch.randn(1, 6, 16)
    G1, m1 = load_generator(pt)
    assert m1["format"] == "rosinality-pt" and torch.equal(G1.synthesis(ws), g.synthesis(ws))
    G2, m2 = load_generator(pkl)
    assert m2["format"] == "stylegan2-ada-pkl" and G2.resolution == 8
    G3, m3 = load_generator(tmp_path / "c.bin")
    assert m3["format"] == "e4e-decoder" and sorted(G3.state_dict()) == sorted(dec.state_dict())
    with fsspec.open("memory://models/g.pt", "wb") as f:
        f.write(pt.read_bytes())
    G4, m4 = load_rosinality_pt("memory://models/g.pt")
    assert m4["source"] == "memory://models/g.pt" and m4["sha256"] == m1["sha256"]
    assert torch.equal(G4.synthesis(ws), G1.synthesis(ws))

"""MobileStyleGAN: the built-in face generator (latent kind ``generator``), OpenVINO or PyTorch.

Contract:

* Weights: the OpenVINO IR (v10) of MobileStyleGAN (Belousov 2021, a StyleGAN2-FFHQ
  distillation) that the ``random-face`` wheel (2021.7.21.1) ships in ``random_face/data``:
  ``MappingNetwork.xml/.bin`` (z ``[1, 512]`` -> w ``[1, 512]``) and ``SynthesisNetwork.xml/.bin``
  (w -> RGB ``[1, 3, 1024, 1024]`` in [-1, 1]). deid finds that folder without importing
  ``random_face`` (its code needs a removed OpenVINO API and pins unrelated packages; the wheel
  is installed with ``--no-deps``), checks the four files against :data:`PINNED_SHA256`, and
  never downloads anything. ``model_dir`` names another folder with the same four files (not
  pinned: their sha256 is what the audit records).
* Licence: the wheel's code is Apache-2.0; the weights derive from NVIDIA's StyleGAN2 and fall
  under the NVIDIA Source Code License-NC (non-commercial research and evaluation only). A
  manifest that uses this plug-in must name it in ``licences.accept_non_commercial``.
* w+: the IR takes one w and feeds it to every modulation (23 ``MatMul`` nodes that read the
  graph's input: ``m.conv1``, then ``up``, ``conv1``, ``conv2`` of layers 0-6, then
  ``layers.6.to_img``, coarse to fine: :func:`deid.latent.irtorch.style_taps`). Both runtimes
  cut that edge and take ``ws [N, 23, 512]``, one w per modulation (``num_ws = 23``);
  a plain w is the same w on every layer, which gives the IR's own output.
* Runtimes (``runtime``): ``openvino`` (CPU; the graph edited to take w+, compiled with
  ``INFERENCE_PRECISION_HINT f32``), ``torch``: the same graph interpreted op by op in PyTorch
  (:mod:`deid.latent.irtorch`) -- CUDA, and gradients w.r.t. w+. ``auto``: torch on a CUDA
  device (``device`` auto picks one when the actor holds a GPU), else openvino. The two agree
  to about 1e-4 (max abs on the image; each float32 engine rounds differently: measured in
  docs/latent.md).
* The model object is a :class:`deid.latent.generator.GeneratorModel`; its fingerprint and w
  statistics do not depend on the runtime.
"""

from __future__ import annotations

import hashlib
import importlib.util
from pathlib import Path
from typing import Literal

from pydantic import Field, model_validator

from deid.latent.registry import LATENT_MODELS, GeneratorParams
from deid.plugins import Licence, ModelFile, Needs, Plugin, path_field

NAME = "mobilestylegan"
WHEEL = "random-face==2021.7.21.1"
INSTALL_HINT = f"run `make install` (it installs {WHEEL} with --no-deps: deid reads only its data/ files)"
FILES = ("MappingNetwork.xml", "MappingNetwork.bin", "SynthesisNetwork.xml", "SynthesisNetwork.bin")
#: sha256 of the files of random-face 2021.7.21.1's data/
PINNED_SHA256 = {
    "MappingNetwork.xml": "73e2096cad6e696e4af47df2477e048ab4c42c0e0dec83c7c66604822689e55b",
    "MappingNetwork.bin": "212dd716bdb556e18db603ea97300d4fa3c872b878c726b2402fea80820e7305",
    "SynthesisNetwork.xml": "7918fce515243954d3e06628cb39a23902d6b1d5d02932cc0c2faee7a2aeeedd",
    "SynthesisNetwork.bin": "c7da15fa22d508c82e1c30dd6b4cdf67fe3ccdddaf85b310ee764dbf0c289645",
}
LICENCE = Licence(
    code="Apache-2.0 (deid; the random-face wheel's code)",
    weights="MobileStyleGAN weights of random-face 2021.7.21.1, distilled from NVIDIA StyleGAN2-FFHQ: NVIDIA "
            "Source Code License-NC, non-commercial research and evaluation only",
    non_commercial=True)
OV_CONFIG = {"INFERENCE_PRECISION_HINT": "f32"}


# ---------------------------------------------------------------------------- files
def wheel_data_dir() -> Path | None:
    """``random_face/data`` of the installed wheel, found without importing ``random_face``."""
    try:
        spec = importlib.util.find_spec("random_face")
    except (ImportError, ValueError):
        return None
    if spec is None or not spec.submodule_search_locations:
        return None
    return Path(next(iter(spec.submodule_search_locations))) / "data"


def model_paths(model_dir: str | None = None) -> dict[str, Path]:
    """The four IR files (``model_dir``, or the wheel's data/); a clear error when one is missing."""
    root = Path(model_dir).expanduser() if model_dir else wheel_data_dir()
    if root is None:
        raise FileNotFoundError(f"latent.backend {NAME}: the random-face wheel is not installed; {INSTALL_HINT}")
    paths = {n: root / n for n in FILES}
    missing = [str(p) for p in paths.values() if not p.is_file()]
    if missing:
        where = "latent.model_dir" if model_dir else "the random-face wheel"
        fix = "give a folder with MappingNetwork.xml/.bin and SynthesisNetwork.xml/.bin" if model_dir else INSTALL_HINT
        raise FileNotFoundError(f"latent.backend {NAME}: {', '.join(missing)} missing ({where}); {fix}")
    return paths


def file_shas(paths: dict[str, Path], pinned: bool) -> dict[str, str]:
    from deid.faces.models import file_sha256

    shas = {n: file_sha256(str(p)) for n, p in paths.items()}
    if pinned:
        bad = [n for n in FILES if shas[n] != PINNED_SHA256[n]]
        if bad:
            raise ValueError(f"latent.backend {NAME}: {', '.join(str(paths[n]) for n in bad)}: sha256 differs from "
                             f"{WHEEL}'s; reinstall it ({INSTALL_HINT}) or name your own files with latent.model_dir")
    return shas


def weights_fingerprint(shas: dict[str, str]) -> str:
    h = hashlib.sha256()
    for n in FILES:
        h.update(f"{n}={shas[n]}\n".encode())
    return h.hexdigest()


# ---------------------------------------------------------------------------- graphs
def read_models(paths: dict[str, Path]):
    """``(core, mapping, synthesis)``: the two ``openvino.Model`` graphs, as read."""
    import openvino as ov

    core = ov.Core()
    return (core, core.read_model(str(paths["MappingNetwork.xml"]), str(paths["MappingNetwork.bin"])),
            core.read_model(str(paths["SynthesisNetwork.xml"]), str(paths["SynthesisNetwork.bin"])))


def _describe(mapping, synthesis) -> dict:
    from deid.latent.irtorch import style_taps

    z_dim = int(mapping.inputs[0].get_partial_shape()[1].get_length())
    w_dim = int(mapping.outputs[0].get_partial_shape()[1].get_length())
    res = int(synthesis.outputs[0].get_partial_shape()[3].get_length())
    taps = style_taps(synthesis)
    names = [t.input(1).get_source_output().get_node().get_friendly_name().removesuffix(".modulation.weight")
             for t in taps]
    return {"z_dim": z_dim, "w_dim": w_dim, "resolution": res, "taps": taps, "ws_layers": names}


def wplus_synthesis(synthesis, taps, w_dim: int, batch: int | None = 1):
    """The synthesis graph edited to take ``ws [batch, len(taps), w_dim]`` (``None``: any
    batch): modulation k reads ``ws[:, k]``, every other reader of the old input ``ws[:, 0]``."""
    import numpy as np
    import openvino as ov
    import openvino.opset13 as ops

    old = synthesis.get_parameters()[0]
    ws = ops.parameter(ov.PartialShape([batch if batch else -1, len(taps), w_dim]), ov.Type.f32, name="ws")
    axis = ops.constant(np.int64(1))
    pick = [ops.gather(ws, ops.constant(np.int64(k)), axis) for k in range(len(taps))]
    for k, t in enumerate(taps):
        t.input(0).replace_source_output(pick[k].output(0))
    for target in list(old.output(0).get_target_inputs()):
        target.replace_source_output(pick[0].output(0))
    return ov.Model(synthesis.get_results(), [ws], "synthesis_wplus")


class OpenVINOGenerator:
    """The generator surface of :mod:`deid.latent.generator` on OpenVINO (CPU, no gradients).
    The synthesis network is compiled on first use."""

    device = "cpu"
    differentiable = False

    def __init__(self, paths: dict[str, Path]):
        import openvino as ov

        core, mapping, synthesis = read_models(paths)
        d = _describe(mapping, synthesis)
        self.z_dim, self.w_dim, self.resolution = d["z_dim"], d["w_dim"], d["resolution"]
        self.num_ws, self.ws_layers = len(d["taps"]), d["ws_layers"]
        mapping.reshape({mapping.inputs[0]: ov.PartialShape([-1, self.z_dim])})
        self._core = core
        self._mapping = core.compile_model(mapping, "CPU", OV_CONFIG)
        self._synthesis_model = wplus_synthesis(synthesis, d["taps"], self.w_dim, batch=1)
        self._synthesis = None

    def mapping(self, z):
        import numpy as np
        import torch

        z = z.detach().cpu().numpy() if isinstance(z, torch.Tensor) else np.asarray(z)
        return torch.from_numpy(np.array(self._mapping(z.astype(np.float32))[0]))

    def synthesis(self, ws):
        import numpy as np
        import torch

        if self._synthesis is None:
            self._synthesis = self._core.compile_model(self._synthesis_model, "CPU", OV_CONFIG)
        ws = ws.detach().cpu().numpy() if isinstance(ws, torch.Tensor) else np.asarray(ws)
        ws = ws.astype(np.float32)
        out = [np.array(self._synthesis(ws[i:i + 1])[0]) for i in range(len(ws))]
        return torch.from_numpy(np.concatenate(out) if out else
                                np.zeros((0, 3, self.resolution, self.resolution), np.float32))


def torch_generator(paths: dict[str, Path], device: str = "cpu"):
    """The same graphs interpreted in PyTorch (:class:`deid.latent.irtorch.IRModule`), as a
    ``torch.nn.Module`` with the generator surface; differentiable w.r.t. ``ws``."""
    import torch

    from deid.latent.irtorch import IRModule

    _, mapping, synthesis = read_models(paths)
    d = _describe(mapping, synthesis)
    taps = {(t.get_name(), 0): k for k, t in enumerate(d["taps"])}

    class MobileStyleGANTorch(torch.nn.Module):
        differentiable = True

        def __init__(self):
            super().__init__()
            self.z_dim, self.w_dim, self.resolution = d["z_dim"], d["w_dim"], d["resolution"]
            self.num_ws, self.ws_layers = len(taps), d["ws_layers"]
            self.mapping_net = IRModule(mapping)
            self.synthesis_net = IRModule(synthesis, taps=taps)

        @property
        def device(self):
            return next(self.buffers()).device

        def mapping(self, z):
            return self.mapping_net(z)

        def synthesis(self, ws):
            return self.synthesis_net(ws)

        def forward(self, ws):
            return self.synthesis(ws)

    return MobileStyleGANTorch().to(torch.device(device)).eval()


# ---------------------------------------------------------------------------- the plug-in
class MobileStyleGANParams(GeneratorParams):
    model_dir: str | None = path_field(
        None, description="local folder with MappingNetwork.xml/.bin and SynthesisNetwork.xml/.bin (OpenVINO IR); "
        "null: the random-face wheel's data/ (installed by make install; sha256-pinned)")
    runtime: Literal["auto", "openvino", "torch"] = Field(
        "auto", description="openvino: CPU; torch: the same graph in PyTorch (CUDA, gradients); auto: torch on a "
        "CUDA device, else openvino")
    crop_size: int | None = Field(None, ge=64, le=1024, description="size of the generated faces (area-resized); "
                                  "null: the generator's 1024")

    @model_validator(mode="after")
    def _runtime_fits_device(self) -> "MobileStyleGANParams":
        if self.runtime == "openvino" and self.device.startswith("cuda"):
            raise ValueError("runtime openvino runs on the CPU: use runtime torch (or auto) for device cuda")
        return self


def _runtime(p: MobileStyleGANParams) -> tuple[str, str]:
    """``(runtime, torch device)`` the params resolve to here."""
    if p.runtime == "openvino":
        return "openvino", "cpu"
    from deid.latent.torchscript import pick_device

    dev = str(pick_device(p.device))
    if p.runtime == "torch":
        return "torch", dev
    return ("torch", dev) if dev.startswith("cuda") else ("openvino", "cpu")


def load(p: MobileStyleGANParams):
    from deid.latent.generator import GeneratorModel

    paths = model_paths(p.model_dir)
    shas = file_shas(paths, pinned=p.model_dir is None)
    runtime, device = _runtime(p)
    gen = OpenVINOGenerator(paths) if runtime == "openvino" else torch_generator(paths, device)
    card = {"weights": "MobileStyleGAN (random-face 2021.7.21.1 data/)" if p.model_dir is None else str(p.model_dir),
            "files_sha256": shas, "runtime": runtime, "licence": LICENCE.weights,
            "source": "Belousov 2021, MobileStyleGAN: a lightweight convolutional neural network for "
                      "high-fidelity image synthesis; distilled from StyleGAN2-FFHQ (Karras et al. 2020)"}
    return GeneratorModel(gen, name=NAME, backend=NAME, weights_fingerprint=weights_fingerprint(shas), card=card,
                          crop_size=p.crop_size, align_scale=p.align_scale, stats_samples=p.stats_samples,
                          stats_seed=p.stats_seed, cache_dir=p.cache_dir, batch_size=p.batch_size,
                          torch_factory=lambda dev: torch_generator(paths, dev))


def _files(p: MobileStyleGANParams) -> list[ModelFile]:
    return [ModelFile(f"{NAME}:{n}", str(path)) for n, path in model_paths(p.model_dir).items()]


LATENT_MODELS.register(Plugin(
    kind="latent", name=NAME, params=MobileStyleGANParams, factory=load,
    summary="MobileStyleGAN face generator (random-face wheel's OpenVINO IR): z -> w (w+: 23 layers) -> 1024 px "
            "FFHQ-aligned stranger; OpenVINO on CPU, a PyTorch port for CUDA and gradients; no encoder",
    licence=LICENCE,
    needs=Needs(landmarks="ffhq", latent="generator", gpu=True),
    model_files=_files,
    module=__name__,
))

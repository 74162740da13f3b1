"""Loaders for user-brought StyleGAN2-family checkpoints; no code from a model file ever runs.

Surface (the ``generator`` latent kind builds on it; architecture in :mod:`deid.latent.stylegan2`):

``load_rosinality_pt(path, *, storage_options=None, lr_mlp=0.01) -> (G, meta)``
    rosinality ``stylegan2-pytorch`` ``.pt``: a torch checkpoint holding a dict with ``g_ema``
    (optionally ``g``, ``d``, ``latent_avg``, ``args``, optimiser states), or a bare ``g_ema``
    state dict. Read with ``torch.load(weights_only=True)`` (``argparse.Namespace`` allowed for
    ``args``). ``G`` is a :class:`~deid.latent.stylegan2.RosinalityGenerator`; ``G.w_avg`` is
    ``latent_avg`` (``None`` without one).
``load_stylegan2_ada_pkl(path, *, storage_options=None, network="G_ema") -> (G, meta)``
    NVIDIA ``stylegan2-ada-pytorch`` network pickle (``.pkl``: a pickled dict with ``G``,
    ``D``, ``G_ema``, ``augment_pipe``, ``training_set_kwargs``, or a pickled Generator). Read
    with :class:`NetworkUnpickler`, a restricted unpickler (below). ``G`` is an
    :class:`~deid.latent.stylegan2.AdaGenerator`; ``G.w_avg`` is ``mapping.w_avg``.
``load_psp_encoder(path, *, storage_options=None) -> (E, G, meta)``
    pSp / e4e checkpoint (torch ``.pt``: ``state_dict`` with ``encoder.*`` and ``decoder.*``
    keys, ``opts``, ``latent_avg``), ``weights_only=True``. ``E`` is a
    :class:`~deid.latent.stylegan2.PSPEncoder` (``E(img [N, 3, 256, 256] in [-1, 1]) -> ws
    [N, num_ws, w_dim]``, ``latent_avg`` added as the originals do when trained
    ``start_from_latent_avg``); ``G`` is the checkpoint's decoder, a RosinalityGenerator, whose
    ``w_avg`` is the checkpoint's ``latent_avg``.
``load_generator(path, *, storage_options=None) -> (G, meta)``
    any of the above by content: a torch checkpoint is rosinality's (or a pSp / e4e one's
    decoder), a plain pickle stylegan2-ada's.

Every ``G`` is in eval mode on CPU, with ``z_dim, w_dim, num_ws, resolution``, ``w_avg``,
``mapping(z, truncation_psi=1.0)``, ``synthesis(ws, noise_mode="const")`` (see
:mod:`deid.latent.stylegan2`). ``meta`` is plain JSON-able data: ``format``
(``rosinality-pt``, ``stylegan2-ada-pkl``, ``psp``, ``e4e``), ``source`` (the path as given),
``sha256`` and ``bytes`` of the file, ``resolution``, ``z_dim``, ``w_dim``, ``num_ws``,
``channels`` (width per resolution), ``has_w_avg``, ``licence`` (text the checkpoint itself
carries under ``license``/``licence``, else ``None``: the user states the licence of weights
they bring) and format-specific entries. Paths may be any fsspec URI.

Safety rules:

* A ``.pkl`` is never given to :mod:`pickle`'s default loader. :class:`NetworkUnpickler`'s
  ``find_class`` allows only what rebuilding tensors and containers needs
  (``collections.OrderedDict``, ``builtins.set``/``frozenset``, ``torch._utils._rebuild_tensor_v2``
  / ``_rebuild_parameter``, ``torch._tensor._rebuild_from_type_v2``, ``torch.storage._load_from_bytes``
  whose bytes are read with ``torch.load(weights_only=True)``, torch dtypes / ``Size`` /
  ``device``, numpy arrays, scalars and dtypes, ``_codecs.encode`` for latin-1 only) and maps
  the persistent-class machinery to inert records: ``torch_utils.persistence.
  _reconstruct_persistent_obj`` returns a :class:`ModuleRecord` (class name, the sha256 of the
  embedded module source, which is never executed, and the pickled state), classes of
  ``training.networks`` / ``training.networks_stylegan2`` / ``training.augment`` become
  record classes that only store their arguments and state, ``dnnlib`` ``EasyDict`` a plain
  dict. Every other global (``os.system``, ``builtins.eval``, ``subprocess.*`` ...) is refused
  with a :class:`CheckpointError` naming the file and the global, before anything it names runs.
* torch checkpoints load with ``torch.load(weights_only=True, map_location="cpu")``.
* Every failure is a :class:`CheckpointError` (a ``ValueError``) whose message names the file,
  what is wrong and what to do: a truncated / corrupt file, a file of another format, a state
  dict that does not match the architecture (missing / unexpected keys, shapes), an
  unsupported variant (StyleGAN3, non-RGB output, a pSp encoder type other than
  ``GradualStyleEncoder`` / ``Encoder4Editing``).
"""

from __future__ import annotations

import argparse
import codecs
import collections
import hashlib
import io
import math
import os
import pickle
import re
import warnings
from collections.abc import Mapping
from typing import Any

import numpy as np
import torch

from deid.latent.base import read_uri
from deid.latent.stylegan2 import (
    ENCODER_TYPES,
    IR50_UNITS,
    IR_WIDTHS,
    AdaGenerator,
    PSPEncoder,
    RosinalityGenerator,
)

__all__ = ["CheckpointError", "ModuleRecord", "NetworkUnpickler", "load_generator", "load_psp_encoder",
           "load_rosinality_pt", "load_stylegan2_ada_pkl", "read_network_pickle"]


class CheckpointError(ValueError):
    """A model file that cannot be used; the message names the file and the reason."""


# ---------------------------------------------------------------------------------------------
# reading bytes, sniffing formats

_LEGACY_TORCH_MAGIC = b"\x8a\nl\xfc\x9cF\xf9 j\xa8P\x19"  # pickled 0x1950a86a20f9469cfc6c, torch.save (legacy)


def _read(path: str | os.PathLike, storage_options: dict | None) -> tuple[bytes, str]:
    name = os.fspath(path)
    try:
        data = read_uri(name, storage_options)
    except FileNotFoundError:
        raise FileNotFoundError(f"{name}: no such checkpoint file") from None
    except Exception as exc:  # noqa: BLE001 - fsspec errors: permissions, network, bad URI
        raise CheckpointError(f"{name}: cannot read the checkpoint: {type(exc).__name__}: {exc}") from None
    if not data:
        raise CheckpointError(f"{name}: the file is empty")
    return data, name


def sniff(data: bytes) -> str:
    """``torch-zip`` (``torch.save``), ``torch-legacy`` (old ``torch.save``), ``pickle`` (a plain
    pickle, e.g. a stylegan2-ada network pickle) or ``unknown``."""
    if data[:4] == b"PK\x03\x04":
        return "torch-zip"
    if data[:1] == b"\x80" and len(data) > 2:
        if data[2:2 + len(_LEGACY_TORCH_MAGIC)] == _LEGACY_TORCH_MAGIC:
            return "torch-legacy"
        return "pickle"
    return "unknown"


def _base_meta(fmt: str, name: str, data: bytes) -> dict[str, Any]:
    return {"format": fmt, "source": name, "sha256": hashlib.sha256(data).hexdigest(), "bytes": len(data)}


def _wrong_format(name: str, data: bytes, want: str) -> CheckpointError:
    kind = sniff(data)
    hint = {"pickle": "it is a plain pickle (a stylegan2-ada network .pkl? use load_stylegan2_ada_pkl)",
            "torch-zip": "it is a torch checkpoint (rosinality / pSp / e4e .pt? use load_rosinality_pt or "
                         "load_psp_encoder)",
            "torch-legacy": "it is a legacy torch checkpoint (use load_rosinality_pt or load_psp_encoder)",
            "unknown": f"it starts with {data[:8]!r}, neither a torch checkpoint nor a pickle"}[kind]
    return CheckpointError(f"{name}: not a {want}: {hint}")


def _torch_load(data: bytes, name: str) -> Any:
    kind = sniff(data)
    if kind not in ("torch-zip", "torch-legacy"):
        raise _wrong_format(name, data, "torch checkpoint")
    try:
        with warnings.catch_warnings():
            warnings.simplefilter("ignore")
            with torch.serialization.safe_globals([argparse.Namespace]):
                return torch.load(io.BytesIO(data), map_location="cpu", weights_only=True)
    except pickle.UnpicklingError as exc:
        m = re.search(r"GLOBAL ([\w.]+)(?: ([\w.]+) whose module)?", str(exc))
        if m or "Weights only load failed" in str(exc):
            what = (m.group(1) + (f".{m.group(2)}" if m.group(2) else "")) if m else "a non-tensor object"
            raise CheckpointError(
                f"{name}: refused to load: the checkpoint asks for {what}, which a weights-only torch load does "
                "not allow (deid never runs code from model files). Re-save the weights as plain tensors "
                "(torch.save of a dict of state dicts)") from None
        raise CheckpointError(f"{name}: corrupt torch checkpoint: {exc}") from None
    except (RuntimeError, EOFError, ValueError, KeyError, OSError, IndexError) as exc:
        msg = str(exc).splitlines()[0] if str(exc) else type(exc).__name__
        raise CheckpointError(f"{name}: truncated or corrupt torch checkpoint ({msg}); download or copy the file "
                              "again and check its sha256") from None


# ---------------------------------------------------------------------------------------------
# the restricted unpickler


class _Refused(pickle.UnpicklingError):
    pass


class _AttrDict(dict):
    """Stand-in for dnnlib.EasyDict: a plain dict (accepts BUILD, runs nothing)."""

    def __setstate__(self, state):  # EasyDict pickles carry no extra state; ignore any
        pass


class ModuleRecord:
    """Inert record of a pickled network object (a persistent_class instance or a
    ``training.*`` class): its class name, the sha256 of its embedded module source (never
    executed) and its pickled state (``__dict__``: ``_parameters``, ``_buffers``, ``_modules``,
    plain attributes, ``_init_kwargs``)."""

    class_name = "?"
    module = "?"

    def __init__(self, *args, **kwargs):
        self.args, self.kwargs = args, kwargs
        self.state: dict = {}
        self.src_sha256: str | None = None

    def __setstate__(self, state):
        if isinstance(state, tuple) and len(state) == 2:  # (dict state, slot state)
            state = {**(state[0] or {}), **(state[1] or {})}
        self.state = state if isinstance(state, dict) else {"state": state}

    def __repr__(self) -> str:
        return f"<ModuleRecord {self.module}.{self.class_name}>"

    # views on the pickled nn.Module state
    def _od(self, key: str) -> dict:
        v = self.state.get(key)
        return v if isinstance(v, dict) else {}

    @property
    def children(self) -> dict[str, ModuleRecord]:
        return {k: v for k, v in self._od("_modules").items() if isinstance(v, ModuleRecord)}

    def attr(self, key: str, default: Any = None) -> Any:
        if key in self.state:
            return self.state[key]
        kw = self.state.get("_init_kwargs")
        if isinstance(kw, dict) and key in kw:
            return kw[key]
        return default

    def state_dict(self, prefix: str = "") -> dict[str, torch.Tensor]:
        out: dict[str, torch.Tensor] = {}
        skip = self.state.get("_non_persistent_buffers_set") or set()
        for k, v in self._od("_parameters").items():
            if isinstance(v, torch.Tensor):
                out[prefix + k] = v
        for k, v in self._od("_buffers").items():
            if isinstance(v, torch.Tensor) and k not in skip:
                out[prefix + k] = v
        for k, v in self.children.items():
            out.update(v.state_dict(f"{prefix}{k}."))
        return out


_RECORD_MODULES = ("training.networks", "training.networks_stylegan2", "training.augment")
_record_classes: dict[tuple[str, str], type] = {}


def _record_class(module: str, name: str) -> type:
    key = (module, name)
    if key not in _record_classes:
        _record_classes[key] = type(name, (ModuleRecord,), {"class_name": name, "module": module})
    return _record_classes[key]


def _reconstruct_persistent_obj(meta: Any) -> ModuleRecord:
    """Stand-in for ``torch_utils.persistence._reconstruct_persistent_obj``: records, never execs."""
    if not isinstance(meta, dict) or meta.get("type") != "class" or not isinstance(meta.get("class_name"), str):
        raise _Refused("a persistent object without the expected metadata (type 'class', class_name)")
    rec = _record_class("torch_utils.persistence", meta["class_name"])()
    rec.__setstate__(meta.get("state") or {})
    src = meta.get("module_src")
    rec.src_sha256 = hashlib.sha256(src.encode("utf-8")).hexdigest() if isinstance(src, str) else None
    rec.version = meta.get("version")
    return rec


def _safe_rebuild_tensor(storage, storage_offset, size, stride, requires_grad=False, backward_hooks=None,
                         metadata=None):
    if not isinstance(storage, (torch.storage.TypedStorage, torch.UntypedStorage)):
        raise _Refused(f"a tensor rebuilt from a {type(storage).__name__}, not a storage")
    return torch._utils._rebuild_tensor_v2(storage, int(storage_offset), tuple(size), tuple(stride), False,
                                           collections.OrderedDict())


def _safe_rebuild_parameter(data, requires_grad=False, backward_hooks=None, state=None):
    if not isinstance(data, torch.Tensor):
        raise _Refused("a parameter rebuilt from a non-tensor")
    return data


_SAFE_REBUILDERS = (_safe_rebuild_tensor, _safe_rebuild_parameter)


def _safe_rebuild_from_type(func, new_type, args, state=None):
    if func not in _SAFE_REBUILDERS or new_type not in (torch.Tensor, torch.nn.Parameter):
        raise _Refused("a tensor of an unexpected type")
    return func(*args)


def _safe_load_from_bytes(b):
    if not isinstance(b, (bytes, bytearray)):
        raise _Refused("storage bytes that are not bytes")
    try:
        with warnings.catch_warnings():
            warnings.simplefilter("ignore")
            out = torch.load(io.BytesIO(bytes(b)), map_location="cpu", weights_only=True)
    except pickle.UnpicklingError as exc:
        raise _Refused(f"a tensor storage whose bytes ask for more than tensor data ({str(exc).splitlines()[-1]})")
    if not isinstance(out, (torch.storage.TypedStorage, torch.UntypedStorage)):
        raise _Refused("storage bytes that hold something other than a storage")
    return out


def _latin1_encode(s, encoding="latin1"):
    if not isinstance(s, str) or encoding not in ("latin1", "latin-1"):
        raise _Refused("_codecs.encode other than latin-1 text")
    return codecs.encode(s, "latin1")


def _np_reconstruct(subtype, shape, dtype):
    if subtype is not np.ndarray:
        raise _Refused("a numpy array of a subclass")
    return np.ndarray.__new__(np.ndarray, shape, dtype)


def _np_scalar(dtype, data=None):
    if not isinstance(dtype, np.dtype) or dtype.hasobject:
        raise _Refused("a numpy object scalar")
    return np.frombuffer(data, dtype=dtype, count=1)[0] if data is not None else dtype.type()


def _np_dtype(spec, align=False, copy=False):
    if not isinstance(spec, str):
        raise _Refused("a numpy dtype from a non-string spec")
    dt = np.dtype(spec, align=bool(align), copy=bool(copy))
    if dt.hasobject:
        raise _Refused("a numpy object dtype")
    return dt


_TORCH_NAMES = {n for n in dir(torch) if isinstance(getattr(torch, n, None), torch.dtype)}

_SAFE_GLOBALS: dict[tuple[str, str], Any] = {
    ("collections", "OrderedDict"): collections.OrderedDict,
    ("builtins", "set"): set,
    ("builtins", "frozenset"): frozenset,
    ("__builtin__", "set"): set,
    ("_codecs", "encode"): _latin1_encode,
    ("torch._utils", "_rebuild_tensor_v2"): _safe_rebuild_tensor,
    ("torch._utils", "_rebuild_parameter"): _safe_rebuild_parameter,
    ("torch._utils", "_rebuild_parameter_with_state"): _safe_rebuild_parameter,
    ("torch._tensor", "_rebuild_from_type_v2"): _safe_rebuild_from_type,
    ("torch.storage", "_load_from_bytes"): _safe_load_from_bytes,
    ("torch", "Size"): torch.Size,
    ("torch", "device"): torch.device,
    ("numpy", "ndarray"): np.ndarray,
    ("numpy", "dtype"): _np_dtype,
    ("torch_utils.persistence", "_reconstruct_persistent_obj"): _reconstruct_persistent_obj,
    ("dnnlib.util", "EasyDict"): _AttrDict,
    ("dnnlib", "EasyDict"): _AttrDict,
}
for _m in ("numpy.core.multiarray", "numpy._core.multiarray"):
    _SAFE_GLOBALS[(_m, "_reconstruct")] = _np_reconstruct
    _SAFE_GLOBALS[(_m, "scalar")] = _np_scalar


class NetworkUnpickler(pickle.Unpickler):
    """A :class:`pickle.Unpickler` that resolves only the globals listed in the module
    docstring; anything else raises before the named object is even imported."""

    def find_class(self, module: str, name: str) -> Any:
        hit = _SAFE_GLOBALS.get((module, name))
        if hit is not None:
            return hit
        if module == "torch" and name in _TORCH_NAMES:
            return getattr(torch, name)
        if module in _RECORD_MODULES and name.isidentifier() and not name.startswith("_"):
            return _record_class(module, name)
        raise _Refused(f"the pickle calls {module}.{name}")

    def persistent_load(self, pid: Any) -> Any:
        raise _Refused("the pickle uses persistent ids (a torch.save file? use the .pt loaders)")


def read_network_pickle(data: bytes, name: str = "<bytes>") -> Any:
    """Unpickle ``data`` with :class:`NetworkUnpickler`; a :class:`CheckpointError` naming
    ``name`` when it is refused, truncated or not a pickle."""
    if sniff(data) != "pickle":
        raise _wrong_format(name, data, "network pickle")
    try:
        return NetworkUnpickler(io.BytesIO(data)).load()
    except _Refused as exc:
        raise CheckpointError(
            f"{name}: refused to load: {exc}, which a StyleGAN2-ADA network pickle never needs; deid never runs "
            "code from model files. Only bring network pickles from a source you trust; nothing from this one "
            "was run") from None
    except (EOFError, pickle.UnpicklingError, ValueError, TypeError, AttributeError, IndexError, KeyError,
            MemoryError, OverflowError, RuntimeError) as exc:
        msg = str(exc).splitlines()[0] if str(exc) else type(exc).__name__
        raise CheckpointError(f"{name}: truncated or corrupt pickle ({type(exc).__name__}: {msg}); copy the file "
                              "again and check its sha256") from None


# ---------------------------------------------------------------------------------------------
# state dicts


def _need(sd: Mapping[str, Any], key: str, name: str, what: str) -> torch.Tensor:
    v = sd.get(key)
    if not isinstance(v, torch.Tensor):
        raise CheckpointError(f"{name}: the {what} has no tensor {key!r}: not a {what} state dict, or a "
                              "mismatched / damaged one")
    return v


def _load_matching(module: torch.nn.Module, sd: Mapping[str, Any], name: str, what: str) -> None:
    """Load ``sd`` into ``module`` strictly, with an error that lists what does not match."""
    expected = module.state_dict()
    got = {k: v for k, v in sd.items()}
    missing = sorted(set(expected) - set(got))
    unexpected = sorted(set(got) - set(expected))
    shapes = sorted(k for k in set(expected) & set(got)
                    if not isinstance(got[k], torch.Tensor) or tuple(got[k].shape) != tuple(expected[k].shape))
    if missing or unexpected or shapes:
        def few(keys):
            return ", ".join(keys[:5]) + (f" (+{len(keys) - 5} more)" if len(keys) > 5 else "")
        parts = []
        if missing:
            parts.append(f"missing {len(missing)} key(s): {few(missing)}")
        if unexpected:
            parts.append(f"unexpected {len(unexpected)} key(s): {few(unexpected)}")
        if shapes:
            parts.append("shape mismatch: " + ", ".join(
                f"{k} {list(getattr(got[k], 'shape', []))} vs {list(expected[k].shape)}" for k in shapes[:5]))
        raise CheckpointError(f"{name}: the {what} state dict does not match its architecture: {'; '.join(parts)}")
    module.load_state_dict({k: v.to(expected[k].dtype) for k, v in got.items()}, strict=True)


def _licence(obj: Any) -> str | None:
    if isinstance(obj, Mapping):
        for k in ("licence", "license", "LICENSE", "License"):
            if isinstance(obj.get(k), str):
                return obj[k]
    return None


def _plain(v: Any, depth: int = 0) -> Any:
    """JSON-able copy of simple metadata (numbers, strings, lists, dicts); else its type name."""
    if isinstance(v, (bool, int, float, str)) or v is None:
        return v
    if isinstance(v, np.generic):
        return v.item()
    if depth < 3 and isinstance(v, (list, tuple)):
        return [_plain(x, depth + 1) for x in v]
    if depth < 3 and isinstance(v, Mapping):
        return {str(k): _plain(x, depth + 1) for k, x in v.items()}
    return f"<{type(v).__name__}>"


# ---------------------------------------------------------------------------------------------
# rosinality


def _is_rosinality_sd(sd: Any) -> bool:
    return isinstance(sd, Mapping) and "input.input" in sd and "style.1.weight" in sd


def _rosinality_from_sd(sd: Mapping[str, Any], name: str, what: str, lr_mlp: float) -> RosinalityGenerator:
    if not isinstance(sd, Mapping):
        raise CheckpointError(f"{name}: the {what} is a {type(sd).__name__}, not a state dict")
    n_mlp = 0
    while isinstance(sd.get(f"style.{n_mlp + 1}.weight"), torch.Tensor):
        n_mlp += 1
    if n_mlp == 0:
        raise CheckpointError(f"{name}: the {what} has no mapping layers (style.1.weight): not a rosinality "
                              "StyleGAN2 Generator state dict")
    style_dim = int(_need(sd, "style.1.weight", name, what).shape[0])
    n_rgb = len({k.split(".")[1] for k in sd if k.startswith("to_rgbs.") and k.count(".") >= 2})
    size = 2 ** (n_rgb + 2)
    channels = {4: int(_need(sd, "input.input", name, what).shape[1])}
    for i in range(n_rgb):
        channels[2 ** (i + 3)] = int(_need(sd, f"convs.{2 * i}.conv.weight", name, what).shape[1])
    blur = [1, 3, 3, 1]
    if n_rgb:
        k = _need(sd, "convs.0.conv.blur.kernel", name, what)
        blur = [1] * int(k.shape[0])  # placeholder taps of the stored filter's size; the buffer is loaded
    try:
        g = RosinalityGenerator(size, style_dim, n_mlp, blur_kernel=blur, lr_mlp=lr_mlp, channels=channels)
    except (ValueError, RuntimeError) as exc:
        raise CheckpointError(f"{name}: the {what} does not describe a buildable generator: {exc}") from None
    _load_matching(g, sd, name, what)
    return g.eval()


def _set_w_avg(g, avg: Any, name: str) -> bool:
    if avg is None:
        return False
    if not isinstance(avg, torch.Tensor):
        raise CheckpointError(f"{name}: latent_avg is a {type(avg).__name__}, not a tensor")
    a = avg.detach().float()
    if a.ndim == 2 and a.shape[-1] == g.w_dim:
        a = a[0]  # pSp stores it repeated per style
    if a.numel() != g.w_dim:
        raise CheckpointError(f"{name}: latent_avg has shape {list(avg.shape)}, the generator's W has {g.w_dim} dims")
    g.w_avg = a.reshape(g.w_dim).clone()
    return True


def _gen_meta(g, meta: dict) -> dict:
    meta.update({"resolution": int(g.resolution), "z_dim": int(g.z_dim), "w_dim": int(g.w_dim),
                 "num_ws": int(g.num_ws), "has_w_avg": g.w_avg is not None})
    return meta


def _rosinality_from_obj(obj: Any, name: str, meta: dict, lr_mlp: float) -> tuple[RosinalityGenerator, dict]:
    if isinstance(obj, Mapping) and "g_ema" in obj:
        sd, what = obj["g_ema"], "g_ema"
    elif _is_rosinality_sd(obj):
        sd, what = obj, "generator"
    elif isinstance(obj, Mapping) and isinstance(obj.get("state_dict"), Mapping) and any(
            str(k).startswith("encoder.") for k in obj["state_dict"]):
        raise CheckpointError(f"{name}: a pSp / e4e checkpoint, not a rosinality generator: use load_psp_encoder "
                              "(or load_generator for its decoder)")
    else:
        keys = sorted(map(str, obj))[:8] if isinstance(obj, Mapping) else type(obj).__name__
        raise CheckpointError(f"{name}: not a rosinality stylegan2-pytorch checkpoint: no 'g_ema' (found {keys})")
    g = _rosinality_from_sd(sd, name, what, lr_mlp)
    has_avg = _set_w_avg(g, obj.get("latent_avg") if isinstance(obj, Mapping) else None, name)
    meta.update({"n_mlp": g.n_mlp, "lr_mlp": lr_mlp, "channels": {str(r): c for r, c in g.channels.items()},
                 "w_avg_source": "latent_avg" if has_avg else None, "licence": _licence(obj),
                 "checkpoint_keys": sorted(map(str, obj))[:32] if isinstance(obj, Mapping) and what == "g_ema" else [],
                 "noise": "const: the checkpoint's noises.noise_* buffers"})
    args = obj.get("args") if isinstance(obj, Mapping) else None
    if isinstance(args, argparse.Namespace):
        meta["args"] = {k: _plain(v) for k, v in vars(args).items()
                        if k in ("size", "latent", "n_mlp", "channel_multiplier", "iter", "arch", "r1", "mixing")}
    return g, _gen_meta(g, meta)


def load_rosinality_pt(path: str | os.PathLike, *, storage_options: dict | None = None,
                       lr_mlp: float = 0.01) -> tuple[RosinalityGenerator, dict]:
    """(G, meta) from a rosinality stylegan2-pytorch ``.pt`` (see the module docstring)."""
    data, name = _read(path, storage_options)
    obj = _torch_load(data, name)
    return _rosinality_from_obj(obj, name, _base_meta("rosinality-pt", name, data), lr_mlp)


# ---------------------------------------------------------------------------------------------
# stylegan2-ada


def _ada_from_record(rec: ModuleRecord, name: str) -> AdaGenerator:
    if not isinstance(rec, ModuleRecord):
        raise CheckpointError(f"{name}: the network is a {type(rec).__name__}, not a pickled Generator")
    if rec.class_name != "Generator":
        raise CheckpointError(f"{name}: the network is a {rec.class_name}, not a Generator")
    kids = rec.children
    syn, mp = kids.get("synthesis"), kids.get("mapping")
    if syn is None or mp is None:
        raise CheckpointError(f"{name}: the Generator has no mapping / synthesis networks (found "
                              f"{sorted(kids)}): not a stylegan2-ada Generator")
    if "input" in syn.children or any(k.startswith("L") and "_" in k for k in syn.children):
        raise CheckpointError(f"{name}: a StyleGAN3 (alias-free) generator: not supported, only StyleGAN2 "
                              "(stylegan2-ada-pytorch, or stylegan3's stylegan2 configs)")
    try:
        z_dim, c_dim, w_dim = int(rec.attr("z_dim")), int(rec.attr("c_dim", 0)), int(rec.attr("w_dim"))
        res, img_ch = int(rec.attr("img_resolution")), int(rec.attr("img_channels", 3))
    except (TypeError, ValueError):
        raise CheckpointError(f"{name}: the Generator lacks z_dim / w_dim / img_resolution") from None
    if img_ch != 3:
        raise CheckpointError(f"{name}: the generator makes {img_ch}-channel images; deid needs RGB (3)")
    sd = rec.state_dict()
    what = "G_ema"
    # mapping
    n_fc = 0
    while f"fc{n_fc}" in mp.children:
        n_fc += 1
    if n_fc == 0:
        raise CheckpointError(f"{name}: the mapping network has no layers (mapping.fc0)")
    fc0 = mp.children["fc0"]
    lr_mul = float(fc0.attr("bias_gain", fc0.attr("lr_multiplier", 0.01)))
    mk: dict[str, Any] = {"num_layers": n_fc, "activation": str(fc0.attr("activation", "lrelu")),
                          "lr_multiplier": lr_mul}
    if n_fc > 1:
        mk["layer_features"] = int(_need(sd, "mapping.fc0.weight", name, what).shape[0])
    if c_dim > 0:
        mk["embed_features"] = int(_need(sd, "mapping.embed.weight", name, what).shape[0])
    if "mapping.w_avg" not in sd:
        mk["w_avg_beta"] = None
    # synthesis
    blocks = [2 ** i for i in range(2, int(math.log2(res)) + 1)]
    channels, arch, first = {}, None, None
    for r in blocks:
        b = syn.children.get(f"b{r}")
        if b is None:
            raise CheckpointError(f"{name}: the synthesis network has no block b{r} for resolution {res}")
        channels[r] = int(_need(sd, f"synthesis.b{r}.conv1.weight", name, what).shape[0])
        arch = arch or b.attr("architecture")
        first = first or b.children.get("conv1")
    kernel = int(sd["synthesis.b4.conv1.weight"].shape[-1])
    fw = int(_need(sd, "synthesis.b4.resample_filter", name, what).shape[-1])
    sk: dict[str, Any] = {"channels": channels, "architecture": str(arch or "skip"),
                          "conv_clamp": first.attr("conv_clamp") if first else None,
                          "resample_filter": [1] * fw,  # placeholder taps of the stored filter's size
                          "kernel_size": kernel, "use_noise": bool(first.attr("use_noise", True)) if first else True,
                          "activation": str(first.attr("activation", "lrelu")) if first else "lrelu"}
    if sk["conv_clamp"] is not None:
        sk["conv_clamp"] = float(sk["conv_clamp"])
    try:
        g = AdaGenerator(z_dim, c_dim, w_dim, res, img_ch, mapping_kwargs=mk, synthesis_kwargs=sk)
    except (ValueError, KeyError, RuntimeError) as exc:
        raise CheckpointError(f"{name}: the Generator does not describe a buildable StyleGAN2: {exc}") from None
    _load_matching(g, sd, name, what)
    _copy_layer_attrs(g, rec)
    return g.eval()


_LAYER_ATTRS = {"weight_gain": float, "bias_gain": float, "act_gain": float, "activation": str}


def _copy_layer_attrs(g: torch.nn.Module, rec: ModuleRecord) -> None:
    """Per-layer gains and activations as pickled (they are attributes, not tensors)."""
    def walk(mod: torch.nn.Module, r: ModuleRecord) -> None:
        for attr, typ in _LAYER_ATTRS.items():
            if hasattr(mod, attr) and attr in r.state and r.state[attr] is not None:
                setattr(mod, attr, typ(r.state[attr]))
        if hasattr(mod, "conv_clamp") and "conv_clamp" in r.state:
            v = r.state["conv_clamp"]
            mod.conv_clamp = None if v is None else float(v)
        for k, child in mod.named_children():
            if k in r.children:
                walk(child, r.children[k])
    walk(g, rec)


def load_stylegan2_ada_pkl(path: str | os.PathLike, *, storage_options: dict | None = None,
                           network: str = "G_ema") -> tuple[AdaGenerator, dict]:
    """(G, meta) from an NVIDIA stylegan2-ada-pytorch network pickle (see the module docstring)."""
    data, name = _read(path, storage_options)
    obj = read_network_pickle(data, name)
    return _ada_from_obj(obj, name, _base_meta("stylegan2-ada-pkl", name, data), network)


def _ada_from_obj(obj: Any, name: str, meta: dict, network: str) -> tuple[AdaGenerator, dict]:
    if isinstance(obj, ModuleRecord):
        rec, key = obj, None
    elif isinstance(obj, Mapping):
        key = network if network in obj else None
        if key is None:
            raise CheckpointError(f"{name}: the pickle has no {network!r} (found {sorted(map(str, obj))[:8]}): not a "
                                  "stylegan2-ada network pickle, or pass network='G'")
        rec = obj[key]
    else:
        raise CheckpointError(f"{name}: the pickle holds a {type(obj).__name__}, not a network dict")
    g = _ada_from_record(rec, name)
    syn = rec.children["synthesis"]
    meta.update({
        "network": key or "Generator", "c_dim": int(g.c_dim),
        "mapping_layers": int(g.mapping.num_layers),
        "channels": {str(r): int(getattr(g.synthesis, f"b{r}").conv1.weight.shape[0]) for r in g.synthesis.block_resolutions},
        "architecture": getattr(g.synthesis, f"b{g.resolution}").architecture,
        "conv_clamp": g.synthesis.b4.conv1.conv_clamp,
        "num_fp16_res": _plain(syn.attr("num_fp16_res", (rec.attr("synthesis_kwargs") or {}).get("num_fp16_res")
                                        if isinstance(rec.attr("synthesis_kwargs"), Mapping) else None)),
        "module_src_sha256": rec.src_sha256,
        "w_avg_source": "mapping.w_avg" if g.w_avg is not None else None,
        "licence": _licence(obj),
        "pickle_keys": sorted(map(str, obj))[:16] if isinstance(obj, Mapping) else [],
        "noise": "const: the checkpoint's noise_const buffers",
        "precision": "float32 (fp16 blocks of the original run in float32)",
    })
    if isinstance(obj, Mapping) and isinstance(obj.get("training_set_kwargs"), Mapping):
        tk = obj["training_set_kwargs"]
        meta["training_set"] = {k: _plain(tk[k]) for k in ("resolution", "use_labels", "max_size", "xflip")
                                if k in tk}
    return g, _gen_meta(g, meta)


# ---------------------------------------------------------------------------------------------
# pSp / e4e


_PSP_OPTS = ("encoder_type", "output_size", "stylegan_size", "input_nc", "label_nc", "start_from_latent_avg",
             "learn_in_w", "dataset_type")


def _encoder_layout(enc: Mapping[str, Any], name: str) -> dict[str, Any]:
    what = "encoder"
    w0 = _need(enc, "input_layer.0.weight", name, what)
    if w0.shape[1] != 3:
        raise CheckpointError(f"{name}: the encoder takes {w0.shape[1]}-channel inputs (a sketch / segmentation "
                              "pSp model); deid needs one that encodes RGB photos")
    depths = []
    while isinstance(enc.get(f"body.{len(depths)}.res_layer.1.weight"), torch.Tensor):
        depths.append(int(enc[f"body.{len(depths)}.res_layer.1.weight"].shape[0]))
    if not depths:
        raise CheckpointError(f"{name}: the encoder has no IR backbone (body.0.res_layer.1.weight)")
    units, widths = [], []
    for d in depths:
        if widths and widths[-1] == d:
            units[-1] += 1
        else:
            widths.append(d)
            units.append(1)
    if len(units) != 4:
        raise CheckpointError(f"{name}: the encoder's backbone has {len(units)} stages of widths {widths}; the "
                              "IR / IR-SE backbone of pSp and e4e has 4")
    n_styles = 0
    spatial = []
    while isinstance(enc.get(f"styles.{n_styles}.linear.weight"), torch.Tensor):
        convs = 0
        while isinstance(enc.get(f"styles.{n_styles}.convs.{2 * convs}.weight"), torch.Tensor):
            convs += 1
        spatial.append(2 ** convs)
        n_styles += 1
    if n_styles == 0:
        raise CheckpointError(f"{name}: the encoder has no style heads (styles.0.linear.weight): not a "
                              "GradualStyleEncoder / Encoder4Editing")
    return {"units": tuple(units), "widths": tuple(widths), "n_styles": n_styles, "style_spatial": spatial,
            "w_dim": int(enc["styles.0.linear.weight"].shape[0]), "se": "body.0.res_layer.5.fc1.weight" in enc}


def load_psp_encoder(path: str | os.PathLike, *, storage_options: dict | None = None
                     ) -> tuple[PSPEncoder, RosinalityGenerator, dict]:
    """(E, G, meta) from a pSp or e4e checkpoint (see the module docstring)."""
    data, name = _read(path, storage_options)
    obj = _torch_load(data, name)
    return _psp_from_obj(obj, name, data)


def _psp_from_obj(obj: Any, name: str, data: bytes) -> tuple[PSPEncoder, RosinalityGenerator, dict]:
    if not isinstance(obj, Mapping) or not isinstance(obj.get("state_dict"), Mapping):
        keys = sorted(map(str, obj))[:8] if isinstance(obj, Mapping) else type(obj).__name__
        hint = " (a rosinality generator: use load_rosinality_pt)" if isinstance(obj, Mapping) and "g_ema" in obj else ""
        raise CheckpointError(f"{name}: not a pSp / e4e checkpoint: no 'state_dict' (found {keys}){hint}")
    sd = obj["state_dict"]
    enc = {k[len("encoder."):]: v for k, v in sd.items() if str(k).startswith("encoder.")}
    dec = {k[len("decoder."):]: v for k, v in sd.items() if str(k).startswith("decoder.")}
    if not enc or not dec:
        raise CheckpointError(f"{name}: the state_dict needs encoder.* and decoder.* keys (has {len(enc)} encoder, "
                              f"{len(dec)} decoder keys): not a pSp / e4e checkpoint")
    opts = obj.get("opts")
    opts = vars(opts) if isinstance(opts, argparse.Namespace) else dict(opts) if isinstance(opts, Mapping) else {}
    etype = opts.get("encoder_type")
    if etype is None:  # the two layouts are identical; e4e's options have its progressive-training keys
        etype = "Encoder4Editing" if any(k in opts for k in ("progressive_steps", "w_discriminator_lambda",
                                                               "delta_norm_lambda")) else "GradualStyleEncoder"
    if etype not in ENCODER_TYPES:
        raise CheckpointError(f"{name}: encoder_type {etype!r} is not supported (only {', '.join(ENCODER_TYPES)}: "
                              "the W+ encoders of pSp and e4e)")
    lay = _encoder_layout(enc, name)
    g = _rosinality_from_sd(dec, name, "decoder", 0.01)
    if lay["w_dim"] != g.w_dim or lay["n_styles"] != g.num_ws:
        raise CheckpointError(f"{name}: the encoder makes {lay['n_styles']} x {lay['w_dim']} codes but the decoder "
                              f"takes {g.num_ws} x {g.w_dim}")
    start = bool(opts.get("start_from_latent_avg", False))
    avg = obj.get("latent_avg")
    avg_source = "latent_avg" if isinstance(avg, torch.Tensor) else None
    if avg is not None and not isinstance(avg, torch.Tensor):
        raise CheckpointError(f"{name}: latent_avg is a {type(avg).__name__}, not a tensor")
    if start and avg is None:
        if etype != "Encoder4Editing":
            raise CheckpointError(f"{name}: trained start_from_latent_avg but has no latent_avg")
        avg = g.mean_w(10000, seed=0)  # what e4e does (mean_latent(10000)), reproducibly
        avg_source = "decoder.mean_w(10000, seed=0)"
    if avg is not None:
        if avg.shape[-1] != g.w_dim or avg.numel() not in (g.w_dim, g.w_dim * lay["n_styles"]):
            raise CheckpointError(f"{name}: latent_avg has shape {list(avg.shape)}, the codes are "
                                  f"{lay['n_styles']} x {g.w_dim}")
        _set_w_avg(g, avg, name)
    try:
        e = PSPEncoder(etype, lay["n_styles"], lay["w_dim"], lay["units"], lay["widths"], se=lay["se"],
                       start_from_latent_avg=start, latent_avg=avg if start else None,
                       style_spatial=lay["style_spatial"])
    except (ValueError, RuntimeError) as exc:
        raise CheckpointError(f"{name}: the encoder is not buildable: {exc}") from None
    _load_matching(e.encoder, enc, name, "encoder")
    e.eval()
    fmt = "e4e" if etype == "Encoder4Editing" else "psp"
    backbone = ("ir_se50" if lay["se"] else "ir50") if (lay["units"] == IR50_UNITS and lay["widths"] == IR_WIDTHS) \
        else f"{'ir_se' if lay['se'] else 'ir'} units={list(lay['units'])} widths={list(lay['widths'])}"
    meta = _base_meta(fmt, name, data)
    meta.update({"encoder_type": etype, "backbone": backbone, "encoder_input": [3, 256, 256],
                 "n_styles": lay["n_styles"], "start_from_latent_avg": start, "latent_avg_source": avg_source,
                 "opts": {k: _plain(opts[k]) for k in _PSP_OPTS if k in opts}, "licence": _licence(obj),
                 "decoder": _gen_meta(g, {"format": "rosinality", "n_mlp": g.n_mlp,
                                          "channels": {str(r): c for r, c in g.channels.items()}})})
    meta.update({k: meta["decoder"][k] for k in ("resolution", "z_dim", "w_dim", "num_ws", "has_w_avg")})
    return e, g, meta


# ---------------------------------------------------------------------------------------------
# by content


def load_generator(path: str | os.PathLike, *, storage_options: dict | None = None,
                   lr_mlp: float = 0.01) -> tuple[torch.nn.Module, dict]:
    """(G, meta) from any supported checkpoint, chosen by its content (module docstring)."""
    data, name = _read(path, storage_options)
    kind = sniff(data)
    if kind == "pickle":
        return _ada_from_obj(read_network_pickle(data, name), name, _base_meta("stylegan2-ada-pkl", name, data),
                             "G_ema")
    if kind in ("torch-zip", "torch-legacy"):
        obj = _torch_load(data, name)
        if isinstance(obj, Mapping) and isinstance(obj.get("state_dict"), Mapping) and "g_ema" not in obj:
            _, g, meta = _psp_from_obj(obj, name, data)
            meta["format"] = f"{meta['format']}-decoder"
            return g, meta
        return _rosinality_from_obj(obj, name, _base_meta("rosinality-pt", name, data), lr_mlp)
    raise _wrong_format(name, data, "StyleGAN2 checkpoint")

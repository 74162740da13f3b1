"""OpenVINO IR graphs run by PyTorch: a faithful interpreter of an ``openvino.Model``.

Contract:

* :class:`IRModule` walks the model's ordered ops once, keeps every floating-point
  ``Constant`` as a buffer (so ``.to(device)`` moves the weights) and every integer
  ``Constant`` as static numpy data, and replays the ops with torch ops in that order. The op
  types it implements are :data:`SUPPORTED`; any other type is a ``NotImplementedError`` at
  construction that names it and the node. Semantics are OpenVINO's opset definitions
  (numpy broadcasting, ``special_zero`` reshapes, grouped and transposed convolutions with
  explicit pads).
* Shapes are computed, not copied: ``ShapeOf`` reads the running tensor's shape, so a graph
  exported for batch 1 whose reshapes are built from ``ShapeOf`` (as ONNX exports are) runs
  at any batch size. Static shape arithmetic (``ShapeOf`` -> ``Gather`` -> ``Concat``) runs in
  numpy, so it never syncs a GPU.
* ``taps``: an input that several consumers read may be split: ``taps[(node name, port)] = k``
  feeds that consumer input from slice ``k`` of axis 1 of the module's (then 3-D) input instead
  of the whole 2-D input. That is how one broadcast style vector becomes one vector per layer
  (w+); see :func:`style_taps`.
* Float32 throughout; the result is differentiable w.r.t. the inputs (no in-place ops, no
  numpy on the data path). With ``trace=True`` intermediate values are kept for inspection.

The interpreter knows nothing about generators; :mod:`deid.latent.mobilestylegan` uses it.
"""

from __future__ import annotations

from typing import Any

import numpy as np

#: op types the interpreter implements
SUPPORTED = frozenset({
    "Parameter", "Constant", "Result", "MatMul", "Add", "Multiply", "Subtract", "Divide", "Power", "PRelu",
    "ReduceMean", "ShapeOf", "Gather", "Unsqueeze", "Squeeze", "Concat", "Reshape", "VariadicSplit",
    "Broadcast", "Tile", "Convolution", "GroupConvolution", "GroupConvolutionBackpropData",
    "Abs", "Relu", "Transpose",
})


def _key(output) -> tuple[str, int]:
    return output.get_node().get_name(), output.get_index()


def op_types(model) -> set[str]:
    """The op types of an ``openvino.Model``."""
    return {op.get_type_name() for op in model.get_ordered_ops()}


def style_taps(model) -> list[Any]:
    """The ``MatMul`` nodes that read the model's single 2-D parameter directly (the style
    modulations of a StyleGAN-like synthesis graph), in forward order: ordered by the
    longest-path depth of the first 4-D feature map (spatial size > 1) each one reaches."""
    params = model.get_parameters()
    if len(params) != 1:
        raise ValueError(f"expected one input, the graph has {len(params)}")
    param = params[0]
    ops = model.get_ordered_ops()
    depth: dict[str, int] = {}
    for op in ops:  # topological order: longest path from any source
        depth[op.get_name()] = 1 + max((depth[i.get_source_output().get_node().get_name()] for i in op.inputs()),
                                       default=-1)
    consumers: dict[str, list] = {}
    for op in ops:
        for i in op.inputs():
            consumers.setdefault(i.get_source_output().get_node().get_name(), []).append(op)
    taps = [t.get_node() for t in param.output(0).get_target_inputs() if t.get_node().get_type_name() == "MatMul"]

    def merge_depth(node) -> int:
        seen, frontier = set(), [node]
        best = None
        while frontier:
            nxt = []
            for n in frontier:
                for c in consumers.get(n.get_name(), []):
                    if c.get_name() in seen:
                        continue
                    seen.add(c.get_name())
                    shape = c.get_output_partial_shape(0) if c.get_output_size() else None
                    if shape is not None and shape.rank.is_static and shape.rank.get_length() == 4 \
                            and shape.is_static and shape[2].get_length() * shape[3].get_length() > 1:
                        d = depth[c.get_name()]
                        best = d if best is None else min(best, d)
                    else:
                        nxt.append(c)
            frontier = nxt
        if best is None:
            raise ValueError(f"{node.get_friendly_name()}: reaches no feature map")
        return best

    return sorted(taps, key=merge_depth)


class IRModule:
    """Built lazily as a ``torch.nn.Module`` subclass (torch is imported on first use)."""

    def __new__(cls, model, taps: dict[tuple[str, int], int] | None = None, trace: bool = False,
                free_batch: int | None = None):
        return _build(model, taps or {}, trace, free_batch)


def _build(model, taps: dict[tuple[str, int], int], trace: bool, free_batch: int | None = None):
    import torch
    import torch.nn.functional as F

    class _IRModule(torch.nn.Module):
        """An OpenVINO graph as a torch module: ``forward(x)`` -> the first result."""

        def __init__(self):
            super().__init__()
            ops = model.get_ordered_ops()
            bad = sorted({op.get_type_name() for op in ops} - SUPPORTED)
            if bad:
                where = {t: next(op.get_friendly_name() for op in ops if op.get_type_name() == t) for t in bad}
                raise NotImplementedError("OpenVINO op type(s) not implemented by deid.latent.irtorch: "
                                          + ", ".join(f"{t} (e.g. {where[t]})" for t in bad))
            params = model.get_parameters()
            if len(params) != 1 or len(model.get_results()) != 1:
                raise ValueError("IRModule runs graphs with one input and one output")
            self.input_name = params[0].get_name()
            self.trace = trace
            self.values: dict = {}
            self._static: dict[tuple[str, int], np.ndarray] = {}
            self._buffers_of: dict[tuple[str, int], str] = {}
            self.program: list[tuple[str, str, list, dict, list[tuple[str, int]]]] = []
            self.n_taps = (max(taps.values()) + 1) if taps else 0
            uses: dict[tuple[str, int], int] = {}
            for step, op in enumerate(ops):
                t, name = op.get_type_name(), op.get_name()
                outs = [(name, k) for k in range(op.get_output_size())]
                if t == "Constant":
                    data = np.array(op.get_data(), copy=True)
                    if data.dtype.kind == "f":
                        bname = f"c{len(self._buffers_of)}"
                        self.register_buffer(bname, torch.from_numpy(data.astype(np.float32)), persistent=False)
                        self._buffers_of[outs[0]] = bname
                    else:
                        self._static[outs[0]] = data.astype(np.int64)
                    continue
                ins = []
                for port, i in enumerate(op.inputs()):
                    src = _key(i.get_source_output())
                    if src[0] == self.input_name and (name, port) in taps:
                        src = ("__tap__", taps[(name, port)])
                    ins.append(src)
                    uses[src] = step
                self.program.append((t, name, ins, dict(op.get_attributes()) if t != "Parameter" else {}, outs))
                if t == "Result":
                    self.result = ins[0]
            self.last_use = uses

        # -- values
        def _get(self, key):
            if key in self._static:
                return self._static[key]
            b = self._buffers_of.get(key)
            if b is not None:
                return getattr(self, b)
            return self._env[key]

        def forward(self, x):
            env: dict = {}
            self._env = env
            if self.n_taps:
                if x.ndim != 3 or x.shape[1] != self.n_taps:
                    raise ValueError(f"input must be [N, {self.n_taps}, D], got {list(x.shape)}")
                for k in range(self.n_taps):
                    env[("__tap__", k)] = x[:, k]
                env[(self.input_name, 0)] = x[:, 0]
            else:
                env[(self.input_name, 0)] = x
            last = self.last_use
            for step, (t, name, ins, attrs, outs) in enumerate(self.program):
                if t == "Parameter":
                    continue
                args = [self._get(k) for k in ins]
                if t == "Result":
                    out = args[0]
                    break
                res = _OPS[t](args, attrs)
                if len(outs) == 1:
                    env[outs[0]] = res
                else:
                    for o, r in zip(outs, res):
                        env[o] = r
                if not self.trace:
                    for k in ins:
                        if last.get(k) == step and k in env:
                            del env[k]
            self.values = env if self.trace else {}
            self._env = {}
            return out

    # ---------------------------------------------------------------- op semantics
    def _tensor_like(v, ref):
        if isinstance(v, np.ndarray):
            return torch.as_tensor(v, dtype=ref.dtype if isinstance(ref, torch.Tensor) else torch.float32,
                                   device=ref.device if isinstance(ref, torch.Tensor) else None)
        return v

    def _bin(fn_np, fn_t):
        def run(args, attrs):
            a, b = args
            if isinstance(a, np.ndarray) and isinstance(b, np.ndarray):
                return np.asarray(fn_np(a, b))
            return fn_t(_tensor_like(a, b), _tensor_like(b, a))
        return run

    def _matmul(args, attrs):
        a, b = args
        if attrs.get("transpose_a"):
            a = a.transpose(-1, -2)
        if attrs.get("transpose_b"):
            b = b.transpose(-1, -2)
        return torch.matmul(a, b)

    def _prelu(args, attrs):
        x, s = args
        s = s.reshape(-1)
        if s.numel() == 1:
            return F.leaky_relu(x, float(s[0]))
        shape = [1, -1] + [1] * (x.ndim - 2)
        return torch.where(x >= 0, x, x * s.reshape(shape))

    def _reduce_mean(args, attrs):
        x, axes = args
        axes = [int(a) % x.ndim for a in np.atleast_1d(axes)]
        return x.mean(dim=axes, keepdim=bool(attrs.get("keep_dims", False)))

    def _shape_of(args, attrs):
        return np.array(args[0].shape, dtype=np.int64)

    def _gather(args, attrs):
        data, idx, axis = args
        if int(attrs.get("batch_dims", 0)) != 0:
            raise NotImplementedError("Gather with batch_dims")
        axis = int(axis)
        if isinstance(data, np.ndarray):
            return np.asarray(np.take(data, np.asarray(idx), axis=axis))
        index = torch.as_tensor(np.asarray(idx).reshape(-1), device=data.device)
        out = torch.index_select(data, axis % data.ndim, index)
        return out.reshape(data.shape[:axis % data.ndim] + tuple(np.shape(idx)) + data.shape[axis % data.ndim + 1:])

    def _unsqueeze(args, attrs):
        x, axes = args
        axes = sorted(int(a) for a in np.atleast_1d(axes))
        if isinstance(x, np.ndarray):
            for a in axes:
                x = np.expand_dims(x, a if a >= 0 else a + x.ndim + 1)
            return x
        for a in axes:
            x = x.unsqueeze(a)
        return x

    def _squeeze(args, attrs):
        x = args[0]
        if len(args) == 1:
            return np.squeeze(x) if isinstance(x, np.ndarray) else x.squeeze()
        axes = sorted((int(a) % x.ndim for a in np.atleast_1d(args[1])), reverse=True)
        if isinstance(x, np.ndarray):
            return np.squeeze(x, axis=tuple(axes))
        for a in axes:
            x = x.squeeze(a)
        return x

    def _concat(args, attrs):
        axis = int(attrs["axis"])
        if all(isinstance(a, np.ndarray) for a in args):
            return np.concatenate([np.atleast_1d(a) for a in args], axis=axis)
        ref = next(a for a in args if isinstance(a, torch.Tensor))
        return torch.cat([_tensor_like(a, ref) for a in args], dim=axis)

    def _reshape(args, attrs):
        x, shape = args
        shape = [int(s) for s in np.atleast_1d(shape)]
        if attrs.get("special_zero"):
            shape = [x.shape[i] if s == 0 else s for i, s in enumerate(shape)]
        if (free_batch is not None and isinstance(x, torch.Tensor) and shape and shape[0] == free_batch
                and x.ndim >= 1 and x.shape[0] != free_batch and -1 not in shape[1:]):
            shape = [x.shape[0]] + shape[1:]  # a graph exported for a fixed batch, run at another
        return x.reshape(shape)

    def _variadic_split(args, attrs):
        x, axis, lengths = args
        axis = int(axis) % x.ndim
        lengths = [int(v) for v in np.atleast_1d(lengths)]
        if -1 in lengths:
            i = lengths.index(-1)
            lengths[i] = x.shape[axis] - (sum(lengths) + 1)
        return list(torch.split(x, lengths, dim=axis))

    def _broadcast(args, attrs):
        x, target = args[0], [int(v) for v in np.atleast_1d(args[1])]
        mode = attrs.get("mode", "numpy")
        if mode not in ("numpy", "bidirectional"):
            raise NotImplementedError(f"Broadcast mode {mode}")
        if isinstance(x, np.ndarray):
            shape = np.broadcast_shapes(x.shape, tuple(target)) if mode == "bidirectional" else tuple(target)
            return np.broadcast_to(x, shape).copy()
        shape = torch.broadcast_shapes(x.shape, tuple(target)) if mode == "bidirectional" else tuple(target)
        return x.expand(shape)

    def _tile(args, attrs):
        x, reps = args
        reps = [int(r) for r in np.atleast_1d(reps)]
        while x.ndim < len(reps):
            x = x.unsqueeze(0)
        reps = [1] * (x.ndim - len(reps)) + reps
        return x.repeat(*reps)

    def _pads(attrs, x, w=None):
        mode = attrs.get("auto_pad", "explicit")
        if mode == "valid":
            return x, (0, 0)
        if mode in ("same_upper", "same_lower") and w is not None:
            # SAME: output = ceil(input / stride); the odd pixel goes at the end (upper) or start
            pads = []
            for d in range(2):
                size, k = x.shape[2 + d], (w.shape[-2 + d] - 1) * attrs["dilations"][d] + 1
                s_ = attrs["strides"][d]
                total = max((-(-size // s_) - 1) * s_ + k - size, 0)
                lo = total // 2 if mode == "same_upper" else total - total // 2
                pads.append((lo, total - lo))
            if pads[0][0] == pads[0][1] and pads[1][0] == pads[1][1]:
                return x, (pads[0][0], pads[1][0])
            return F.pad(x, (pads[1][0], pads[1][1], pads[0][0], pads[0][1])), (0, 0)
        if mode not in ("explicit", "notset"):
            raise NotImplementedError(f"auto_pad {mode}")
        pb, pe = list(attrs["pads_begin"]), list(attrs["pads_end"])
        if pb == pe:
            return x, tuple(pb)
        return F.pad(x, (pb[1], pe[1], pb[0], pe[0])), (0, 0)

    def _conv(args, attrs):
        x, w = args
        x, pad = _pads(attrs, x, w)
        return F.conv2d(x, w, stride=tuple(attrs["strides"]), padding=pad, dilation=tuple(attrs["dilations"]))

    def _group_conv(args, attrs):
        x, w = args  # w: [G, Cout/G, Cin/G, kh, kw]
        g = w.shape[0]
        x, pad = _pads(attrs, x, w[0])
        return F.conv2d(x, w.reshape((g * w.shape[1],) + tuple(w.shape[2:])), stride=tuple(attrs["strides"]),
                        padding=pad, dilation=tuple(attrs["dilations"]), groups=g)

    def _group_deconv(args, attrs):
        if len(args) != 2:
            raise NotImplementedError("GroupConvolutionBackpropData with an output_shape input")
        x, w = args  # w: [G, Cin/G, Cout/G, kh, kw]
        g = w.shape[0]
        pb, pe = list(attrs["pads_begin"]), list(attrs["pads_end"])
        if pb != pe or attrs.get("auto_pad", "explicit") not in ("explicit", "notset"):
            raise NotImplementedError("GroupConvolutionBackpropData with asymmetric or automatic pads")
        stride, kh, kw = tuple(attrs["strides"]), w.shape[3], w.shape[4]
        if (w.shape[1] == w.shape[2] == 1 and stride == (kh, kw) and pb == [0, 0]
                and tuple(attrs["dilations"]) == (1, 1) and tuple(attrs.get("output_padding", [0, 0])) == (0, 0)):
            # depthwise with stride == kernel (a wavelet's inverse step): every output pixel is
            # one product x * w, so a broadcast multiply gives the same numbers, much faster
            n, c, h, wd = x.shape
            y = x[:, :, :, None, :, None] * w.reshape(1, g, 1, kh, 1, kw)
            return y.reshape(n, c, h * kh, wd * kw)
        return F.conv_transpose2d(x, w.reshape((g * w.shape[1],) + tuple(w.shape[2:])), stride=tuple(attrs["strides"]),
                                  padding=tuple(pb), output_padding=tuple(attrs.get("output_padding", [0, 0])),
                                  groups=g, dilation=tuple(attrs["dilations"]))

    def _transpose(args, attrs):
        x, perm = args
        perm = [int(p) % x.ndim for p in np.atleast_1d(perm)] if np.size(perm) else list(range(x.ndim))[::-1]
        return np.transpose(x, perm) if isinstance(x, np.ndarray) else x.permute(*perm)

    _OPS = {
        "Abs": lambda args, attrs: np.abs(args[0]) if isinstance(args[0], np.ndarray) else torch.abs(args[0]),
        "Relu": lambda args, attrs: F.relu(args[0]),
        "Transpose": _transpose,
        "MatMul": _matmul,
        "Add": _bin(np.add, torch.add),
        "Multiply": _bin(np.multiply, torch.mul),
        "Subtract": _bin(np.subtract, torch.sub),
        "Divide": _bin(np.divide, torch.div),
        "Power": _bin(np.power, torch.pow),
        "PRelu": _prelu,
        "ReduceMean": _reduce_mean,
        "ShapeOf": _shape_of,
        "Gather": _gather,
        "Unsqueeze": _unsqueeze,
        "Squeeze": _squeeze,
        "Concat": _concat,
        "Reshape": _reshape,
        "VariadicSplit": _variadic_split,
        "Broadcast": _broadcast,
        "Tile": _tile,
        "Convolution": _conv,
        "GroupConvolution": _group_conv,
        "GroupConvolutionBackpropData": _group_deconv,
    }

    return _IRModule()

"""onnxruntime sessions for the ONNX face models (insightface, CenterFace): which execution
providers to use (CUDA only when a GPU is meant for this process) and how many threads
(inside a Ray actor: the CPUs Ray gave it)."""

from __future__ import annotations

import os

import numpy as np


def gpu_visible() -> bool:
    """Is a GPU meant for this process? In a Ray worker: Ray assigned one. Elsewhere:
    CUDA_VISIBLE_DEVICES names one, or (unset) the NVIDIA driver lists one."""
    try:
        import ray

        if ray.is_initialized() and ray.get_runtime_context().worker.mode == ray.WORKER_MODE:
            return bool(ray.get_gpu_ids())
    except Exception:  # pragma: no cover - ray missing or not a worker
        pass
    cvd = os.environ.get("CUDA_VISIBLE_DEVICES")
    if cvd is not None:
        return cvd.strip() not in ("", "-1", "NoDevFiles")
    gpus = "/proc/driver/nvidia/gpus"
    return os.path.isdir(gpus) and bool(os.listdir(gpus))


def default_providers() -> list[str]:
    """CUDA (with CPU fallback) when onnxruntime has it and a GPU is visible, else CPU."""
    import onnxruntime

    if "CUDAExecutionProvider" in onnxruntime.get_available_providers() and gpu_visible():
        return ["CUDAExecutionProvider", "CPUExecutionProvider"]
    return ["CPUExecutionProvider"]


def provider_names(providers) -> list[str]:
    return [str(p[0] if isinstance(p, (tuple, list)) else p) for p in providers]


def session_options():
    """Thread counts for onnxruntime (and LiteRT), or None for the library's default (one
    thread per core). In a Ray worker: the CPUs Ray gave the actor (one actor per CPU would
    otherwise start one thread per core each). Elsewhere: ``$OMP_NUM_THREADS`` when it is set
    to a positive integer, the cap torch and OpenMP already keep to, which onnxruntime's own
    thread pool does not read (processes that share a machine, e.g. the test suite's workers)."""
    cpus = None
    try:
        import ray

        if ray.is_initialized() and ray.get_runtime_context().worker.mode == ray.WORKER_MODE:
            cpus = ray.get_runtime_context().get_assigned_resources().get("CPU")
    except Exception:  # pragma: no cover
        cpus = None
    if not cpus:
        cpus = _omp_threads()
    if not cpus:
        return None
    import onnxruntime

    opts = onnxruntime.SessionOptions()
    opts.intra_op_num_threads = max(1, int(cpus))
    opts.inter_op_num_threads = 1
    return opts


def _omp_threads() -> int | None:
    value = os.environ.get("OMP_NUM_THREADS", "").strip()
    return int(value) if value.isdigit() and int(value) > 0 else None


def check_rgb(rgb: np.ndarray) -> np.ndarray:
    rgb = np.asarray(rgb)
    if rgb.ndim != 3 or rgb.shape[2] != 3:
        raise ValueError(f"expected an HxWx3 RGB image, got shape {rgb.shape}")
    if rgb.dtype != np.uint8:
        raise ValueError(f"expected a uint8 image, got {rgb.dtype}")
    return rgb

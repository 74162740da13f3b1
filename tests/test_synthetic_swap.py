"""synthetic-swap on real faces, with the real generator (MobileStyleGAN) and the real face mesh."""

from __future__ import annotations

import numpy as np
import pytest
from PIL import Image

from conftest import GROUP, lfw_images

pytest.importorskip("openvino")


@pytest.fixture(scope="module")
def swap(tmp_path_factory):
    from deid.anonymize.swap import SyntheticSwap
    from deid.latent.registry import load_latent_model

    try:
        gen = load_latent_model({"backend": "mobilestylegan", "cache_dir": str(tmp_path_factory.mktemp("stats")),
                                 "stats_samples": 500})
    except FileNotFoundError as exc:
        pytest.skip(f"MobileStyleGAN not installed: {exc}")
    # a small bank keeps the test short; real runs use the default (128)
    return SyntheticSwap({"bank_size": 48, "bank_dir": str(tmp_path_factory.mktemp("bank"))}, latent=gen)


@pytest.fixture(scope="module")
def tools():
    from deid.faces.dlib_backend import DlibEmbedder
    from deid.faces.registry import make_detector

    # the check's own embedder (dlib ResNet) measures identity here, as deid's check does
    return make_detector({"backend": "centerface"}), make_detector({"backend": "face-mesh"}), DlibEmbedder()


def _photos(n=6):
    return [np.asarray(Image.open(p).convert("RGB")) for p in lfw_images()[:n]]


def _main_face(det, rgb):
    faces = det.detect(rgb)
    return max(faces, key=lambda f: f.width * f.height)


def test_the_bank_holds_generated_strangers_with_their_meshes(swap):
    bank = swap.bank
    assert len(bank) == 48 and bank.crops.dtype == np.uint8 and bank.points.shape == (48, 468, 2)
    # every stranger is a different face: no two crops alike
    flat = bank.crops.reshape(len(bank), -1).astype(np.float32)
    d = np.stack([np.abs(flat - row).mean(-1) for row in flat])  # row by row: not one 48 x 48 x 307200 array
    assert (d[~np.eye(len(bank), dtype=bool)] > 5).all()


def test_pixels_outside_the_face_region_are_untouched(swap, tools):
    from deid.anonymize.swap_ops import region_polygon

    import cv2

    det, mesher, _ = tools
    for rgb in _photos(3):
        face = _main_face(det, rgb)
        out, facts = swap(rgb, [face], np.random.default_rng())
        assert facts[0].get("swapped") is True and facts[0].dp_scope == "none"
        pts = swap.mesh_of(rgb, face)
        region = np.zeros(rgb.shape[:2], np.uint8)
        cv2.fillPoly(region, [np.round(region_polygon(pts, swap.params.keep_forehead) * 16).astype(np.int32)], 1, shift=4)
        region = cv2.dilate(region, np.ones((3, 3), np.uint8))  # polygon rasterisation: one pixel of slack
        changed = np.any(out != rgb, axis=2)
        assert changed.any()
        assert not (changed & (region == 0)).any()
        assert changed[region > 0].mean() > 0.5  # the region itself is replaced


def test_grow_replaces_the_band_above_the_mouth_and_nothing_else(swap, tools):
    """``grow``: the hairline, temples and ears come from the stranger too; below the mouth the
    region stays the oval; every pixel outside the grown region keeps its value."""
    import cv2

    from deid.anonymize.swap import SyntheticSwap
    from deid.anonymize.swap_ops import eye_distance, grow_up, region_polygon

    det, _, _ = tools
    grown_swap = SyntheticSwap({**swap.params.model_dump(), "grow": 0.3}, latent=swap.latent, mesher=swap.mesher)
    for rgb in _photos(3):
        face = _main_face(det, rgb)
        out, facts = grown_swap(rgb, [face], np.random.default_rng())
        assert facts[0].get("swapped") is True
        pts = grown_swap.mesh_of(rgb, face)
        oval = np.zeros(rgb.shape[:2], np.uint8)
        cv2.fillPoly(oval, [np.round(region_polygon(pts, False) * 16).astype(np.int32)], 1, shift=4)
        grown = grow_up(oval, pts, int(round(0.3 * eye_distance(pts))))
        changed = np.any(out != rgb, axis=2)
        slack = cv2.dilate(grown, np.ones((3, 3), np.uint8))
        assert not (changed & (slack == 0)).any()             # nothing outside the grown region
        band = (grown > 0) & (cv2.dilate(oval, np.ones((5, 5), np.uint8)) == 0)
        assert band.sum() > 100 and changed[band].mean() > 0.3  # the band above the mouth is replaced
        # below the mouth line the region is the oval itself, above it the oval grown
        eyes = (pts[[33, 133]].mean(0) + pts[[263, 362]].mean(0)) / 2
        up = (eyes - pts[152]) / np.linalg.norm(eyes - pts[152])
        mouth = (pts[61] + pts[291]) / 2
        yy, xx = np.mgrid[0:rgb.shape[0], 0:rgb.shape[1]]
        side = (xx - mouth[0]) * up[0] + (yy - mouth[1]) * up[1]
        assert (grown[side < 0] == oval[side < 0]).all()
        assert (grown[side > 0] > 0).sum() > (oval[side > 0] > 0).sum()


def test_key_points_land_on_the_original_and_keep_the_stranger_outline(swap):
    """``key_points``: on real meshes (a stranger placed on another stranger's face), the five key
    points land exactly on the target's, and the outline moves less than they do."""
    import cv2

    from deid.anonymize.swap_ops import FULL_OVAL, _keys, onto_key_points

    pts = swap.bank.points.astype(np.float64)
    for i in range(0, 12, 2):
        target = pts[i + 1]
        sim, _ = cv2.estimateAffinePartial2D(pts[i].astype(np.float32), target.astype(np.float32), method=cv2.LMEDS)
        placed = pts[i] @ sim[:, :2].T + sim[:, 2]   # as synthetic-swap places a stranger (shape 0)
        moved = onto_key_points(placed, target)
        assert np.abs(_keys(moved) - _keys(target)).max() < 1e-6
        key_move = np.linalg.norm(_keys(target) - _keys(placed), axis=1).mean()
        outline_move = np.linalg.norm(moved[list(FULL_OVAL)] - placed[list(FULL_OVAL)], axis=1).mean()
        assert outline_move < 0.5 * key_move, (outline_move, key_move)


def test_identity_changes_and_pose_is_kept(swap, tools):
    from deid.anonymize.swap import SyntheticSwap
    from deid.faces.facemesh_backend import mesh_arcface5

    det, mesher, rec = tools
    # shape 1 (warped onto the original's mesh) is the pose-exact form; shape 0 (the default)
    # places the stranger's own proportions, which the attacks measure to leak less identity
    exact = SyntheticSwap({**swap.params.model_dump(), "shape": 1.0}, latent=swap.latent, mesher=swap.mesher)
    keyed = SyntheticSwap({**swap.params.model_dump(), "key_points": True}, latent=swap.latent, mesher=swap.mesher)
    dists, errs = {0: [], 1: [], "k": []}, {0: [], 1: [], "k": []}
    for rgb in _photos(12):
        face = _main_face(det, rgb)
        before = mesh_arcface5(_main_face(mesher, rgb).mesh)
        eye = np.linalg.norm(before[0] - before[1])
        located = rec.locate(rgb, [face])
        for k, method in ((0, swap), (1, exact), ("k", keyed)):
            out, _ = method(rgb, [face], np.random.default_rng())
            dists[k].append(float(rec.distance(rec.embed(rgb, located), rec.embed(out, located))[0]))
            after = mesh_arcface5(_main_face(mesher, out).mesh)
            errs[k].append(float(np.linalg.norm(before - after, axis=1).mean() / eye))
    # a different person by dlib's same-person threshold (0.6), for all but the rare draw: the bank
    # and the draw come from OS entropy, and a draw under 0.6 is what the run's identity check
    # catches. Measured on 3 fresh banks x 12 photos: 0/36 under 0.6 (default), 1/36 (key points),
    # medians 0.79-0.84; CI once drew 0.594 on the third photo. At a per-draw rate of 3%, three or
    # more of 12 under 0.6 happens in 0.5% of runs; a swap that keeps the identity fails every time.
    for k in (0, "k"):
        d = np.array(dists[k])
        assert (d < 0.6).sum() <= 2 and np.median(d) >= 0.7, (k, dists)
    assert np.median(errs[1]) <= 0.05, errs  # eyes, nose, mouth stay where they were
    assert np.median(errs[0]) <= 0.10, errs  # the nearest pose of a 48-stranger bank, own proportions
    assert np.median(errs["k"]) < np.median(errs[0]), errs  # its key points on the original's


def test_two_releases_give_two_strangers_and_keyed_gives_one(swap, tools):
    from deid.anonymize.swap import SyntheticSwap

    det, _, rec = tools
    rgb = _photos(1)[0]
    face = _main_face(det, rgb)
    runs = [swap(rgb, [face], np.random.default_rng()) for _ in range(6)]
    assert all(f[0].get("swapped") for _, f in runs), [f for _, f in runs]
    # fresh: a uniform draw among the 8 nearest poses each time, so six draws are all one
    # stranger with probability 8**-5 (3e-5); four draws (1 in 512) once failed CI by chance
    assert len({o.tobytes() for o, _ in runs}) >= 2
    keyed = SyntheticSwap({**swap.params.model_dump(), "stable": "keyed"}, latent=swap.latent, mesher=swap.mesher)
    assert keyed.bank is swap.bank  # one bank per machine and params, loaded once
    a = keyed(rgb, [face], np.random.default_rng(), keys=["subject-a"])[0]
    b = keyed(rgb, [face], np.random.default_rng(), keys=["subject-a"])[0]
    c = [keyed(rgb, [face], np.random.default_rng(), keys=[f"subject-{k}"])[0] for k in "bcdefg"]
    assert np.array_equal(a, b)
    assert any(not np.array_equal(a, x) for x in c)


def test_every_face_of_a_group_photo_is_swapped(swap, tools):
    det, _, _ = tools
    rgb = np.asarray(Image.open(GROUP / "two_people.jpg").convert("RGB"))
    faces = det.detect(rgb)
    out, facts = swap(rgb, faces, np.random.default_rng())
    assert len(facts) == len(faces) == 2 and all(f.get("swapped") for f in facts)
    for f in faces:
        x0, y0, x1, y1 = f.box
        assert np.any(out[y0:y1, x0:x1] != rgb[y0:y1, x0:x1], axis=2).mean() > 0.4


def test_a_bank_is_cached_and_reloaded(swap, tmp_path):
    from deid.anonymize.strangers import StrangerBank

    path = tmp_path / "b.npz"
    swap.bank.save(path)
    again = StrangerBank.load(path)
    assert np.array_equal(again.crops, swap.bank.crops) and np.allclose(again.points, swap.bank.points)
    assert not list(tmp_path.glob(".*tmp"))


def test_a_box_without_a_face_is_masked_not_given_a_misplaced_stranger(swap, tools):
    """The face mesh regresses 468 points on any crop; where its face-presence score says no
    face (a detector's false positive on hair, a head turned away, a part of a face), a stranger
    warped onto those points would sit beside whatever is there. Such a box is masked, and its
    facts say so (the audit's ``treatment``: mask); a real face in the same photo is swapped."""
    import dataclasses

    import cv2

    from deid.audit.rows import treatment_of

    det, _, _ = tools
    rgb = np.asarray(Image.open(lfw_images()[0]).convert("RGB"))
    face = _main_face(det, rgb)
    # beside the photo, the same photo under a heavy blur, and the detection moved onto it: the
    # mesh finds no face there (presence under 0.005 on the first 12 bundled photos)
    w = rgb.shape[1]
    canvas = np.ascontiguousarray(np.hstack([rgb, cv2.GaussianBlur(rgb, (0, 0), 12)]))
    x0, y0, x1, y1 = face.box
    ghost = dataclasses.replace(face, box=(x0 + w, y0, x1 + w, y1), landmarks5=face.landmarks5 + [w, 0],
                                mesh=None, dlib_box=None)
    assert swap.mesh_of(canvas, ghost) is None and swap.mesh_of(canvas, face) is not None
    out, facts = swap(canvas, [face, ghost], np.random.default_rng())
    assert facts[0].get("swapped") is True and treatment_of(facts[0]) == "synthetic-swap"
    assert facts[1].get("swapped") is False and facts[1].get("masked") is True and treatment_of(facts[1]) == "mask"
    assert (out[y0:y1, x0 + w:x1 + w] == 0).all()  # the mask's solid fill
    assert np.any(out[y0:y1, x0:x1] != rgb[y0:y1, x0:x1], axis=2).mean() > 0.4


def test_a_fringe_over_the_forehead_scores_low_and_such_strangers_are_not_drawn(swap, tools):
    """``forehead_clear``: the bare foreheads of real photos read as skin; the same photos with a
    dark fringe painted over the forehead band do not. With the whole oval replaced
    (``keep_forehead: false``), synthetic-swap draws only strangers whose forehead is clear
    (``min_forehead``), so no stranger's fringe or cap is pasted over the original's forehead."""
    from deid.anonymize.swap_ops import forehead_clear

    _, mesher, _ = tools
    bare = []
    for rgb in _photos(12):
        faces = mesher.detect(rgb)
        if faces:
            pts = max(faces, key=lambda f: f.width * f.height).mesh[:, :2]
            score = forehead_clear(rgb, pts)
            if score >= 0.9:
                bare.append((rgb, pts, score))
    assert len(bare) >= 4
    for rgb, pts, score in bare:
        assert forehead_clear(_paint_fringe(np.array(rgb, copy=True), pts), pts) < swap.params.min_forehead < score
    # the draw: a bank where one stranger got such a fringe; the stranger nearest to its own pose
    # is itself, unless the forehead rule leaves it out
    from deid.anonymize.strangers import StrangerBank

    crops = np.array(swap.bank.crops, copy=True)
    j = 0
    _paint_fringe(crops[j], swap.bank.points[j])
    bank = StrangerBank(crops=crops, points=swap.bank.points, fingerprint=swap.bank.fingerprint)
    assert bank.forehead[j] < swap.params.min_forehead <= np.sort(bank.forehead)[-swap.params.candidates]
    saved = swap.bank, swap.params
    try:
        swap.bank = bank
        rng = np.random.default_rng()
        for update, drawn_j in (({"candidates": 1}, False), ({"candidates": 1, "min_forehead": 0.0}, True)):
            swap.params = saved[1].model_copy(update=update)
            assert (swap.choose(bank.points[j], rng, None) == j) is drawn_j
        swap.params = saved[1].model_copy(update={"stable": "keyed"})
        keyed = {swap.choose(bank.points[0], rng, f"subject-{i}") for i in range(200)}
        assert j not in keyed and len(keyed) > len(bank) // 2
    finally:
        swap.bank, swap.params = saved


def _paint_fringe(rgb, pts):
    """Hair-coloured strands over the band between the brows and the top of the face oval: dark
    brown on light skin, light blond on dark skin (a fringe differs from the skin it covers)."""
    import cv2

    from deid.anonymize.swap_ops import eye_distance, region_polygon, skin_mask

    band = np.zeros(rgb.shape[:2], np.uint8)
    cv2.fillPoly(band, [np.round(region_polygon(pts, keep_forehead=False)).astype(np.int32)], 1)
    cv2.fillPoly(band, [np.round(region_polygon(pts, keep_forehead=True)).astype(np.int32)], 0)
    step = max(2, int(eye_distance(pts) / 8))
    strands = np.zeros_like(band)
    strands[:, ::step] = 1
    strands = cv2.dilate(strands, np.ones((1, max(1, step - 1)), np.uint8))
    light = rgb[skin_mask(pts, rgb.shape)].mean() > 110
    rgb[(band > 0) & (strands > 0)] = (45, 30, 20) if light else (235, 215, 160)
    return rgb

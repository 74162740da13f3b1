"""Directed synthesis and the ``attribute`` method, with the real generator (MobileStyleGAN), the
real attribute plug-ins and the real face mesh; small counts (the labelled set is cached under
deid's cache root, as a run caches it)."""

from __future__ import annotations

import functools
import json
import os
from pathlib import Path

import numpy as np
import pandas as pd
import pytest
import yaml
from PIL import Image

from conftest import REPO, lfw_images

pytest.importorskip("openvino")
pytest.importorskip("sklearn")

SECRET = "0123456789abcdef0123456789abcdef-test-secret"
BANK = 160  # smaller than the manifest's 256 to keep the test short; the run below uses this set too


@pytest.fixture(scope="module")
def method():
    from deid.anonymize import make_anonymizer

    try:
        return make_anonymizer("attribute", {"bank_size": BANK}, {"backend": "mobilestylegan"})
    except FileNotFoundError as exc:
        pytest.skip(f"MobileStyleGAN or an attribute plug-in is not installed: {exc}")


def test_the_card_says_what_the_directions_were_learned_from(method):
    card = method.set.card()
    assert card["generator_fingerprint"] == method.model.fingerprint and card["n_samples"] == BANK
    assert set(card["plugins"]) == {"age-gender"}  # only the plug-ins of the released attributes run
    for name in ("age", "gender"):
        a = card["attributes"][name]
        assert a["n_train"] + a["n_test"] == sum(a["counts"]) and a["n_test"] >= 40
        # w separates the plug-in's labels better than always naming the commonest side (held-out);
        # gender clearly (the age split is the harder one: 72-84% on fresh sets of 160-256)
        split = a["split"]
        majority = max(sum(a["counts"][:split]), sum(a["counts"][split:])) / sum(a["counts"])
        assert a["heldout_accuracy"] > majority, (name, a)
    # gender clearly: a one-sided binomial test of the held-out hits against the majority rate (the
    # labelled set is drawn afresh on a machine without the cache: 0.75-0.93 on sets of 160)
    from scipy.stats import binomtest

    g = card["attributes"]["gender"]
    hits = round(g["heldout_accuracy"] * g["n_test"])
    majority = max(g["counts"]) / sum(g["counts"])
    assert binomtest(hits, g["n_test"], majority, alternative="greater").pvalue < 0.01, g
    for d in method.set.directions.values():
        assert np.linalg.norm(d.normal) == pytest.approx(1.0)


def test_a_directed_edit_moves_the_plugin_in_the_intended_direction(method):
    """On fresh generated faces (not the training set): w moved +2 score-stds along a direction
    against -2: the plug-in's P(male) and expected age, run on the decoded faces, move with it."""
    from deid.anonymize.directions import conditional

    rng = np.random.default_rng(7)
    est = method.used["age-gender"]
    dirs = method.set.directions
    moves = conditional(dirs, ["age", "gender"])
    w = method.model.sample_w(24, rng, 0.7)
    wins = {"age": [], "gender": []}
    for name in wins:
        d = dirs[name]
        for wi in w:
            sides = []
            for sign in (-1.0, 1.0):
                image = method.model.decode((wi + sign * 2.0 * d.score_std * moves[name])[None])[0]
                got = method.labeller.mesher.detect(np.asarray(Image.fromarray(image).resize((512, 512))))
                if len(got) != 1:
                    break
                small = np.asarray(Image.fromarray(image).resize((512, 512)))
                a, g = est.raw(small, got)
                sides.append(float(est.ages(a)[0]) if name == "age" else float(g[0, 1]))
            if len(sides) == 2:
                wins[name].append(sides[1] > sides[0])
    for name, w_ in wins.items():
        assert len(w_) >= 18, name
        assert np.mean(w_) >= 0.8, (name, np.mean(w_))


@functools.cache
def _centerface():
    from deid.faces.registry import make_detector

    return make_detector({"backend": "centerface"})


def _faces_of(rgb):
    return [f for f in _centerface().detect(rgb) if f.width >= 40]


def test_attribute_agreement_of_ppas_and_the_plugin_on_the_released_face(method):
    """The issue's measure: the plug-in run on the released photo (at the face's box) gives the
    value PPAS released. The edit loop checks the face as it would be released (``edit_check:
    photo``), so a face the loop calls agreed reads its released values in the released photo
    exactly; measured on the 12 bundled lfw photos and reported; the issue's target is 90%."""
    photos = [np.asarray(Image.open(p).convert("RGB")) for p in lfw_images()[:16]]
    assert method.params.edit_check == "photo"
    method.trace = []
    agree = {"age": [], "gender": []}
    agreed = []
    est = method.used["age-gender"]
    try:
        for rgb in photos:
            faces = _faces_of(rgb)
            faces = [max(faces, key=lambda f: f.width * f.height)]
            start = len(method.trace)
            out, facts = method(rgb, faces, np.random.default_rng())
            if not facts[0].get("swapped"):
                continue
            t = method.trace[start]
            seen = est.estimate(out, faces)[0]
            hits = {a: a in seen and seen[a].label == t["released"][a] for a in agree}
            for a in agree:
                agree[a].append(hits[a])
            agreed.append(bool(facts[0].get("agreed")))
            if facts[0].get("agreed"):  # what the loop checked is what is released
                assert all(hits.values()), (t, {a: seen[a].label for a in seen})
    finally:
        method.trace = None
    rates = {a: float(np.mean(v)) for a, v in agree.items()}
    print(f"\nagreement on the released photo: {rates}; agreed by the edit loop: {np.mean(agreed):.2f}; n={len(agreed)}")
    assert len(agreed) >= 12
    # the loop reaches the released values in the photo for most faces: agreed 10-12 of 12 on 5 fresh
    # labelled sets of 160 (at a rate of 0.9, 5 or fewer of 12 happens in 0.05% of runs); checking the
    # decoded stranger instead, the released photo read the released age for 25-75% (CI once 25%)
    assert np.mean(agreed) >= 0.5 and rates["gender"] >= 0.75, (rates, agreed)


def test_facts_carry_names_and_epsilons_never_values(method):
    rgb = np.asarray(Image.open(lfw_images()[0]).convert("RGB"))
    faces = _faces_of(rgb)[:1]
    _, facts = method(rgb, faces, np.random.default_rng())
    f = facts[0]
    assert f.dp is None and len(f.releases) == 2 and f.scope == "attributes"
    row = f.audit_fields()
    assert row["epsilon"] == pytest.approx(4.0) and row["mechanism"] == "kary_rr" and row["delta"] == 0.0
    assert row["attributes"] == [{"name": "age", "categories": 3, "epsilon": 2.0, "mechanism": "kary_rr"},
                                 {"name": "gender", "categories": 2, "epsilon": 2.0, "mechanism": "kary_rr"}]
    values = set(method.specs["age"].values) | set(method.specs["gender"].values)
    assert not values & set(json.dumps(dict(f.extra)).replace('"', " ").split())


def test_pose_attributes_are_refused_and_the_budget_is_checked():
    from deid.anonymize.attribute import AttributeMethodParams
    from deid.config import ManifestError, manifest_from_dict

    with pytest.raises(ValueError, match="keeps the original's pose"):
        AttributeMethodParams.model_validate({"attributes": {"yaw": {"epsilon": 1}}})
    with pytest.raises(ManifestError, match="exceeds privacy.max_epsilon"):
        manifest_from_dict({"input": {"uri": "/a"}, "output": {"uri": "/b"}, "latent": {"backend": "mobilestylegan"},
                            "anonymize": {"method": "attribute", "params": {"attributes": {
                                "age": {"epsilon": 2}, "gender": {"epsilon": 2}}}},
                            "privacy": {"ledger": "/l.sqlite", "max_epsilon": 3},
                            "licences": {"accept_non_commercial": ["mobilestylegan"]}})


def test_the_manifest_runs_on_the_samples_and_charges_every_attribute(method, tmp_path, monkeypatch):
    """manifests/anonymousnet.yaml on bundled samples (the LFW photos and two group photos; all
    25 samples take ~70 s here, most of it the VOC crowds; outputs, audit and ledger in tmp):
    every face that was anonymized is charged once per attribute (kary_rr, k = 3 and 2), the
    audit lists the attributes' names and epsilons and no attribute value anywhere."""
    import shutil

    from deid.config import manifest_from_dict
    from deid.pipeline import run_job
    from deid.privacy.ledger import Ledger

    monkeypatch.setenv("DEID_SUBJECT_KEY", SECRET)
    samples = tmp_path / "samples"
    shutil.copytree(REPO / "manifests" / "samples" / "lfw", samples / "lfw")
    (samples / "group").mkdir()
    for name in ("kit_with_rose.jpg", "two_people.jpg"):
        shutil.copy(REPO / "manifests" / "samples" / "group" / name, samples / "group" / name)
    m = yaml.safe_load((REPO / "manifests" / "anonymousnet.yaml").read_text())
    m["input"]["uri"] = str(samples)
    m["output"] = {"uri": str(tmp_path / "release"), "quarantine_uri": str(tmp_path / "quarantine")}
    m["audit"] = {"uri": str(tmp_path / "audit")}
    m["privacy"] = {**m["privacy"], "ledger": str(tmp_path / "ledger.sqlite"), "subject_key_file": None,
                    "create_subject_key": False}
    m["anonymize"]["params"]["bank_size"] = BANK  # the fixture's set, learned once
    m["run"] = {"progress": False}
    res = run_job(manifest_from_dict(m), engine="local", progress=False)
    df = pd.read_parquet(res.records_uri).query("run_id == @res.run_id")
    n_inputs = sum(1 for p in samples.rglob("*") if p.suffix.lower() in (".jpg", ".png"))
    assert len(df) == n_inputs
    assert not (df.status == "failed").any(), df[df.status == "failed"].error.tolist()
    assert (df.dp_scope[df.n_faces > 0] == "attributes").all()
    charged = [f for fs in df.faces for f in fs if f["attributes"] is not None]
    assert len(charged) >= 14  # 16 here: the LFW faces and the two group photos' six
    for f in charged:
        assert [a["name"] for a in f["attributes"]] == ["age", "gender"]
        assert [a["epsilon"] for a in f["attributes"]] == [2.0, 2.0]
        assert f["epsilon"] == pytest.approx(4.0) and f["mechanism"] == "kary_rr"
        assert f["subject_spent_after"] >= 4.0 - 1e-9
    with Ledger.open(str(tmp_path / "ledger.sqlite")) as led:
        rows = led.summary()
        assert sum(r.n_charges for r in rows) == 2 * len(charged)
        assert all(r.n_reserved_uncommitted == 0 for r in rows)
    import sqlalchemy as sa

    eng = sa.create_engine(f"sqlite:///{tmp_path / 'ledger.sqlite'}")
    with eng.connect() as c:
        got = c.exec_driver_sql("SELECT mechanism, categories, epsilon, COUNT(*) FROM charges "
                                "GROUP BY mechanism, categories, epsilon").all()
    assert sorted(tuple(r) for r in got) == [("kary_rr", 2, 2.0, len(charged)), ("kary_rr", 3, 2.0, len(charged))]
    # the audit never holds a released (or estimated) value
    text = df.drop(columns=["params_json"]).to_json(date_format="iso")
    for v in (*method.specs["age"].values, "female"):
        assert v not in text, v
    released = df[df.status == "released"]
    assert len(released) >= 1 and all(Path(u.removeprefix("file://")).exists() for u in released.output_uri)
    assert not any(str(tmp_path) in str(p) for p in (REPO / "manifests" / "samples").rglob("*"))
    os.environ.pop("DEID_SUBJECT_KEY", None)


def test_the_perturbation_is_added_inside_the_swapped_region_only(method):
    """Stage IV: the same draws with and without the shipped perturbation differ only where the
    stranger was blended in, by at most its bound, and the file is in the model fingerprints."""
    from deid.anonymize.attribute import AttributeMethod, AttributeMethodParams, _files

    params = AttributeMethodParams(bank_size=BANK, test_seed=5, perturbation="builtin:uap-mobilefacenet")
    pert = AttributeMethod(params, latent=method.model, mesher=method.mesher)
    plain = AttributeMethod(params.model_copy(update={"perturbation": None}), latent=method.model,
                            mesher=method.mesher)
    assert "perturbation" in {f.name for f in _files(params)} and "perturbation" not in {f.name for f in _files(
        params.model_copy(update={"perturbation": None}))}
    n_swapped = 0
    for p in lfw_images()[:3]:
        rgb = np.asarray(Image.open(p).convert("RGB"))
        faces = _faces_of(rgb)[:1]
        seed = int(np.random.default_rng().integers(2**32))
        a, fa = plain(rgb, faces, np.random.default_rng(seed))
        b, fb = pert(rgb, faces, np.random.default_rng(seed))
        if not fa[0].get("swapped"):
            assert np.array_equal(a, b)
            continue
        n_swapped += 1
        assert fb[0].get("perturbed") is True and fa[0].get("perturbed") is None
        d = np.abs(b.astype(int) - a.astype(int)).max(axis=2)
        touched = np.any(a != rgb, axis=2)  # where the swap changed the photo
        assert d.max() <= 9 and np.count_nonzero(d) > 0.3 * np.count_nonzero(touched)
        # the feathered rim of the blend (alpha > 0 but rounded back to the photo's value) may be
        # perturbed; nothing beyond it
        from scipy.ndimage import binary_dilation

        assert not ((d > 0) & ~binary_dilation(touched, iterations=3)).any()
    assert n_swapped >= 2

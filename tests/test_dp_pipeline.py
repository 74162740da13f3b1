"""DP-Image and DeepBlur through the pipeline: charges, budgets, audit facts, trends."""

from __future__ import annotations

import shutil
from pathlib import Path

import numpy as np
import pandas as pd
import pytest
from PIL import Image

from conftest import LFW, base_manifest, lfw_images
from deid.config import ManifestError, manifest_from_dict
from deid.pipeline import run_job

SECRET = "0123456789abcdef0123456789abcdef-test-secret"


@pytest.fixture
def dp_env(monkeypatch, tmp_path):
    monkeypatch.setenv("DEID_SUBJECT_KEY", SECRET)
    return tmp_path / "ledger.sqlite"


def _dp(inp, tmp, ledger, eps=8.0, cap=100.0, subjects=None, **params):
    sections = {
        "anonymize": {"method": "dp-image", "params": {"epsilon": eps, **params}},
        "privacy": {"ledger": str(ledger), "max_epsilon": cap},
        "checks": {"on_fail": "keep", "no_face": "keep"},
    }
    if subjects:
        sections["input"] = {"subjects": str(subjects)}
    m = manifest_from_dict(base_manifest(inp, tmp, **sections))
    res = run_job(m, engine="local", progress=False)
    return res, pd.read_parquet(res.records_uri).query("run_id == @res.run_id")


def _copy_lfw(dst: Path, n: int | None = None) -> Path:
    for p in lfw_images()[:n]:
        (dst / p.parent.name).mkdir(parents=True, exist_ok=True)
        shutil.copy(p, dst / p.parent.name / p.name)
    return dst


def test_dp_manifest_needs_a_ledger_and_a_cap():
    with pytest.raises(ManifestError) as exc:
        manifest_from_dict({"input": {"uri": "/a"}, "output": {"uri": "/b"}, "anonymize": {"method": "dp-image"}})
    assert "privacy.ledger and privacy.max_epsilon required" in str(exc.value)
    with pytest.raises(ManifestError, match="exceeds privacy.max_epsilon"):
        manifest_from_dict({"input": {"uri": "/a"}, "output": {"uri": "/b"},
                            "anonymize": {"method": "dp-image", "params": {"epsilon": 5}},
                            "privacy": {"ledger": "/l.sqlite", "max_epsilon": 2}})


def test_every_release_is_charged_and_audited(tmp_path, dp_env):
    inp = _copy_lfw(tmp_path / "in", 4)
    res, df = _dp(inp, tmp_path, dp_env, eps=8.0)
    assert (df.status == "released").all() and df.n_faces.eq(1).all()
    assert (df.dp_scope == "face-latent").all() and not df.dp_test_mode.any()
    faces = [f for fs in df.faces for f in fs]
    for f in faces:
        assert f["mechanism"] == "laplace" and f["epsilon"] == pytest.approx(8.0) and f["delta"] == 0
        assert f["noise_scale"] == pytest.approx(f["sensitivity"] / 8.0)
        assert f["subject_spent_after"] == pytest.approx(8.0)  # each unlabeled source face: its own key
    names = {fp["name"] for fp in df.model_fingerprints.iloc[0]}
    assert any(n.startswith("latent:") for n in names)
    # the ledger holds exactly one committed charge per face
    from deid.privacy.ledger import Ledger

    with Ledger.open(str(dp_env)) as led:
        rows = led.summary()
    assert len(rows) == len(faces) and all(r.n_reserved_uncommitted == 0 for r in rows)
    assert sum(r.n_charges for r in rows) == len(faces)
    # re-releasing the same sources charges the same keys again
    _, df2 = _dp(inp, tmp_path / "again", dp_env, eps=8.0)
    assert [f["subject_spent_after"] for fs in df2.faces for f in fs] == pytest.approx([16.0] * len(faces))


def test_budget_exhaustion_withholds_exactly_the_right_records(tmp_path, dp_env):
    inp = _copy_lfw(tmp_path / "in")  # 4 subjects x 3 photos, labeled by subjects.csv
    subjects = LFW / "subjects.csv"
    # cap = two releases per subject: the third photo of each subject must be refused
    res, df = _dp(inp, tmp_path / "r1", dp_env, eps=4.0, cap=8.0, subjects=subjects)
    df["subject"] = [Path(u).parent.name for u in df.input_uri]
    per = df.groupby("subject").status.apply(lambda s: sorted(s.tolist()))
    assert all(v == ["budget_exhausted", "released", "released"] for v in per), per
    exhausted = df[df.status == "budget_exhausted"]
    assert exhausted.output_uri.isna().all() and all("nothing charged" in e for e in exhausted.error)
    assert res.summary["counts"]["budget_exhausted"] == 4
    # a second run: every labeled subject is spent, so the planner withholds all 12 up front
    res2, df2 = _dp(inp, tmp_path / "r2", dp_env, eps=4.0, cap=8.0, subjects=subjects)
    assert (df2.status == "budget_exhausted").all() and len(df2) == 12
    assert all("withheld" in e for e in df2.error)
    # the audit never holds names: no subject name appears anywhere in it
    audit = pd.read_parquet(res.records_uri).drop(columns=["input_uri", "error"])  # these name the file
    blob = audit.to_json(date_format="iso")
    for name in ("Andre_Agassi", "Celine_Dion", "Hamid_Karzai", "Venus_Williams"):
        assert name not in blob


def test_test_mode_is_deterministic_and_marked(tmp_path, dp_env):
    inp = _copy_lfw(tmp_path / "in", 2)
    kw = dict(eps=50.0, cap=1000.0)
    _, a = _dp(inp, tmp_path / "a", dp_env, test_seed=7, **kw)
    _, b = _dp(inp, tmp_path / "b", dp_env, test_seed=7, **kw)
    assert a.dp_test_mode.all() and (a.status == "quarantined").all()  # test noise is never released
    assert a.error.str.contains("not DP; quarantined, never released").all()
    assert not list((tmp_path / "a" / "release").rglob("*.*"))
    assert sorted(a.output_sha256) == sorted(b.output_sha256)
    _, c = _dp(inp, tmp_path / "c", dp_env, **kw)
    _, d = _dp(inp, tmp_path / "d", dp_env, **kw)
    assert (c.status == "released").all() and (d.status == "released").all()
    assert not c.dp_test_mode.any() and set(c.output_sha256).isdisjoint(d.output_sha256)


@pytest.fixture(scope="module")
def id_tools():
    """dlib's embedder and the LFW photos with their HOG faces, built once for the distance
    tests below (eight methods' settings on the same photos). No re-detection: only the
    identity distance is read."""
    from deid.audit.check import IdentityChecker
    from deid.faces.dlib_backend import DlibDetector, DlibEmbedder

    det = DlibDetector()
    photos = [np.asarray(Image.open(p).convert("RGB")) for p in lfw_images()]
    return IdentityChecker(DlibEmbedder()), [(img, det.detect(img)) for img in photos]


def _distances(method: str, params: dict, id_tools) -> float:
    from deid.anonymize import make_anonymizer

    chk, photos = id_tools
    anon = make_anonymizer(method, params, None)
    out = []
    for img, faces in photos:
        edited, _ = anon(img, faces, np.random.default_rng(0))
        out.append(chk.check(img, edited, faces)[0].id_distance)
    return float(np.mean(out))


def test_identity_distance_rises_as_epsilon_falls(id_tools):
    eps = [1e5, 1e4, 1e3, 10.0]
    d = [_distances("dp-image", {"epsilon": e, "test_seed": 1, "noise_dims": None}, id_tools) for e in eps]
    assert all(b >= a - 0.02 for a, b in zip(d, d[1:])), d  # monotone up to noise
    assert d[-1] > d[0] + 0.15, d


def test_identity_distance_rises_with_deepblur_sigma(id_tools):
    sig = [0.25, 2.0, 8.0, 1000.0]
    d = [_distances("deepblur", {"sigma": s}, id_tools) for s in sig]
    assert all(b >= a - 0.02 for a, b in zip(d, d[1:])), d
    assert d[-1] > d[0] + 0.1, d


def test_dry_run_plans_and_charges_nothing(tmp_path, dp_env):
    from deid.pipeline import dry_run
    from deid.privacy.ledger import Ledger

    inp = _copy_lfw(tmp_path / "in")
    m = manifest_from_dict(base_manifest(inp, tmp_path, input={"subjects": str(LFW / "subjects.csv")},
                                         anonymize={"method": "dp-image", "params": {"epsilon": 4.0}},
                                         privacy={"ledger": str(dp_env), "max_epsilon": 8.0}))
    plan = dry_run(m)
    assert not dp_env.exists()  # a dry run creates no ledger
    assert plan["labeled_subjects"] == 4 and plan["labeled_records"] == 12
    assert plan["subjects_exhausted_by_this_run"] == 4 and plan["labeled_records_withheld"] == 4
    run_job(m, engine="local", progress=False)
    with Ledger.open(str(dp_env)) as led:
        before = [(r.subject_key, r.n_charges) for r in led.summary()]
    plan = dry_run(m)  # a re-run resumes: the 8 committed records are skipped, the 4 withheld stay withheld
    assert plan["skipped_committed"] == 8 and plan["labeled_records_withheld"] == 4
    plan = dry_run(m, resume=False)
    assert plan["labeled_records_withheld"] == 12
    with Ledger.open(str(dp_env)) as led:
        assert [(r.subject_key, r.n_charges) for r in led.summary()] == before


def test_a_retried_record_is_charged_for_every_draw(tmp_path, dp_env):
    """A task retried after its worker died draws noise again: the second draw is charged too."""
    from deid.privacy.service import BudgetService

    svc = BudgetService(str(dp_env), 10.0, 0.0, "DEID_SUBJECT_KEY", None)
    from deid.facts import DpRelease

    charge = DpRelease(mechanism="laplace", epsilon=1.0, delta=0.0, sensitivity=2.0, noise_scale=2.0)
    first = svc.reserve("run-1", "rec-1", None, "ab" * 32, [(0, 0, 10, 10)], charge)
    again = svc.reserve("run-1", "rec-1", None, "ab" * 32, [(0, 0, 10, 10)], charge)
    assert first["ok"] and again["ok"]
    assert first["spent_after"] == [1.0] and again["spent_after"] == [2.0]


def test_latent_paste_back_only_touches_the_face_window():
    from deid.anonymize import make_anonymizer
    from deid.faces.dlib_backend import DlibDetector

    from conftest import GROUP

    img = np.asarray(Image.open(GROUP / "obama_and_biden.jpg").convert("RGB"))
    faces = DlibDetector(max_side=1000).detect(img)
    out, _ = make_anonymizer("deepblur", {"sigma": 1000}, None)(img, faces, None)
    changed = np.any(out != img, axis=2)
    ys, xs = np.nonzero(changed)
    assert changed.any()
    # every changed pixel lies near some face box
    for y, x in zip(ys[::97], xs[::97]):
        assert any(f.box[0] - f.width <= x <= f.box[2] + f.width and f.box[1] - f.height <= y <= f.box[3] + f.height
                   for f in faces)

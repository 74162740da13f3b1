"""deid evaluate / deid sweep on real labelled faces (tests/fixtures/lfw-eval: 8 identities x
3 photos from LFW), with the real dlib ResNet and the real MobileFaceNet.

One sweep (module fixture, through the CLI) runs three real jobs on the same inputs:
* blur at strength 0.002 (sigma ~0.2 px: no anonymization in effect),
* blur at strength 0.05 (weak: what the reversal attacker should undo),
* a solid mask;
and evaluates them, the aware attacker fitting on tests/fixtures/lfw-public-ref (96 public
faces, disjoint identities). The tests read what it wrote.
"""

from __future__ import annotations

import base64
import io
import json
import re
from html.parser import HTMLParser
from pathlib import Path

import jsonschema
import numpy as np
import pytest
import yaml
from hypothesis import given, settings
from hypothesis import strategies as st
from PIL import Image
from scipy.stats import binomtest
from typer.testing import CliRunner

from conftest import UPRIGHT_GATE
from deid.cli.app import app
from deid.evaluate.attacks import identify
from deid.evaluate import utility
from deid.evaluate.core import THUMB, subject_of
from deid.evaluate.models import ModelMissing, mobilefacenet_path
from deid.evaluate.sweep import SweepError, parse_param

FIX = Path(__file__).resolve().parent / "fixtures" / "lfw-eval"
PUBLIC = Path(__file__).resolve().parent / "fixtures" / "lfw-public-ref"
SUBJECTS = sorted(p.name for p in FIX.iterdir() if p.is_dir())
SCHEMA = json.loads((Path(__file__).resolve().parents[1] / "deid" / "evaluate" / "metrics.schema.json").read_text())
RECS = ("dlib-resnet128", "mobilefacenet")


@pytest.fixture(scope="module")
def swept(tmp_path_factory):
    tmp = tmp_path_factory.mktemp("sweep")
    manifest = tmp / "m.yaml"
    manifest.write_text(yaml.safe_dump({
        "input": {"uri": str(FIX), "subjects": str(FIX / "subjects.csv")},
        "output": {"uri": str(tmp / "unused")},
        "checks": {"enabled": False, "no_face": "keep", "residual_detector": UPRIGHT_GATE},
        "run": {"batch_size": 4, "progress": False},
        # one face per photo, as these assertions expect (CenterFace, the default, also finds the
        # partial faces at the photos' edges, which are masked: checks.frame_cut)
        "detect": {"backend": "dlib-hog"},
    }))
    out = tmp / "out"
    res = CliRunner().invoke(app, ["sweep", str(manifest), "--inline", "--out", str(out),
                                   "--param", "blur:anonymize.params.strength=0.002,0.05",
                                   "--param", "mask:anonymize.params.margin=0.25",
                                   "--second-detector-max", "6", "--public-ref", str(PUBLIC), "--public-n", "96",
                                   "--recognizer", "dlib-resnet128", "--recognizer", "mobilefacenet"])
    assert res.exit_code == 0, res.output
    metrics = json.loads((out / "metrics.json").read_text())
    groups = {g["label"]: g for g in metrics["groups"]}
    groups["blur"] = groups["blur strength=0.002"]
    return {"out": out, "metrics": metrics, "groups": groups, "stdout": res.output}


def test_no_anonymization_reidentifies_like_the_recognizer(swept):
    m = swept["metrics"]
    assert m["reference"]["n_records"] == 24 and m["reference"]["n_subjects"] == 8
    blur = swept["groups"]["blur"]
    for rec in RECS:
        ref = m["reference"]["recognizers"][rec]
        # both recognizers verify ~98% of LFW pairs (docs/evaluation.md); closed-set on 8 people
        assert ref["top1"] >= 0.9, (rec, ref)
        t1 = blur["privacy"][rec]["attacks"]["T1"]
        assert t1["n_probes"] == 24 and t1["n_gallery_subjects"] == 8
        assert t1["chance_top1"] == pytest.approx(1 / 8)
        assert t1["top1"] >= ref["top1"] - 0.1, (rec, t1, ref)
        assert blur["privacy"][rec]["deid_rate"] <= 0.1
        assert blur["privacy"][rec]["identity_distance"]["median"] < 0.5 * blur["privacy"][rec]["same_person_threshold"]
    assert blur["utility"]["detection_rate"]["configured"]["rate"] >= 0.9
    assert blur["utility"]["face"]["ssim"] > 0.9
    # a blur this weak leaves every face where it was: landmarks found again within 2% of the eye distance
    pose = blur["utility"]["pose"]
    assert pose["n"] + pose["n_not_found"] == 24 and pose["n"] >= 22, pose
    assert pose["median"] <= 0.02 and pose["within_5pct"] >= 0.9, pose


def test_solid_mask_drives_t1_to_chance(swept):
    mask = swept["groups"]["mask"]
    for rec in RECS:
        p = mask["privacy"][rec]
        for attack in ("T1", "T2", "T1_classifier"):
            a = p["attacks"][attack]
            k = round(a["top1"] * a["n_probes"])
            # hits are no more frequent than chance: one-sided binomial test at 0.1%
            assert binomtest(k, a["n_probes"], a["chance_top1"], alternative="greater").pvalue > 1e-3, (rec, attack, a)
        assert p["deid_rate"] >= 0.9
    u = mask["utility"]
    assert u["detection_rate"]["configured"]["rate"] == 0.0
    assert u["detection_rate"]["second"]["n"] > 0 and u["detection_rate"]["second"]["rate"] == 0.0
    assert u["detection_rate"]["second_on_originals"]["rate"] >= 0.9
    assert u["face"]["ssim"] < 0.1 and u["face"]["mse"] > 1000
    # no face is found under a solid mask, so none has a pose error
    assert u["pose"]["n"] == 0 and u["pose"]["n_not_found"] == 24 and u["pose"]["median"] is None

    # the mask edits the face region only: outside the (grown) faces the photo is as it was,
    # while the whole image is not
    assert u["outside_faces"]["ssim"] > 0.95 > u["image"]["ssim"]
    blur = swept["groups"]["blur"]["utility"]
    assert u["frechet"]["value"] > 10 * blur["frechet"]["value"]


def test_the_method_faces_rates_count_the_faces_the_audit_says_the_method_treated(swept):
    """``detection_rate.method_faces``: the faces whose audit ``treatment`` is the run's method,
    as many as the audit holds, with the detection rates of those faces."""
    import pandas as pd

    df = pd.read_parquet(swept["out"] / "audit" / "records")
    for label in ("blur", "mask"):
        g = swept["groups"][label]
        rows = df[df.run_id == g["run_id"]]
        faces = [f for fs in rows.faces for f in fs]
        assert faces and all(f["treatment"] in (g["method"], "mask", "pixelate") for f in faces)
        mine = sum(f["treatment"] == g["method"] for f in faces)
        dr = g["utility"]["detection_rate"]
        assert dr["method_faces"]["configured"]["n"] == mine
        assert dr["method_faces"]["second"]["n"] <= min(mine, dr["second"]["n"])
    # a weak blur leaves its faces for the detector; none is found under the solid mask
    assert swept["groups"]["blur"]["utility"]["detection_rate"]["method_faces"]["configured"]["rate"] >= 0.9
    assert swept["groups"]["mask"]["utility"]["detection_rate"]["method_faces"]["configured"]["rate"] == 0.0


def test_same_source_identification_without_anonymization_is_near_certain(swept):
    blur = swept["groups"]["blur"]
    for rec in RECS:
        ss = blur["privacy"][rec]["attacks"]["same_source"]
        # the probe's own source photo is in the gallery: an untouched face finds it
        assert ss["n_probes"] == 24 and ss["top1"] >= 0.95, (rec, ss)
        assert ss["chance_top1"] == pytest.approx(1 / 8)


def test_every_attack_on_a_solid_mask_is_consistent_with_chance(swept):
    mask = swept["groups"]["mask"]
    seen = set()
    for rec in RECS:
        for name, a in mask["privacy"][rec]["attacks"].items():
            if a.get("applicable") is False:   # reversal: no operator to undo for a mask
                assert name == "reversal" or rec == "dlib-resnet128", (rec, name, a)
                continue
            k = round(a["top1"] * a["n_probes"])
            assert binomtest(k, a["n_probes"], a["chance_top1"], alternative="greater").pvalue > 1e-3, (rec, name, a)
            seen.add(name)
    assert {"T1", "same_source", "T2", "T3", "T1_classifier", "aware"} <= seen


def test_reversal_undoes_a_weak_blur_and_beats_the_naive_attacker(swept):
    weak = swept["groups"]["blur strength=0.05"]["privacy"]["mobilefacenet"]["attacks"]
    rev, naive = weak["reversal"], weak["T1"]
    assert rev["applicable"] and rev["naive_top1"] == naive["top1"]
    assert set(rev["variants"]) == {"wiener-0.01", "richardson-lucy"}
    # deconvolution with the sigma the audit states gives the faces back: clearly above the naive attacker
    assert rev["top1"] >= 0.8 and rev["gain_top1"] >= 0.25, (rev["top1"], naive["top1"])
    k_rev, k_naive = round(rev["top1"] * 24), round(naive["top1"] * 24)
    assert binomtest(k_rev, 24, naive["top1"], alternative="greater").pvalue < 0.01, (k_rev, k_naive)
    # dlib ResNet is deid's own check network: the adaptive attacks run with the independent attacker only
    dlib_rev = swept["groups"]["blur strength=0.05"]["privacy"]["dlib-resnet128"]["attacks"]["reversal"]
    assert dlib_rev["applicable"] is False and "independent" in dlib_rev["why"]
    assert swept["metrics"]["adaptive"]["recognizers"] == ["mobilefacenet"]


def test_the_aware_attacker_fits_on_the_public_set_and_learns_the_blur(swept):
    m = swept["metrics"]
    assert m["adaptive"]["public_images"] == 96 and m["adaptive"]["public_fingerprint"]
    aw = swept["groups"]["blur strength=0.05"]["privacy"]["mobilefacenet"]["attacks"]["aware"]
    assert aw["applicable"] and set(aw["maps"]) == {"linear", "mlp"}
    fit = aw["fit"]
    assert fit["n_public"] >= 90 and fit["n_train"] + fit["n_holdout"] == fit["n_public"]
    # on held-out PUBLIC faces the ridge map carries a blurred embedding closer to its original
    assert fit["holdout_distance"]["linear"] < 0.9 * fit["holdout_distance_unmapped"], fit
    # and through it the weakly blurred faces are re-identified well above chance (1/8)
    assert aw["top1"] >= 0.4 and aw["same_source_top1"] >= aw["chance_top1"] * 3, aw


def test_metrics_follow_the_schema_and_hold_no_names(swept):
    m = swept["metrics"]
    jsonschema.validate(m, SCHEMA)
    assert {r["name"]: r["used_by_checks"] for r in m["recognizers"]} == {"dlib-resnet128": True, "mobilefacenet": False}
    assert m["selection"]["evaluated"] == 72 and m["selection"]["errors"] == {}
    blob = (swept["out"] / "metrics.json").read_text()
    for name in SUBJECTS:
        assert name not in blob and name.split("_")[-1] not in blob
    assert ".jpg" not in blob


class _Imgs(HTMLParser):
    def __init__(self):
        super().__init__()
        self.imgs, self.links, self.tags = [], [], []

    def handle_starttag(self, tag, attrs):
        a = dict(attrs)
        self.tags.append(tag)
        if tag == "img":
            self.imgs.append((a.get("alt", ""), a.get("src", "")))
        for k in ("href", "src"):
            if a.get(k) and not a[k].startswith("data:"):
                self.links.append(a[k])


def _decode(src: str) -> Image.Image:
    assert src.startswith("data:image/png;base64,")
    return Image.open(io.BytesIO(base64.b64decode(src.split(",", 1)[1])))


def _parse(path: Path) -> _Imgs:
    p = _Imgs()
    p.feed(path.read_text(encoding="utf-8"))
    p.close()
    return p


def test_report_is_self_contained_and_embeds_its_plots(swept):
    p = _parse(swept["out"] / "report.html")
    assert p.links == []  # nothing fetched from anywhere: readable offline
    alts = [a for a, _ in p.imgs]
    assert "privacy-utility curves" in alts and "identity distance distributions" in alts
    for alt, src in p.imgs:
        im = _decode(src)
        assert im.size[0] > 50 and im.size[1] > 50, alt
    sheets = [_decode(s) for a, s in p.imgs if a.startswith("contact sheet")]
    assert len(sheets) == 3 and all(s.size[1] > 2 * THUMB for s in sheets)  # original row + anonymized row
    assert "table" in p.tags and (swept["out"] / "sweep.png").is_file()
    html = (swept["out"] / "report.html").read_text()
    for name in SUBJECTS:
        assert name not in html


def test_evaluate_cli_latest_run_no_originals_and_a_missing_output(swept, tmp_path, caplog):
    audit = swept["out"] / "audit"
    mask_run = swept["groups"]["mask"]["run_id"]
    import pandas as pd

    df = pd.read_parquet(audit / "records").query("run_id == @mask_run")
    gone = Path(df.output_uri.iloc[0])
    gone.unlink()
    out = tmp_path / "eval"
    with caplog.at_level("WARNING", logger="deid.evaluate"):
        # the records folder, as the run summary prints it, names the same audit
        res = CliRunner().invoke(app, ["evaluate", "--audit", str(audit / "records"), "--subjects", str(FIX / "subjects.csv"),
                                       "--out", str(out), "--no-originals", "--second-detector", "none"],
                                 env={"DEID_PUBLIC_REF": ""})
    assert res.exit_code == 0, res.output
    m = json.loads((out / "metrics.json").read_text())
    jsonschema.validate(m, SCHEMA)
    assert m["run_ids"] == [mask_run]  # the latest run by default (the mask ran last)
    assert m["selection"]["errors"] == {"not_found": 1} and m["selection"]["evaluated"] == 23
    assert any(str(gone) in r.getMessage() and "cannot evaluate the output" in r.getMessage() for r in caplog.records)
    assert m["report"]["originals_included"] is False and m["detectors"]["second"] is None
    # no public reference set given: the aware attacker says so instead of a number
    aw = m["groups"][0]["privacy"]["mobilefacenet"]["attacks"]["aware"]
    assert aw["applicable"] is False and aw["top1"] is None and "--public-ref" in aw["why"]
    assert m["adaptive"]["public_images"] == 0
    p = _parse(out / "report.html")
    sheets = [_decode(s) for a, s in p.imgs if a.startswith("contact sheet")]
    assert len(sheets) == 1 and sheets[0].size[1] < 2 * THUMB  # anonymized row only
    worst = [_decode(s) for a, s in p.imgs if a == "worst case"]
    assert worst and all(w.size == (THUMB, THUMB) for w in worst)  # no original beside it
    assert "T1@1" in res.output and "report" in res.output


def test_evaluate_cli_errors_name_what_is_missing(tmp_path):
    r = CliRunner().invoke(app, ["evaluate", "--audit", str(tmp_path / "nope"), "--subjects", str(FIX / "subjects.csv"),
                                 "--out", str(tmp_path / "o")])
    assert r.exit_code == 2 and str(tmp_path / "nope") in r.output
    missing = tmp_path / "MobileFaceNet.tflite"
    with pytest.raises(ModelMissing, match=re.escape(str(missing)) + ".*make install"):
        mobilefacenet_path(missing)


def test_pose_error_follows_a_shifted_face():
    """The pose measure on real faces: a photo shifted by a few pixels moves the landmarks found on
    it by that much (known answer: shift / eye distance), up to dlib's landmark jitter between two
    detector boxes (on a turned face it can be larger: the median over photos is asserted)."""
    import cv2

    from deid.evaluate.recognizers import Landmarker
    from deid.faces.registry import make_detector

    det, lm = make_detector({"backend": "centerface", "rotations": [], "edge_pad": 0}), Landmarker()
    off = []
    for path in sorted(FIX.glob("*/*.jpg"))[:10]:
        rgb = np.asarray(Image.open(path).convert("RGB"))
        box = max((f.box for f in det.detect(rgb)), key=lambda b: (b[2] - b[0]) * (b[3] - b[1]))
        a5 = lm.geometry(rgb, box).arcface5
        eye = float(np.linalg.norm(a5[0] - a5[1]))
        same = utility.best_match([f.box for f in det.detect(rgb)], box)
        assert utility.pose_error(a5, lm.geometry(rgb, same).arcface5) == 0.0
        for dx in (6, 12):
            moved = cv2.warpAffine(rgb, np.float32([[1, 0, dx], [0, 1, 0]]), rgb.shape[1::-1],
                                   borderMode=cv2.BORDER_REPLICATE)
            again = utility.best_match([f.box for f in det.detect(moved)], box)
            assert again is not None, path.name
            off.append(abs(utility.pose_error(a5, lm.geometry(moved, again).arcface5) - dx / eye))
    assert np.median(off) <= 0.03, off


def test_identification_known_answers():
    # three subjects, two photos each, on a line: each photo's nearest other photo is its twin
    g = np.array([[0.0], [0.1], [1.0], [1.1], [2.0], [2.1]])
    subj = np.array(["a", "a", "b", "b", "c", "c"])
    src = np.arange(6)
    res = identify(g, subj, g, subj, exclude=src[:, None] == src[None, :])
    assert res["top1"] == 1.0 and res["n_probes"] == 6 and res["chance_top1"] == pytest.approx(1 / 3)
    # without excluding the probe's own photo nothing changes here, but a probe equal to another
    # subject's photo is ranked there
    probes = np.array([[1.0], [2.05]])
    res = identify(g, subj, probes, np.array(["a", "c"]))
    assert res["top1"] == 0.5 and res["top5"] == 1.0
    # identical embeddings (faces masked out entirely) score chance, not 100%
    flat = np.zeros((6, 3))
    res = identify(flat, subj, flat, subj, exclude=src[:, None] == src[None, :])
    assert res["top1"] == pytest.approx(1 / 3) and res["top5"] == 1.0
    # a probe whose subject has no other photo in the gallery is not counted
    res = identify(g[:5], subj[:5], g[4:5], subj[4:5], exclude=np.array([[False] * 4 + [True]]))
    assert res["n_probes"] == 0 and res["top1"] is None


def test_subject_by_longest_path_suffix_and_param_grammar():
    subjects = {"Ann/Ann_1.jpg": "Ann", "x/Ann/Ann_1.jpg": "other"}
    assert subject_of("/data/x/Ann/Ann_1.jpg", subjects) == "other"
    assert subject_of("s3://b/y/Ann/Ann_1.jpg", subjects) == "Ann"
    assert subject_of("/data/Ann_1.jpg", subjects) is None
    a = parse_param("pixelate:anonymize.params.blocks=16,8,4")
    assert (a.method, a.key, a.values) == ("pixelate", "anonymize.params.blocks", (16, 8, 4))
    assert parse_param("anonymize.params.sigma=1,2.5").values == (1, 2.5)
    for bad in ("anonymize.params.sigma", "=1,2", "anonymize..sigma=1", "a.b="):
        with pytest.raises(SweepError):
            parse_param(bad)


@settings(max_examples=40, deadline=None)
@given(st.integers(2, 6), st.integers(2, 4), st.integers(0, 10_000))
def test_identification_properties(n_subjects, per_subject, seed):
    rng = np.random.default_rng(seed)
    subj = np.repeat(np.arange(n_subjects).astype(str), per_subject)
    emb = rng.normal(size=(len(subj), 4))
    src = np.arange(len(subj))
    ex = src[:, None] == src[None, :]
    res = identify(emb, subj, emb, subj, exclude=ex)
    assert res["n_probes"] == len(subj) and res["n_gallery_subjects"] == n_subjects
    assert 0 <= res["top1"] <= res["top5"] <= 1
    assert res["chance_top1"] == pytest.approx(1 / n_subjects)
    # the gallery's order does not matter
    perm = rng.permutation(len(subj))
    again = identify(emb[perm], subj[perm], emb, subj, exclude=ex[:, perm])
    assert again["top1"] == res["top1"] and again["top5"] == res["top5"]
    # well-separated people are always found
    centers = rng.normal(size=(n_subjects, 4)) * 100
    tight = centers[np.repeat(np.arange(n_subjects), per_subject)] + rng.normal(size=emb.shape) * 0.01
    assert identify(tight, subj, tight, subj, exclude=ex)["top1"] == 1.0


def test_a_resumed_run_is_evaluated_over_the_rows_it_skipped(swept):
    """Re-running a job skips what an earlier run committed; evaluating the resumed run must
    see those records through their standing rows, not as 'skipped'."""
    import pyarrow as pa

    from deid.audit.schema import AUDIT_SCHEMA
    from deid.audit.writer import read_audit
    from deid.evaluate.core import rows_for_runs

    audit = swept["out"] / "audit"
    blur_run = swept["groups"]["blur"]["run_id"]
    table = read_audit(str(audit))
    blur = [r for r in table.to_pylist() if r["run_id"] == blur_run]
    resumed = "99991231T000000Z-resumed"
    skipped = [{**{k: None for k in AUDIT_SCHEMA.names}, "run_id": resumed, "record_id": r["record_id"],
                "input_uri": r["input_uri"], "status": "skipped", "output_uri": r["output_uri"],
                "output_sha256": r["output_sha256"], "resumed_from": blur_run, "method": r["method"]} for r in blur]
    both = pa.concat_tables([table, pa.Table.from_pylist(skipped, schema=AUDIT_SCHEMA)])
    got = rows_for_runs(both, [resumed])
    assert len(got) == len(blur) and {r["run_id"] for r in got} == {resumed}
    by_id = {r["record_id"]: r for r in blur}
    for r in got:
        assert r["status"] == by_id[r["record_id"]]["status"] and r["faces"] == by_id[r["record_id"]]["faces"]
    assert rows_for_runs(both, [blur_run]) == blur


def test_recognizers_and_attacks_are_registered_plugins():
    from pydantic import ValidationError

    from deid.evaluate.recognizers import FaceGeometry, Landmarker
    from deid.evaluate.registry import (ATTACKS, RECOGNIZERS, evaluation_order, make_attack, make_recognizer, metrics_key,
                                        takes_context)
    from deid.faces import make_detector
    from deid.faces.base import Recognizer

    assert RECOGNIZERS.names() == list(RECS)
    attacks_schema = SCHEMA["properties"]["groups"]["items"]["properties"]["privacy"]["additionalProperties"]
    assert [metrics_key(p.name) for p in evaluation_order(ATTACKS)] == attacks_schema["properties"]["attacks"]["required"]
    rgb = np.asarray(Image.open(sorted(FIX.glob("*/*.jpg"))[0]).convert("RGB"))
    box = max((f.box for f in make_detector({"backend": "dlib-hog"}).detect(rgb)), key=lambda b: b[2] - b[0])
    lm = Landmarker()
    for name in RECS:
        rec = make_recognizer(name, landmarker=lm)
        assert isinstance(rec, Recognizer) and rec.name == name and len(rec.fingerprint) == 64
        located = rec.locate(rgb, [box])
        assert isinstance(located[0], FaceGeometry) and rec.locate(rgb, located)[0] is located[0]
        e = rec.embed(rgb, located)
        assert e.shape == (1, rec.dim) and rec.embed(rgb, []).shape == (0, rec.dim)
        d = rec.distance(np.vstack([e, e]), np.vstack([e, e + 1.0]))
        assert d.shape == (2,) and d[0] == 0 and d[1] == pytest.approx(np.sqrt(rec.dim))
        assert all(Path(f.path).is_file() for f in RECOGNIZERS.get(name).files())
    # on its own, the check network loads only dlib's 5-point model, and embeds the same
    alone, shared = make_recognizer("dlib-resnet128"), make_recognizer("dlib-resnet128", landmarker=lm)
    assert np.array_equal(alone.embed(rgb, alone.locate(rgb, [box])), shared.embed(rgb, shared.locate(rgb, [box])))
    assert alone.locate(rgb, [box])[0].arcface5 is None
    with pytest.raises(ValidationError, match="thread"):
        make_recognizer("mobilefacenet", {"thread": 2})
    with pytest.raises(ValueError, match="known: dlib-resnet128, mobilefacenet"):
        make_recognizer("arcface")
    rng = np.random.default_rng(0)
    subj = np.repeat(np.array(["a", "b", "c"]), 4)
    orig = rng.normal(size=(12, 8)) + np.repeat(np.eye(3, 8) * 20, 4, axis=0)
    for p in ATTACKS:
        attack = make_attack(p.name)
        res = attack(orig, orig + rng.normal(size=orig.shape) * 0.01, subj, np.arange(12))
        assert {"top1", "top5", "n_probes", "chance_top1", "chance_top5"} <= set(res), p.name
        if takes_context(attack):   # the adaptive attacks need the evaluation's context, and say so
            assert res["applicable"] is False and res["top1"] is None and res["why"], p.name
        else:
            assert res["top1"] == 1.0, p.name

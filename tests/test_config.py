"""Manifest validation: unknown keys, per-method params, URIs, paths, and `deid validate`."""

from __future__ import annotations

import subprocess
import sys
from pathlib import Path

import pytest

from deid.config import ManifestError, load_manifest, manifest_from_dict

MINIMAL = {"input": {"uri": "/data/in"}, "output": {"uri": "/data/out"}}


def _errors(data) -> dict[str, str]:
    with pytest.raises(ManifestError) as exc:
        manifest_from_dict(data)
    return dict(exc.value.errors)


def test_defaults_and_derived_locations():
    m = manifest_from_dict(dict(MINIMAL))
    assert m.output.naming == "hash"
    assert m.detect.backend == "centerface"  # chosen by the recall benchmark (docs/backends.md)
    assert m.anonymize.method == "blur" and m.anonymize.params["strength"] > 0
    assert m.checks.min_identity_distance == 0.6
    assert m.audit_uri == "/data/out-audit"  # a sibling: the audit names input files, never publish it
    # quarantine is a sibling of the release, never inside it
    assert m.quarantine_uri == "/data/out-quarantine"
    assert not m.quarantine_uri.startswith(m.output.uri + "/")


def test_unknown_keys_are_errors_with_their_path():
    errs = _errors({"input": {"uri": "x", "globb": "*"}, "output": {"uri": "y"}, "colour": 1})
    assert "input.globb" in errs and "unknown key" in errs["input.globb"]
    assert "colour" in errs


def test_method_params_are_validated_per_method():
    errs = _errors({**MINIMAL, "anonymize": {"method": "pixelate", "params": {"blocks": 0, "sigma": 2}}})
    assert "anonymize.params.blocks" in errs
    assert "greater than or equal to 1" in errs["anonymize.params.blocks"]
    assert "anonymize.params.sigma" in errs
    # the same key is valid for the method it belongs to
    m = manifest_from_dict({**MINIMAL, "anonymize": {"method": "blur", "params": {"strength": 0.3}}})
    assert m.anonymize.params["strength"] == 0.3
    errs = _errors({**MINIMAL, "anonymize": {"method": "mask", "params": {"color": [0, 300, 0]}}})
    assert any(k.startswith("anonymize.params.color") for k in errs)


def test_enums_missing_fields_and_protocols():
    errs = _errors({"input": {}, "output": {"uri": "zz://bucket/x"}, "checks": {"on_fail": "nope"}})
    assert errs["input.uri"] == "required field is missing"
    assert "unknown storage protocol 'zz'" in errs["output.uri"]
    assert "checks.on_fail" in errs
    for uri in ("s3://b/p", "gs://b/p", "az://c/p", "memory://x", "file:///tmp/x"):
        assert manifest_from_dict({"input": {"uri": uri}, "output": {"uri": "/o"}}).input.uri == uri


def test_relative_paths_resolve_against_the_manifest(tmp_path: Path):
    (tmp_path / "jobs").mkdir()
    f = tmp_path / "jobs" / "job.yaml"
    f.write_text("input: {uri: ../photos}\noutput: {uri: out, format: png}\n")
    m = load_manifest(f)
    assert m.input.uri == str(tmp_path / "photos")
    assert m.output.uri == str(tmp_path / "jobs" / "out")


def test_yaml_syntax_error_names_line(tmp_path: Path):
    f = tmp_path / "bad.yaml"
    f.write_text("input:\n  uri: [unclosed\noutput: {uri: x}\n")
    with pytest.raises(ManifestError) as exc:
        load_manifest(f)
    assert "invalid YAML" in str(exc.value) and "line" in str(exc.value)


def test_config_hash_changes_with_what_runs():
    a = manifest_from_dict(dict(MINIMAL)).config_sha256()
    b = manifest_from_dict({**MINIMAL, "anonymize": {"method": "mask"}}).config_sha256()
    assert a != b and len(a) == 64


def test_cli_validate_prints_every_error_and_exits_nonzero(tmp_path: Path):
    bad = tmp_path / "bad.yaml"
    bad.write_text(
        "input: {uri: photos, glob: '*.jpg', extra_thing: 1}\n"
        "output: {uri: out, naming: secret}\n"
        "anonymize: {method: pixelate, params: {blocks: -3}}\n"
    )
    proc = subprocess.run([sys.executable, "-m", "deid.cli.app", "validate", str(bad)], capture_output=True, text=True)
    assert proc.returncode == 2
    err = proc.stderr
    assert str(bad) in err and "3 error(s)" in err
    for path in ("input.extra_thing", "output.naming", "anonymize.params.blocks"):
        assert path in err
    good = tmp_path / "good.yaml"
    good.write_text("input: {uri: photos}\noutput: {uri: out}\n")
    proc = subprocess.run([sys.executable, "-m", "deid.cli.app", "validate", str(good)], capture_output=True, text=True)
    assert proc.returncode == 0, proc.stderr
    assert "ok" in proc.stdout


def test_example_manifests_validate():
    for f in sorted((Path(__file__).resolve().parents[1] / "manifests").glob("*.yaml")):
        load_manifest(f)


def test_cross_field_checks():
    errs = _errors({"input": {"uri": "/data/x/"}, "output": {"uri": "/data/x"}})
    assert any("output.uri (/data/x) is the same location as input.uri" in v for v in errs.values())
    errs = _errors({"input": {"uri": "s3://in/photos"}, "output": {"uri": "s3://released/"}})
    assert any("quarantine_uri must be set" in v for v in errs.values())
    ok = manifest_from_dict({"input": {"uri": "s3://in/photos"}, "output": {"uri": "s3://released", "quarantine_uri": "s3://q/x"},
                             "audit": {"uri": "s3://a/x"}})
    assert ok.quarantine_uri == "s3://q/x"
    # a detector error is reported together with the other errors, at its field
    errs = _errors({"input": {"uri": "a", "bogus": 1}, "output": {"uri": "b"}, "detect": {"backend": "insightface"},
                    "licences": {"accept_non_commercial": ["insightface"]}})
    assert "input.bogus" in errs and errs["detect.model_dir"] == "required field is missing"


def test_plugin_sections_are_validated_by_the_plugin_they_name():
    """detect / latent / anonymize.params take the params of the plug-in they name: a key of
    another backend is an unknown key at its own path; an unknown name lists the known ones."""
    errs = _errors({**MINIMAL, "detect": {"backend": "centerface", "upsample": 2, "min_score": "x"}})
    assert "unknown key" in errs["detect.upsample"] and "detect.min_score" in errs
    errs = _errors({**MINIMAL, "detect": {"backend": "yolo"}, "latent": {"backend": "stylegan9"},
                    "anonymize": {"method": "swap"}})
    assert "unknown detector 'yolo'" in errs["detect.backend"] and "dlib-hog" in errs["detect.backend"]
    assert "unknown latent 'stylegan9'" in errs["latent.backend"] and "pca" in errs["latent.backend"]
    assert "unknown method 'swap'" in errs["anonymize.method"] and "blur" in errs["anonymize.method"]
    errs = _errors({**MINIMAL, "latent": {"backend": "torchscript", "encoder": "e.pt"}})
    assert {"latent.decoder", "latent.bounds", "latent.crop_size"} <= set(errs)
    m = manifest_from_dict({**MINIMAL, "detect": {"backend": "dlib-cnn", "upsample": 0}})
    assert (m.detect.backend, m.detect.upsample, m.detect.landmarks) == ("dlib-cnn", 0, 5)
    dumped = m.model_dump(mode="json")
    assert dumped["detect"]["upsample"] == 0 and dumped["latent"]["backend"] == "pca"
    assert manifest_from_dict(dumped).config_sha256() == m.config_sha256()


def test_non_commercial_weights_need_the_users_acknowledgement():
    """insightface's model packs are licensed for non-commercial research only: a job that uses
    them must say so, by name; the acknowledgement is part of the hashed config."""
    job = {**MINIMAL, "detect": {"backend": "insightface", "model_dir": "/models/buffalo_l"}}
    errs = _errors(job)
    msg = " ".join(errs.values())
    assert "insightface" in msg and "non-commercial" in msg and "licences.accept_non_commercial" in msg
    ok = manifest_from_dict({**job, "licences": {"accept_non_commercial": ["insightface"]}})
    assert [p.name for _, p in ok.plugins_used()] == ["insightface", "blur", "centerface"]  # + the gate
    assert ok.config_sha256() != manifest_from_dict({**MINIMAL, "detect": job["detect"],
                                                     "licences": {"accept_non_commercial": ["insightface", "x"]}}).config_sha256()
    # a plug-in with commercial-friendly weights needs nothing
    assert manifest_from_dict({**MINIMAL, "detect": {"backend": "centerface"}}).licences.accept_non_commercial == []


def test_locations_never_overlap_after_resolving_links_dots_and_prefixes(tmp_path):
    """Input, release, quarantine and audit are compared as the storage sees them."""
    inp = tmp_path / "in"
    inp.mkdir()
    (tmp_path / "alias").symlink_to(inp)
    rel = str(tmp_path / "rel")
    cases = {
        "output.uri": {"output": {"uri": str(tmp_path / "alias")}},                      # a symlink to the input
        "output.uri ": {"output": {"uri": str(tmp_path / "x" / ".." / "in" / "out")}},   # .. back into the input
        "output.quarantine_uri": {"output": {"uri": rel, "quarantine_uri": f"file://{rel}/q/"}},
        "audit.uri": {"output": {"uri": rel}, "audit": {"uri": rel + "//_audit"}},
    }
    for field, sections in cases.items():
        errs = _errors({"input": {"uri": str(inp)}, **sections})
        msg = " ".join(errs.values())
        assert field.strip() in msg and ("overlaps" in msg or "same location" in msg), (field, msg)
    errs = _errors({"input": {"uri": "s3://b/photos"}, "output": {"uri": "s3a://b/photos/./out/"}})
    assert "overlaps input.uri" in " ".join(errs.values())
    # prefixes split at / only; other buckets and siblings are apart
    ok = manifest_from_dict({"input": {"uri": "s3://b/photos"}, "output": {"uri": "s3://b/photos-out"}})
    assert ok.audit_uri == "s3://b/photos-out-audit" and ok.quarantine_uri == "s3://b/photos-out-quarantine"
    errs = _errors({"input": {"uri": "s3://in/p"}, "output": {"uri": "s3://released", "quarantine_uri": "s3://q/x"}})
    assert "audit.uri must be set" in " ".join(errs.values())


def test_the_complete_example_of_docs_manifest_is_the_demo_with_its_defaults_written_out(tmp_path):
    """docs/manifest.md's complete example validates to the same manifest as manifests/demo.yaml."""
    import re

    from conftest import REPO
    from deid.config import load_manifest

    doc = (REPO / "docs" / "manifest.md").read_text()
    block = re.search(r"## Complete example.*?```yaml\n(.*?)```", doc, re.S).group(1)
    example = REPO / "manifests" / f".doc-example-{tmp_path.name}.yaml"  # beside demo.yaml: same relative paths
    try:
        example.write_text(block)
        written_out = load_manifest(example)
    finally:
        example.unlink(missing_ok=True)
    demo = load_manifest(REPO / "manifests" / "demo.yaml")
    assert written_out.model_dump(mode="json") == demo.model_dump(mode="json")
    assert written_out.config_sha256() == demo.config_sha256()

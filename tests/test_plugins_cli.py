"""``deid plugins`` through the real command line, and the plug-in tables of docs/manifest.md
against the registry. (Import cycles, the CLI's included: tests/test_architecture.py.)"""

from __future__ import annotations

import json
import os
import subprocess
import sys
from pathlib import Path

import pytest

from deid.cli.plugins import WRITE_DOCS, markdown_tables, render_docs
from deid.plugins import KINDS, all_plugins

ROOT = Path(__file__).resolve().parents[1]


def _deid(*args: str) -> subprocess.CompletedProcess:
    return subprocess.run([sys.executable, "-m", "deid.cli.app", *args], capture_output=True, text=True,
                          cwd=ROOT, timeout=300, env={**os.environ, "COLUMNS": "100"})


def _words(text: str) -> str:
    return " ".join(text.split())


def test_manifest_doc_tables_are_the_registry():
    doc = ROOT / "docs" / "manifest.md"
    text = doc.read_text(encoding="utf-8")
    assert render_docs(text) == text, f"docs/manifest.md: the plug-in tables are stale; run {WRITE_DOCS}"
    tables = markdown_tables()
    assert set(tables) == {"detector", "latent", "method"}
    for kind, table in tables.items():
        for p in (p for p in all_plugins() if p.kind == kind):
            assert f"| `{p.name}` |" in table
            for f in p.params.model_fields:
                assert f"| `{f}` |" in table, (kind, p.name, f)


def test_render_docs_names_a_missing_block():
    with pytest.raises(ValueError, match="plugins:detector"):
        render_docs("no markers here")


def test_plugins_lists_every_plugin_with_its_licences():
    res = _deid("plugins")
    assert res.returncode == 0, res.stderr
    out = res.stdout
    flat = _words(out)
    plugins = all_plugins()
    assert {p.kind for p in plugins} == set(KINDS)
    for kind in KINDS:
        assert any(line.startswith(f"{kind} (") for line in out.splitlines()), kind
    for p in plugins:
        assert f"  {p.name}" in out, p.name
        assert _words(p.licence.code) in flat and _words(p.licence.weights or "none") in flat, p.name
        for f in p.params.model_fields:
            assert f"    {f} " in out, (p.name, f)
    # a plug-in's first line carries the flag exactly when its weights are non-commercial
    first = {line.split()[0].rstrip(":"): line for line in out.splitlines() if line[:2] == "  " and line[2] != " "}
    assert set(first) == {p.name for p in plugins}
    for p in plugins:
        assert ("NON-COMMERCIAL" in first[p.name]) == p.licence.non_commercial, first[p.name]
    assert "NON-COMMERCIAL" in first["insightface"]
    assert max(len(line) for line in out.splitlines()) <= 100


def test_plugins_json_is_every_declaration():
    res = _deid("plugins", "--json")
    assert res.returncode == 0, res.stderr
    got = json.loads(res.stdout)
    assert got == json.loads(json.dumps([p.describe() for p in all_plugins()], default=str))
    by_name = {(d["kind"], d["name"]): d for d in got}
    assert by_name[("detector", "insightface")]["licence"]["non_commercial"] is True
    assert by_name[("detector", "dlib-hog")]["licence"]["non_commercial"] is False
    assert {("recognizer", "dlib-resnet128"), ("recognizer", "mobilefacenet"), ("attack", "T1"),
            ("attack", "T1-classifier")} <= set(by_name)
    for d in got:
        assert d["licence"]["code"] and isinstance(d["params"], list)


def test_plugins_one_kind_and_an_unknown_kind():
    res = _deid("plugins", "--kind", "detector", "--json")
    assert res.returncode == 0 and {d["kind"] for d in json.loads(res.stdout)} == {"detector"}
    res = _deid("plugins", "--kind", "recognizer")
    assert res.returncode == 0 and "mobilefacenet" in res.stdout and "dlib-hog" not in res.stdout
    res = _deid("plugins", "--kind", "detectors")
    assert res.returncode == 2 and "detector, latent, method, recognizer, attack" in res.stderr

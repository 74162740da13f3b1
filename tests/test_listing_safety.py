"""What the listing refuses, and why: names that are not UTF-8, Unicode twins, symbolic links
that lead out of the input folder; and manifests whose YAML aliases would explode.

Real files on disk (bytes names, NFC/NFD twins, real links), real runs on the in-process
engine, the real command line."""

from __future__ import annotations

import hashlib
import os
import shutil
import subprocess
import sys
import time
import unicodedata
from pathlib import Path

import pandas as pd
import pyarrow.parquet as pq
import pytest
from conftest import REPO, base_manifest, lfw_images
from typer.testing import CliRunner

from deid.config import ManifestError, load_manifest, manifest_from_dict
from deid.io.listing import discover, record_id_for
from deid.pipeline import dry_run, run_job


def _run(inp: Path, tmp: Path, **sections) -> tuple:
    m = manifest_from_dict(base_manifest(inp, tmp, checks={"no_face": "keep"}, **sections))
    result = run_job(m, engine="local", progress=False)
    df = pd.read_parquet(result.records_uri)
    df = df[df.run_id == result.run_id].reset_index(drop=True)
    assert len(df) == result.summary["inputs"] == result.summary["audit_rows"]  # one row per input
    assert df.record_id.is_unique
    return result, df


def _outputs(tmp: Path) -> list[Path]:
    return [p for d in ("release", "quarantine") if (tmp / d).exists() for p in (tmp / d).rglob("*") if p.is_file()]


def _sha(path) -> str:
    return hashlib.sha256(Path(path).read_bytes()).hexdigest()


# ============================================================================ names
def test_a_name_that_is_not_utf8_is_one_failed_row_and_the_run_goes_on(tmp_path):
    imgs = lfw_images()
    inp = tmp_path / "in"
    inp.mkdir()
    shutil.copy(imgs[0], inp / "good.jpg")
    raw = os.fsencode(inp)
    (Path(os.fsdecode(raw + b"/caf\xe9.jpg"))).write_bytes(imgs[1].read_bytes())   # latin-1 bytes: not UTF-8
    os.mkdir(raw + b"/d\xff")                                                      # a folder named so, too
    Path(os.fsdecode(raw + b"/d\xff/x.jpg")).write_bytes(imgs[2].read_bytes())
    (inp / "caf\\xe9.jpg").write_bytes(imgs[3].read_bytes())  # a real file spelled like the escape
    assert len(os.listdir(raw)) == 4

    result, df = _run(inp, tmp_path)
    by_uri = df.groupby("input_uri")
    assert result.summary["counts"]["failed"] == 2 and result.summary["counts"]["released"] == 2
    bad = df[df.error_code == "bad_name"].set_index("input_uri")
    assert sorted(bad.index) == [str(inp / "caf\\xe9.jpg"), str(inp / "d\\xff" / "x.jpg")]
    for uri, row in bad.iterrows():
        assert row.status == "failed" and row.error.startswith(uri) and "not valid UTF-8" in row.error
        assert pd.isna(row.input_sha256) and pd.isna(row.output_uri)  # never read, nothing written
    # the escaped name and the real file spelled like it are two records, told apart by their bytes
    twins = by_uri.get_group(str(inp / "caf\\xe9.jpg"))
    assert sorted(twins.status) == ["failed", "released"]
    assert set(twins.record_id) == {record_id_for(os.fsdecode(b"caf\xe9.jpg")), record_id_for("caf\\xe9.jpg")}
    assert record_id_for(os.fsdecode(b"caf\xe9.jpg")) == hashlib.sha256(b"caf\xe9.jpg").hexdigest()[:32]
    assert len(_outputs(tmp_path)) == 2

    # resume: the refusal is judged again (a fresh failed row), the released records are skipped
    again, df2 = _run(inp, tmp_path)
    assert again.summary["counts"]["skipped"] == 2 and again.summary["counts"]["failed"] == 2
    assert sorted(df2[df2.status == "failed"].error_code) == ["bad_name", "bad_name"]


def test_a_bad_name_survives_progress_mirror_naming_and_the_cli(tmp_path):
    inp = tmp_path / "in"
    inp.mkdir()
    shutil.copy(lfw_images()[0], inp / "a.jpg")
    Path(os.fsdecode(os.fsencode(inp) + b"/\x80\x81.png")).write_bytes(lfw_images()[1].read_bytes())
    (tmp_path / "job.yaml").write_text(
        "input: {uri: in}\noutput: {uri: release, naming: mirror}\naudit: {uri: audit}\n"
        "checks: {no_face: keep}\nrun: {engine: local, batch_size: 1, progress: true}\n")
    env = {**os.environ, "PYTHONPATH": str(REPO)}
    proc = subprocess.run([sys.executable, "-m", "deid.cli.app", "run", str(tmp_path / "job.yaml")],
                          capture_output=True, text=True, env=env, timeout=300, check=False)
    assert proc.returncode == 0, proc.stderr[-3000:]
    assert "released 1, failed 1" in proc.stdout and "Traceback" not in proc.stderr
    df = pd.read_parquet(tmp_path / "audit" / "records")
    row = df[df.error_code == "bad_name"].iloc[0]
    assert row.input_uri == str(inp / "\\x80\\x81.png")
    assert [p.name for p in (tmp_path / "release").iterdir()] == ["a.jpg"]


def test_unicode_twins_are_a_name_collision_under_mirror_naming(tmp_path):
    nfc, nfd = unicodedata.normalize("NFC", "café"), unicodedata.normalize("NFD", "café")
    assert nfc != nfd
    inp = tmp_path / "in"
    inp.mkdir()
    imgs = lfw_images()
    (inp / f"{nfc}.jpg").write_bytes(imgs[0].read_bytes())
    (inp / f"{nfd}.jpg").write_bytes(imgs[1].read_bytes())
    shutil.copy(imgs[2], inp / "other.jpg")
    if len(os.listdir(inp)) != 3:
        pytest.skip("this filesystem normalises names: the twins cannot both exist")
    _, df = _run(inp, tmp_path, output={"naming": "mirror"})
    clash = df[df.error_code == "name_collision"]
    assert sorted(clash.input_uri) == sorted([str(inp / f"{nfc}.jpg"), str(inp / f"{nfd}.jpg")])
    assert all("Unicode normalisation" in e for e in clash.error)
    assert [p.name for p in (tmp_path / "release").iterdir()] == ["other.jpg"]  # neither twin written
    # hashed names are computed from the bytes: the twins get two outputs, nothing collides
    tmp2 = tmp_path / "hashed"
    _, df2 = _run(inp, tmp2)
    assert (df2.status == "released").all() and df2.output_uri.nunique() == 3


# ============================================================================ symbolic links
@pytest.fixture
def linked(tmp_path):
    """in/: a photo, a link to it (inside), a link to an outside photo, a folder link to an
    outside folder, a folder link inside, a loop back to in/, a link to /dev/zero."""
    imgs = lfw_images()
    inp, outside = tmp_path / "in", tmp_path / "elsewhere"
    (inp / "sub").mkdir(parents=True)
    (outside / "album").mkdir(parents=True)
    shutil.copy(imgs[0], inp / "sub" / "own.jpg")
    shutil.copy(imgs[1], outside / "secret.jpg")
    shutil.copy(imgs[2], outside / "album" / "a.jpg")
    os.symlink("sub/own.jpg", inp / "inside-link.jpg")
    os.symlink(outside / "secret.jpg", inp / "outside-link.jpg")
    os.symlink("../elsewhere/album", inp / "album-link")
    os.symlink("sub", inp / "sub-link")
    os.symlink("..", inp / "sub" / "loop")
    os.symlink("/dev/zero", inp / "zero.jpg")
    return tmp_path, inp, outside


def _by_rel(df, inp: Path) -> pd.DataFrame:
    df = df.copy()
    df["rel"] = [os.path.relpath(u, inp) for u in df.input_uri]
    return df.set_index("rel")


def test_links_outside_the_input_are_refused_by_default(linked):
    tmp, inp, outside = linked
    result, df = _run(inp, tmp)
    rows = _by_rel(df, inp)
    assert sorted(rows.index) == ["album-link", "inside-link.jpg", "outside-link.jpg", "sub-link/own.jpg",
                                  "sub/own.jpg", "zero.jpg"]  # the loop is not walked again
    for rel, target in (("outside-link.jpg", outside / "secret.jpg"), ("album-link", outside / "album"),
                        ("zero.jpg", "/dev/zero")):
        r = rows.loc[rel]
        assert (r.status, r.error_code) == ("failed", "symlink_outside"), rel
        assert r.input_target == str(target) and r.error.startswith(r.input_uri) and "outside input.uri" in r.error
        assert pd.isna(r.input_sha256) and pd.isna(r.output_uri)
    assert "its files are not listed" in rows.loc["album-link", "error"]
    # links inside are followed; the audit says where the bytes came from
    for rel in ("inside-link.jpg", "sub-link/own.jpg"):
        assert rows.loc[rel, "status"] == "released"
        assert rows.loc[rel, "input_target"] == str(inp / "sub" / "own.jpg")
        assert rows.loc[rel, "input_sha256"] == _sha(inp / "sub" / "own.jpg")
    assert pd.isna(rows.loc["sub/own.jpg", "input_target"])  # no link on its way
    # nothing from outside was read: no input hash of an outside photo, 3 outputs for 3 releases
    assert not {_sha(outside / "secret.jpg"), _sha(outside / "album" / "a.jpg")} & set(df.input_sha256.dropna())
    assert len(_outputs(tmp)) == result.summary["counts"]["released"] == 3


def test_follow_symlinks_all_follows_everything_and_none_refuses_every_link(linked):
    tmp, inp, outside = linked
    _, df = _run(inp, tmp / "all", input={"follow_symlinks": "all"})
    rows = _by_rel(df, inp)
    assert rows.loc["outside-link.jpg", "status"] == "released"
    assert rows.loc["outside-link.jpg", "input_target"] == str(outside / "secret.jpg")
    assert rows.loc["outside-link.jpg", "input_sha256"] == _sha(outside / "secret.jpg")
    assert rows.loc["album-link/a.jpg", "input_target"] == str(outside / "album" / "a.jpg")
    assert rows.loc["album-link/a.jpg", "status"] == "released"
    # followed, /dev/zero is still refused from its stat before it is opened
    assert rows.loc["zero.jpg", "error_code"] == "not_a_file"

    _, df = _run(inp, tmp / "none", input={"follow_symlinks": "none"})
    rows = _by_rel(df, inp)
    links = ["album-link", "inside-link.jpg", "outside-link.jpg", "sub-link", "sub/loop", "zero.jpg"]
    assert sorted(rows.index) == sorted(links + ["sub/own.jpg"])
    assert set(rows.loc[links, "error_code"]) == {"symlink"}
    assert rows.loc["sub/own.jpg", "status"] == "released"
    assert rows.loc["sub-link", "input_target"] == str(inp / "sub")


def test_folder_links_and_their_rows_follow_the_globs(linked):
    tmp, inp, _ = linked
    out = str(tmp / "release")
    m = manifest_from_dict({"input": {"uri": str(inp), "glob": "sub/**"}, "output": {"uri": out}})
    assert discover(m).column("rel_path").to_pylist() == ["sub/own.jpg"]  # album-link cannot hold a match
    m = manifest_from_dict({"input": {"uri": str(inp), "glob": "album-link/*.jpg"}, "output": {"uri": out}})
    t = discover(m)
    assert t.column("rel_path").to_pylist() == ["album-link"]
    assert t.column("listing_error").to_pylist() == ["symlink_outside"]


def test_a_fixed_link_is_processed_on_resume_and_the_dry_run_counts_refusals(linked):
    tmp, inp, outside = linked
    m = manifest_from_dict(base_manifest(inp, tmp, checks={"no_face": "keep"}))
    plan = dry_run(m)
    assert plan["records"] == 6 and plan["refused"] == 3 and plan["to_process"] == 3
    _run(inp, tmp)
    (inp / "outside-link.jpg").unlink()
    shutil.copy(outside / "secret.jpg", inp / "outside-link.jpg")  # the fix: the file, at the link's path
    result, df = _run(inp, tmp)
    rows = _by_rel(df, inp)
    assert rows.loc["outside-link.jpg", "status"] == "released"  # judged again, not skipped
    assert pd.isna(rows.loc["outside-link.jpg", "input_target"])
    assert result.summary["counts"]["skipped"] == 3
    assert set(rows.loc[["album-link", "zero.jpg"], "error_code"]) == {"symlink_outside"}


def test_audit_parts_without_the_input_target_column_still_read_and_resume(linked):
    """An audit written before input_target existed: read with the new schema, the column is null."""
    from deid.audit import read_audit

    tmp, inp, _ = linked
    first, _ = _run(inp, tmp)
    for part in (tmp / "audit" / "records").glob("*.parquet"):
        t = pq.read_table(part)
        pq.write_table(t.drop_columns(["input_target"]), part)
    old = read_audit(str(tmp / "audit"), run_id=first.run_id)
    assert "input_target" in old.column_names and old.column("input_target").null_count == old.num_rows
    again, df = _run(inp, tmp)
    assert again.summary["counts"]["skipped"] == 3
    both = read_audit(str(tmp / "audit")).to_pandas()  # old and new parts together, the exact schema
    assert len(both) == 2 * len(df)
    new = both[both.run_id == again.run_id].set_index("error_code")
    assert new.loc["symlink_outside", "input_target"].notna().all()
    assert both[both.run_id == first.run_id].input_target.isna().all()


def test_a_subfolder_that_cannot_be_listed_is_a_failed_row_not_a_silent_gap():
    """root lists every folder, so the listing runs in a child that drops to uid 65534 (as
    root) or stays the same user (otherwise), as tests/test_hostile_volume.py does."""
    import json
    import tempfile

    folder = Path(tempfile.mkdtemp(prefix="deid-list-", dir="/tmp"))
    try:
        folder.chmod(0o755)
        (folder / "in" / "locked").mkdir(parents=True)
        (folder / "in").chmod(0o755)
        shutil.copy(lfw_images()[0], folder / "in" / "a.jpg")
        (folder / "in" / "a.jpg").chmod(0o644)
        shutil.copy(lfw_images()[1], folder / "in" / "locked" / "b.jpg")
        (folder / "in" / "locked").chmod(0)
        m = manifest_from_dict({"input": {"uri": str(folder / "in")}, "output": {"uri": str(folder / "out")}})
        r, w = os.pipe()
        pid = os.fork()
        if pid == 0:  # child: list as an unprivileged user, report, exit without cleanup
            os.close(r)
            try:
                if os.geteuid() == 0:
                    os.setgid(65534)
                    os.setuid(65534)
                msg = json.dumps(discover(m).select(["rel_path", "listing_error", "listing_message"]).to_pylist())
            except BaseException as exc:  # noqa: BLE001
                msg = json.dumps(f"{type(exc).__name__}: {exc}")
            os.write(w, msg.encode())
            os._exit(0)
        os.close(w)
        with os.fdopen(r) as f:
            rows = json.loads(f.read())
        os.waitpid(pid, 0)
        assert isinstance(rows, list), rows
        assert [(x["rel_path"], x["listing_error"]) for x in rows] == [("a.jpg", None), ("locked", "read_error")]
        assert rows[1]["listing_message"].startswith(f"{folder / 'in' / 'locked'}: cannot list this folder (Permission denied)")
    finally:
        (folder / "in" / "locked").chmod(0o755)
        shutil.rmtree(folder, ignore_errors=True)


# ============================================================================ YAML aliases
def _bomb(path: Path, levels: int = 9) -> Path:
    lines = ["input:", "  uri: photos", "  storage_options:", "    l0: &l0 [lol,lol,lol,lol,lol,lol,lol,lol,lol]"]
    lines += [f"    l{i}: &l{i} [" + ",".join([f"*l{i - 1}"] * 9) + "]" for i in range(1, levels)]
    path.write_text("\n".join(lines) + "\noutput: {uri: out}\n")
    return path


def test_an_alias_bomb_is_refused_by_validate_and_run_with_file_and_line(tmp_path):
    from deid.cli.app import app

    bomb = _bomb(tmp_path / "bomb.yaml")
    assert bomb.stat().st_size < 600  # ~9**9 = 387 million strings once expanded
    runner = CliRunner()
    for args in (["validate", str(bomb)], ["run", str(bomb), "--no-progress"]):
        t = time.perf_counter()
        res = runner.invoke(app, args)
        assert time.perf_counter() - t < 5
        assert res.exit_code == 2, res.output
        assert str(bomb) in res.output and "line 8, column 14" in res.output and "alias" in res.output
        assert "MemoryError" not in res.output and "Traceback" not in res.output
    assert not (tmp_path / "out").exists()
    with pytest.raises(ManifestError, match="aliases expand to more than"):
        load_manifest(bomb)


_PEAK = ("import resource, subprocess, sys; r = subprocess.run(sys.argv[1:], capture_output=True, text=True); "
         "sys.stderr.write(r.stderr); print(r.returncode, resource.getrusage(resource.RUSAGE_CHILDREN).ru_maxrss)")


def test_the_refusal_costs_no_memory_in_a_real_process(tmp_path):
    """``deid validate`` and ``deid run`` as real processes: refused (exit 2) at their usual
    footprint; expanding the bomb would need tens of GB (it died of MemoryError before)."""
    bomb = _bomb(tmp_path / "bomb.yaml")
    for cmd in ("validate", "run"):
        proc = subprocess.run([sys.executable, "-c", _PEAK, sys.executable, "-m", "deid.cli.app", cmd, str(bomb)],
                              check=False, capture_output=True, text=True, timeout=60, env={**os.environ, "PYTHONPATH": str(REPO)})
        code, peak_kib = map(int, proc.stdout.split())
        assert code == 2 and "aliases expand" in proc.stderr, proc.stderr[-2000:]
        assert peak_kib < 500_000, (cmd, peak_kib)  # measured: validate ~48 MB, run ~98 MB


def test_a_recursive_alias_is_refused_and_ordinary_aliases_load(tmp_path):
    rec = tmp_path / "rec.yaml"
    rec.write_text("input:\n  uri: photos\n  storage_options: &a {x: [1, *a]}\noutput: {uri: out}\n")
    with pytest.raises(ManifestError, match=r"line 3, column 31: alias \*a refers to the node that contains it"):
        load_manifest(rec)
    ok = tmp_path / "ok.yaml"
    ok.write_text("input: {uri: photos, storage_options: &opts {anon: true, client_kwargs: {region_name: x}}}\n"
                  "output: {uri: out, storage_options: *opts}\n"
                  "audit: {uri: audit, storage_options: {<<: *opts, anon: false}}\n")
    m = load_manifest(ok)
    assert m.output.storage_options == m.input.storage_options == {"anon": True, "client_kwargs": {"region_name": "x"}}
    assert m.audit.storage_options == {"anon": False, "client_kwargs": {"region_name": "x"}}
    assert len(m.config_sha256()) == 64

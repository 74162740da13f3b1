"""Every kind of hostile input at once, through the real Ray pipeline (issue 4, item 6).

One run over all of tests/hostile.py's KINDS (31 bad kinds, 25 odd-but-valid ones) mixed
with 20 good face photos: every bad file gets a ``failed`` row with its own error code,
every odd and good file is released, no record is lost and no actor dies. The 500-image
volume run with the throughput comparison is bench/hostile.py.
"""

from __future__ import annotations

import os
import shutil
import subprocess
import sys
import tempfile
import textwrap
import time
from pathlib import Path

import pandas as pd
import pytest
from PIL import Image, ImageOps

from conftest import REPO, base_manifest, lfw_images
from deid.config import manifest_from_dict
from deid.io.decode import DecodeError, read_input
from deid.pipeline import run_job
from hostile import BAD_KINDS, KINDS, ODD_KINDS, write_kinds

N_GOOD = 20


def _good_photos(folder: Path) -> list[str]:
    """20 real face photos: the 12 bundled LFW images and 8 mirrored, re-encoded ones."""
    folder.mkdir(parents=True, exist_ok=True)
    names = []
    src = lfw_images()
    for p in src:
        shutil.copy(p, folder / p.name)
        names.append(p.name)
    for p in src[: N_GOOD - len(src)]:
        name = f"mirror-{p.stem}.jpg"
        ImageOps.mirror(Image.open(p)).save(folder / name, "JPEG", quality=88)
        names.append(name)
    return names


@pytest.fixture(scope="module")
def volume_run(tmp_path_factory, ray_local):
    tmp = tmp_path_factory.mktemp("hostile-volume")
    inp = tmp / "in"
    kinds = write_kinds(inp / "hostile")
    good = _good_photos(inp / "good")
    m = manifest_from_dict(base_manifest(inp, tmp, checks={"enabled": False, "no_face": "keep"},
                                         run={"batch_size": 4, "actors": 2}))
    started_ms = time.time() * 1000.0
    result = run_job(m, engine="ray", progress=False)
    df = pd.read_parquet(result.records_uri)
    df.attrs["started_ms"] = started_ms
    df["name"] = [Path(u).name for u in df.input_uri]
    df["folder"] = [Path(u).parent.name for u in df.input_uri]
    return kinds, good, result, df


def test_kinds_catalogue_is_broad():
    assert len(BAD_KINDS) >= 20
    assert len(set(BAD_KINDS.values())) >= 8  # distinct, specific codes
    assert len(ODD_KINDS) >= 15


def test_every_input_has_exactly_one_row_and_none_is_lost(volume_run):
    kinds, good, result, df = volume_run
    assert len(df) == len(kinds) + len(good) == result.summary["inputs"] == result.summary["audit_rows"]
    assert df.record_id.is_unique
    assert not (df.error_code.isin(["lost", "internal_error"])).any(), df[df.error_code.isin(["lost", "internal_error"])][["name", "error"]]
    assert result.summary["aborted"] is None


def test_every_bad_kind_fails_with_its_specific_code(volume_run):
    _, _, _, df = volume_run
    hostile = df[df.folder == "hostile"].set_index("name")
    got = {name: hostile.loc[name, "error_code"] for name in BAD_KINDS}
    assert got == BAD_KINDS
    for name in BAD_KINDS:
        row = hostile.loc[name]
        assert row.status == "failed"
        assert row.input_uri in row.error  # the message names the file ...
        assert len(row.error) > len(row.input_uri) + 10  # ... and says why
        assert pd.isna(row.output_uri) and pd.isna(row.output_sha256)


def test_odd_but_valid_kinds_are_released(volume_run):
    _, _, _, df = volume_run
    hostile = df[df.folder == "hostile"].set_index("name")
    for name, kind in ODD_KINDS.items():
        row = hostile.loc[name]
        assert row.status == "released", (name, row.error)
        assert Path(row.output_uri).is_file()
        if kind.face:
            assert row.n_faces >= 1, name  # the face survives the conversion to RGB
    assert hostile.loc["animated.webp", "frames"] == 2 and hostile.loc["multipage.tif", "frames"] == 2
    assert hostile.loc["png-named.jpg", "source_format"] == "PNG"  # content decides, not the name


def test_good_images_are_unaffected(volume_run):
    _, good, _, df = volume_run
    rows = df[df.folder == "good"]
    assert sorted(rows.name) == sorted(good)
    assert (rows.status == "released").all(), rows[rows.status != "released"][["name", "error"]]
    assert (rows.n_faces >= 1).all()


def test_no_actor_died(volume_run, ray_local):
    """Bad records fail inside the actor; none takes its actor down (no restarts, no
    replacement actors: the pool of 2 is the only ProcessRecords actors this run made)."""
    from ray._private.state import actors  # the GCS actor table (no dashboard needed)

    _, _, _, df = volume_run
    pool = [a for a in actors().values() if "ProcessRecords" in (a.get("ActorClassName") or "")
            and float(a.get("StartTime") or 0) >= df.attrs["started_ms"] - 1000.0]
    assert len(pool) == 2, [(a.get("ActorClassName"), a.get("State")) for a in pool]  # run.actors = 2
    assert all(int(a.get("NumRestarts", 0) or 0) == 0 for a in pool)
    causes = [str(a.get("DeathCause") or "") for a in pool]
    assert not any(w in c.lower() for c in causes for w in ("oom", "segfault", "unexpected", "crash", "sigkill")), causes


# ----------------------------------------------------------------------------- peak memory
# VmHWM (this address space's peak RSS), not ru_maxrss: the latter carries the forking
# parent's peak across exec, and pytest with Ray is bigger than any decode here.
_PROBE = textwrap.dedent("""
    import sys
    sys.path[:0] = [{repo!r}, {tests!r}]
    from deid.io.decode import DecodeError, decode_image
    from pathlib import Path
    def hwm():
        return int(next(l for l in open("/proc/self/status") if l.startswith("VmHWM:")).split()[1])
    data = Path(sys.argv[1]).read_bytes()
    before = hwm()
    try:
        decode_image(data, max_pixels=int(sys.argv[2]), name=sys.argv[1])
        code = "ok"
    except DecodeError as exc:
        code = exc.code
    print(code, hwm() - before)
""")


def _peak_kib(path: Path, max_pixels: int) -> tuple[str, int]:
    """Decode ``path`` in a fresh interpreter; (outcome, growth of its peak RSS in KiB)."""
    code = _PROBE.format(repo=str(REPO), tests=str(REPO / "tests"))
    out = subprocess.run([sys.executable, "-c", code, str(path), str(max_pixels)], capture_output=True, text=True,
                         check=True, timeout=120).stdout.split()
    return out[0], int(out[1])


def test_bombs_are_refused_before_decoding(tmp_path):
    """Peak RSS of refusing each bomb / huge-dimension file stays under 32 MiB; decoding
    them would need 0.25-10 GB. Control: a real 5000x5000 photo under the cap, decoded
    for real, raises the peak by at least its 75 MB of RGB output, so the probe sees a
    full decode."""
    from hostile import face_image

    bombs = write_kinds(tmp_path / "k")
    names = [n for n, k in bombs.items() if k.code == "too_many_pixels"]
    assert len(names) >= 5
    for name in names:
        outcome, kib = _peak_kib(tmp_path / "k" / name, 64_000_000)
        assert outcome == "too_many_pixels", name
        assert kib < 32 * 1024, (name, kib)
    face_image().resize((5000, 5000)).save(tmp_path / "big.jpg", "JPEG", quality=80)
    outcome, kib = _peak_kib(tmp_path / "big.jpg", 64_000_000)
    assert outcome == "ok" and kib * 1024 > 5000 * 5000 * 3, kib


# ----------------------------------------------------------------------------- permissions
def test_permission_denied_is_a_read_error_even_as_root():
    """root reads any file, so the unreadable file is read by a child that drops to the
    unprivileged uid 65534 (as root) or stays the same user (otherwise): the same
    read_input the pipeline stage calls, in both cases for real, never skipped."""
    folder = Path(tempfile.mkdtemp(prefix="deid-perm-", dir="/tmp"))
    try:
        folder.chmod(0o755)
        locked = folder / "locked.jpg"
        shutil.copy(lfw_images()[0], locked)
        locked.chmod(0)
        r, w = os.pipe()
        pid = os.fork()
        if pid == 0:  # child: read as an unprivileged user, report, exit without cleanup
            os.close(r)
            try:
                if os.geteuid() == 0:
                    os.setgid(65534)
                    os.setuid(65534)
                read_input(str(locked))
                msg = "ok:read"
            except DecodeError as exc:
                msg = f"{exc.code}:{exc.message}"
            except BaseException as exc:  # noqa: BLE001
                msg = f"other:{type(exc).__name__}: {exc}"
            os.write(w, msg.encode())
            os._exit(0)
        os.close(w)
        with os.fdopen(r) as f:
            msg = f.read()
        os.waitpid(pid, 0)
        code, _, text = msg.partition(":")
        assert code == "read_error", msg
        assert text == f"{locked}: permission denied"
    finally:
        shutil.rmtree(folder, ignore_errors=True)


def test_refusing_a_fifo_does_not_block(tmp_path):
    """A FIFO with no writer would block open() forever; it is refused from its stat."""
    fifo = tmp_path / "pipe.jpg"
    os.mkfifo(fifo)
    with pytest.raises(DecodeError) as exc:
        read_input(str(fifo))
    assert exc.value.code == "not_a_file" and "FIFO" in exc.value.message

"""Decode memory per worker is bounded from the header (deid.io.decode.PixelBounds):
pixels per byte of file, and the pixels the worker's memory can take.

The bombs are real files built here: an RLE8 BMP whose body is a few "delta" escapes
(1.2 KB claiming 8000 x 8000 = 64 Mpx, exactly run.max_pixels, so that cap lets it through),
and a 1-bit PNG of zeros (8000 x 8000 in ~8 KB). Peak memory is the growth of VmHWM (the
process's peak RSS) in a fresh interpreter, before and after the bound.
"""

from __future__ import annotations

import io
import struct
import subprocess
import sys
import textwrap
from pathlib import Path

import pandas as pd
import pytest
from PIL import Image

from conftest import GROUP, REPO, SAMPLES, base_manifest, lfw_images
from deid.config import manifest_from_dict
from deid.io.decode import RATIO_FLOOR_PIXELS, DecodeError, PixelBounds, decode_image
from deid.pipeline import run_job

pytestmark = pytest.mark.timeout(300)
DEFAULT_PER_BYTE = 500.0  # run.max_pixels_per_byte's default


def rle8_bmp(width: int, height: int) -> bytes:
    """A valid BMP (BITMAPINFOHEADER, 8 bits, BI_RLE8, 256-colour palette) whose RLE body is
    delta escapes (0, 2, dx, dy) that skip to the end, then end-of-bitmap (0, 1)."""
    body = bytearray()
    left = width * height
    while left > 0:
        body += bytes((0, 2, 255, 255))  # move 255 right and 255 down: 255 + 255 * width pixels
        left -= 255 + 255 * width
    body += bytes((0, 1))
    palette = b"".join(bytes((i, i, i, 0)) for i in range(256))
    offset = 14 + 40 + len(palette)
    info = struct.pack("<IiiHHIIiiII", 40, width, height, 1, 8, 1, len(body), 2835, 2835, 256, 0)
    head = b"BM" + struct.pack("<IHHI", offset + len(body), 0, 0, offset)
    return head + info + palette + bytes(body)


def png_bomb_1bit(width: int, height: int) -> bytes:
    buf = io.BytesIO()
    Image.new("1", (width, height), 0).save(buf, "PNG", optimize=True)
    return buf.getvalue()


def test_the_bombs_are_real_files():
    bmp = rle8_bmp(8000, 8000)
    assert 1100 < len(bmp) < 1300  # the 1.2 KB of the issue
    im = Image.open(io.BytesIO(bmp))
    assert im.format == "BMP" and im.size == (8000, 8000) and im.info.get("compression") == 1  # BI_RLE8
    assert 8000 * 8000 == 64_000_000  # exactly run.max_pixels: that cap lets it through
    small = rle8_bmp(600, 600)  # the same construction, small enough to decode here
    assert decode_image(small, max_pixels=10**8).rgb.shape == (600, 600, 3)
    png = png_bomb_1bit(8000, 8000)
    assert len(png) < 20_000 and Image.open(io.BytesIO(png)).size == (8000, 8000)


def test_bombs_fail_with_too_many_pixels_for_size():
    for name, data in (("bomb.bmp", rle8_bmp(8000, 8000)), ("bomb.png", png_bomb_1bit(8000, 8000))):
        with pytest.raises(DecodeError) as exc:
            decode_image(data, max_pixels=64_000_000, name=name, bounds=PixelBounds(per_byte=DEFAULT_PER_BYTE))
        e = exc.value
        assert e.code == "too_many_pixels_for_size", e
        assert e.message.startswith(f"{name}: 8000x8000 = 64,000,000 pixels in a file of {len(data):,} bytes")
        assert "run.max_pixels_per_byte = 500" in e.message and "decompression bomb" in e.message


def test_small_flat_images_and_real_photos_pass_the_ratio():
    """Below 1 Mpx nothing is refused for its ratio (a flat 1000 x 1000 PNG is ~300 px/B);
    every real photo of the samples and of the shared data set is far below the bound."""
    flat = io.BytesIO()
    Image.new("RGB", (1000, 1000), (90, 60, 40)).save(flat, "PNG")
    assert 1000 * 1000 <= RATIO_FLOOR_PIXELS and 1000 * 1000 / len(flat.getvalue()) > 100
    decode_image(flat.getvalue(), max_pixels=10**8, bounds=PixelBounds(per_byte=DEFAULT_PER_BYTE))
    roots = [SAMPLES, Path("/work/shared/data")]
    ratios = []
    for root in roots:
        for p in root.rglob("*"):
            if p.suffix.lower() in (".jpg", ".jpeg", ".png", ".pgm", ".webp", ".bmp", ".gif"):
                with Image.open(p) as im:
                    ratios.append(im.width * im.height / p.stat().st_size)
    assert len(ratios) >= 50
    assert max(ratios) < DEFAULT_PER_BYTE / 20, max(ratios)  # measured: 12.2 px/B at most


_PROBE = textwrap.dedent("""
    import sys
    sys.path[:0] = [{repo!r}, {tests!r}]
    from test_decode_bounds import png_bomb_1bit, rle8_bmp
    from deid.io.decode import DecodeError, PixelBounds, decode_image
    def hwm():
        return int(next(l for l in open("/proc/self/status") if l.startswith("VmHWM:")).split()[1])
    kind, w, h, per_byte = sys.argv[1], int(sys.argv[2]), int(sys.argv[3]), float(sys.argv[4])
    data = rle8_bmp(w, h) if kind == "bmp" else png_bomb_1bit(w, h)
    before = hwm()
    try:
        decode_image(data, max_pixels=64_000_000, bounds=PixelBounds(per_byte=per_byte or None))
        code = "ok"
    except DecodeError as exc:
        code = exc.code
    print(code, hwm() - before)
""")


def _peak_kib(kind: str, w: int, h: int, per_byte: float) -> tuple[str, int]:
    code = _PROBE.format(repo=str(REPO), tests=str(REPO / "tests"))
    out = subprocess.run([sys.executable, "-c", code, kind, str(w), str(h), str(per_byte)], capture_output=True,
                         text=True, check=True, timeout=240).stdout.split()
    return out[0], int(out[1])


@pytest.mark.parametrize("kind", ["bmp", "png"])
def test_peak_memory_of_a_bomb_before_and_after_the_bound(kind):
    """Without the ratio bound, a 4000 x 4000 bomb (16 Mpx; the 64 Mpx one needs 4x that)
    is decoded and the peak RSS grows by at least its 48 MB of RGB output; with the bound,
    the 64 Mpx bomb is refused and the peak grows by less than 16 MiB."""
    code, kib = _peak_kib(kind, 4000, 4000, 0)
    print(f"{kind} 4000x4000 unbounded: {code}, peak +{kib / 1024:.0f} MiB")
    assert code == "ok" and kib * 1024 > 4000 * 4000 * 3, kib
    code, kib = _peak_kib(kind, 8000, 8000, DEFAULT_PER_BYTE)
    print(f"{kind} 8000x8000 bounded: {code}, peak +{kib / 1024:.1f} MiB")
    assert code == "too_many_pixels_for_size" and kib < 16 * 1024, kib


def test_memory_bound_refuses_from_the_header_and_says_why():
    photo = Image.open(GROUP / "obama_and_biden.jpg").convert("RGB")  # 2000 x 1428, a real photo
    buf = io.BytesIO()
    photo.save(buf, "JPEG", quality=90)
    bounds = PixelBounds(memory_bytes=4 * 2**30, fraction=0.5, bytes_per_pixel=1024, memory_from="this machine's memory")
    assert bounds.memory_pixels == 2 * 2**20
    with pytest.raises(DecodeError) as exc:
        decode_image(buf.getvalue(), max_pixels=64_000_000, name="big.jpg", bounds=bounds)
    e = exc.value
    assert e.code == "too_many_pixels_for_memory"
    assert e.message.startswith("big.jpg: 2000x1428 = 2,856,000 pixels exceeds this worker's memory bound of 2,097,152")
    assert "run.worker_memory_fraction 0.5 x 4.0 GiB of this machine's memory / run.bytes_per_pixel 1024" in e.message
    assert "about 2.7 GiB" in e.message and "resumed run retries it" in e.message
    # the same photo under a bound that holds it decodes
    assert decode_image(buf.getvalue(), max_pixels=64_000_000, bounds=PixelBounds(
        memory_bytes=4 * 2**30, fraction=0.5, bytes_per_pixel=300)).rgb.shape == (1428, 2000, 3)


def _inputs(tmp: Path) -> Path:
    src = tmp / "in"
    src.mkdir()
    (src / "bomb.bmp").write_bytes(rle8_bmp(8000, 8000))
    (src / "bomb.png").write_bytes(png_bomb_1bit(8000, 8000))
    big = Image.open(GROUP / "obama_and_biden.jpg").convert("RGB")  # 2000 x 1428
    big.save(src / "big.jpg", quality=90)
    for p in lfw_images()[:2]:
        (src / p.name).write_bytes(p.read_bytes())
    return src


def _bpp_for_cap(cap_pixels: int, workers: int | None, fraction: float = 0.7) -> float:
    """run.bytes_per_pixel that puts this machine's memory bound at ``cap_pixels``."""
    from deid.pipeline.memory import worker_memory

    mem, _ = worker_memory(workers)
    return mem * fraction / cap_pixels


def _by_name(df: pd.DataFrame, run_id: str) -> pd.DataFrame:
    df = df[df.run_id == run_id]
    return df.set_index(df.input_uri.map(lambda u: Path(u).name))


def test_pipeline_fails_the_records_and_the_batch_goes_on_then_resume_retries(tmp_path):
    src = _inputs(tmp_path)
    quick = {"checks": {"enabled": False, "no_face": "keep", "residual": "off"}}
    run = {"batch_size": 8, "bytes_per_pixel": _bpp_for_cap(1_000_000, None)}
    m = manifest_from_dict(base_manifest(src, tmp_path, run=run, **quick))
    res = run_job(m, engine="local", progress=False)
    df = _by_name(pd.read_parquet(res.records_uri), res.run_id)
    assert df.loc["bomb.bmp", "error_code"] == "too_many_pixels_for_size"
    assert df.loc["bomb.png", "error_code"] == "too_many_pixels_for_size"
    assert df.loc["big.jpg", "error_code"] == "too_many_pixels_for_memory"
    assert "this machine's memory" in df.loc["big.jpg", "error"] and "big.jpg" in df.loc["big.jpg", "error"]
    others = df.drop(index=["bomb.bmp", "bomb.png", "big.jpg"])
    assert len(others) == 2 and set(others.status) == {"released"}
    # a run with more memory per worker (the default bytes_per_pixel) retries the memory refusal only
    m2 = manifest_from_dict(base_manifest(src, tmp_path, run={"batch_size": 8}, **quick))
    res2 = run_job(m2, engine="local", progress=False)
    df2 = _by_name(pd.read_parquet(res2.records_uri), res2.run_id)
    assert df2.loc["big.jpg", "status"] == "released"
    assert set(df2.drop(index=["big.jpg"]).status) == {"skipped"}


def test_ray_workers_share_their_nodes_memory(tmp_path, ray_local):
    """Two actors on this node: each counts on half of the node's Ray memory."""
    src = _inputs(tmp_path)
    quick = {"checks": {"enabled": False, "no_face": "keep", "residual": "off"}}
    import ray

    node_mem = next(n["Resources"]["memory"] for n in ray.nodes() if n["Alive"])
    bpp = node_mem / 2 * 0.7 / 1_000_000  # a 1 Mpx bound per actor with 2 actors on the node
    m = manifest_from_dict(base_manifest(src, tmp_path, run={"batch_size": 1, "actors": 2, "bytes_per_pixel": bpp},
                                         **quick))
    res = run_job(m, engine="ray", progress=False)
    df = pd.read_parquet(res.records_uri)
    big = df[df.input_uri.str.endswith("big.jpg")].iloc[0]
    assert big.error_code == "too_many_pixels_for_memory"
    assert "the node's Ray memory shared by 2 workers" in big.error, big.error
    import re

    cap = int(re.search(r"memory bound of ([\d,]+) pixels", big.error).group(1).replace(",", ""))
    assert 990_000 <= cap <= 1_000_000, big.error
    assert (df.status == "released").sum() == 2


_STAGE = textwrap.dedent("""
    import sys, json
    sys.path[:0] = [{repo!r}, {tests!r}]
    from deid.config import manifest_from_dict
    from deid.pipeline.stages import ProcessRecords
    from deid.audit.rows import RunContext
    import pyarrow as pa
    def hwm():
        return int(next(l for l in open("/proc/self/status") if l.startswith("VmHWM:")).split()[1])
    src = sys.argv[1]
    m = manifest_from_dict({{"input": {{"uri": src}}, "output": {{"uri": sys.argv[2]}}}})
    stage = ProcessRecords(m.model_dump(mode="json"), RunContext(run_id="r", config_sha256="x", naming_key_id=None).__dict__)
    uris = [f"{{src}}/{{n}}" for n in sys.argv[3:]]
    stage(pa.table({{"record_id": ["w"], "uri": [uris[-1]], "output_stem": ["w"]}}))  # warm: models in memory
    before = hwm()
    out = stage(pa.table({{"record_id": [str(i) for i in range(len(uris))], "uri": uris,
                          "output_stem": [f"o{{i}}" for i in range(len(uris))]}})).to_pylist()
    print(json.dumps({{"codes": [r["error_code"] or r["status"] for r in out], "kib": hwm() - before}}))
""")


def test_the_whole_stage_with_default_settings_stays_bounded(tmp_path):
    """The default pipeline (detector, residual gate, identity check) on the two 64 Mpx bombs
    and a real photo, in a fresh process: the bombs fail from their headers, the photo is
    released, and the peak RSS grows by less than 64 MiB over the warmed-up stage."""
    import json

    src = _inputs(tmp_path)
    code = _STAGE.format(repo=str(REPO), tests=str(REPO / "tests"))
    names = ["bomb.bmp", "bomb.png", lfw_images()[0].name]
    out = subprocess.run([sys.executable, "-c", code, str(src), str(tmp_path / "rel"), *names], capture_output=True,
                         text=True, check=True, timeout=240, cwd=REPO).stdout.strip().splitlines()[-1]
    res = json.loads(out)
    print(f"stage on {names}: {res}")
    assert res["codes"][:2] == ["too_many_pixels_for_size", "too_many_pixels_for_size"]
    assert res["codes"][2] in ("released", "quarantined")
    assert res["kib"] < 64 * 1024, res

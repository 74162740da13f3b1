"""Bad input never stops a run and never disappears; metadata never reaches an output."""

from __future__ import annotations

import io
import os
import shutil
from pathlib import Path

import numpy as np
import pandas as pd
import pytest
from PIL import Image

from conftest import base_manifest, lfw_images
from deid.config import manifest_from_dict
from deid.io.decode import DecodeError, decode_image
from deid.pipeline import run_job
from hostile import BAD, ODD, face_image, jpeg_bytes, write_hostile


@pytest.fixture(scope="module")
def hostile_run(tmp_path_factory, ray_local):
    tmp = tmp_path_factory.mktemp("hostile")
    inp = tmp / "in"
    write_hostile(inp)
    for p in lfw_images()[:2]:
        shutil.copy(p, inp / p.name)
    m = manifest_from_dict(base_manifest(inp, tmp, checks={"no_face": "keep"}))
    result = run_job(m, engine="ray", progress=False)
    df = pd.read_parquet(result.records_uri)
    return inp, result, df


def test_every_input_has_exactly_one_row(hostile_run):
    inp, result, df = hostile_run
    listed = {p.name for p in inp.iterdir()}
    assert len(df) == len(listed) == result.summary["inputs"] == result.summary["audit_rows"]
    assert df.record_id.is_unique
    assert {Path(u).name for u in df.input_uri} == listed


def test_bad_files_fail_with_specific_codes_and_name_the_file(hostile_run):
    _, _, df = hostile_run
    failed = df[df.status == "failed"]
    got = {Path(u).name: code for u, code in zip(failed.input_uri, failed.error_code)}
    assert got == BAD
    for uri, msg in zip(failed.input_uri, failed.error):
        assert uri in msg  # the message names the file
    assert failed.output_uri.isna().all()


def test_odd_but_valid_files_are_processed(hostile_run):
    _, _, df = hostile_run
    by_name = {Path(u).name: r for u, r in zip(df.input_uri, df.itertuples())}
    for name in ODD:
        row = by_name[name]
        assert row.status == "released", (name, row.error)
        assert row.n_faces == 1, name  # the face survives the conversion to RGB
        assert row.width == 250 and row.height == 250
    assert by_name["animated.gif"].frames == 2  # first frame used, count recorded
    assert by_name["cmyk.jpg"].source_format == "JPEG"


def test_pixel_cap_is_checked_before_decoding():
    from hostile import png_bomb

    with pytest.raises(DecodeError) as exc:
        decode_image(png_bomb(200_000, 200_000), max_pixels=10_000_000, name="bomb.png")
    assert exc.value.code == "too_many_pixels" and "bomb.png" in exc.value.message
    # under the cap, the same construction decodes
    small = decode_image(png_bomb(100, 50), max_pixels=10_000_000)
    assert small.rgb.shape == (50, 100, 3)


@pytest.mark.skipif(os.geteuid() == 0, reason="root reads files regardless of permissions")
def test_unreadable_file_is_a_failed_row(tmp_path, ray_local):
    inp = tmp_path / "in"
    inp.mkdir()
    shutil.copy(lfw_images()[0], inp / "ok.jpg")
    locked = inp / "locked.jpg"
    shutil.copy(lfw_images()[1], locked)
    locked.chmod(0)
    result = run_job(manifest_from_dict(base_manifest(inp, tmp_path)), engine="local", progress=False)
    df = pd.read_parquet(result.records_uri).set_index("input_uri")
    assert df.loc[str(locked), "error_code"] == "read_error"
    assert "permission denied" in df.loc[str(locked), "error"]


def test_exif_orientation_is_applied_before_detection(tmp_path):
    face = face_image().crop((0, 0, 250, 200))  # not square, so rotation shows in the size
    # Stored rotated 90 degrees; EXIF orientation 6 tells viewers to rotate it back.
    stored = face.transpose(Image.Transpose.ROTATE_90)
    exif = Image.Exif()
    exif[0x0112] = 6
    data = jpeg_bytes(stored, exif=exif.tobytes())
    decoded = decode_image(data, max_pixels=10**8)
    assert decoded.rgb.shape[:2] == (200, 250)  # upright: height 200, width 250
    from deid.faces.dlib_backend import DlibDetector

    assert len(DlibDetector().detect(decoded.rgb)) == 1


# --------------------------------------------------------------------------- metadata
def _jpeg_segments(data: bytes) -> list[tuple[int, bytes]]:
    """(marker, payload) of every JPEG segment before the image data."""
    assert data[:2] == b"\xff\xd8"
    i, out = 2, []
    while i < len(data):
        assert data[i] == 0xFF
        marker = data[i + 1]
        if marker == 0xDA:  # start of scan: metadata can no longer follow in headers
            break
        length = int.from_bytes(data[i + 2 : i + 4], "big")
        out.append((marker, data[i + 4 : i + 2 + length]))
        i += 2 + length
    return out


def _with_metadata() -> bytes:
    """A real face JPEG carrying EXIF with GPS, an XMP packet, an ICC profile and a comment."""
    im = face_image()
    exif = Image.Exif()
    exif[0x010F] = "SecretCam"  # Make
    exif[0x9286] = "Jane Doe at home"  # UserComment (in IFD0 for simplicity)
    gps = {1: "N", 2: (52.0, 31.0, 12.0), 3: "E", 4: (13.0, 24.0, 36.0)}
    exif[0x8825] = gps
    buf = io.BytesIO()
    xmp = b'<x:xmpmeta xmlns:x="adobe:ns:meta/"><rdf:RDF><dc:creator>Jane Doe</dc:creator></rdf:RDF></x:xmpmeta>'
    from PIL import ImageCms

    icc = ImageCms.ImageCmsProfile(ImageCms.createProfile("sRGB")).tobytes()
    im.save(buf, "JPEG", quality=95, exif=exif.tobytes(), comment=b"shot by Jane Doe", xmp=xmp, icc_profile=icc)
    data = buf.getvalue()
    check = Image.open(io.BytesIO(data))
    assert check.getexif().get_ifd(0x8825), "fixture must really carry GPS"
    assert b"Jane Doe" in data
    return data


@pytest.mark.parametrize("fmt", ["jpeg", "png", "webp"])
def test_gps_exif_xmp_icc_and_comments_are_stripped(tmp_path, fmt):
    inp = tmp_path / "in"
    inp.mkdir()
    (inp / "with-gps.jpg").write_bytes(_with_metadata())
    m = manifest_from_dict(base_manifest(inp, tmp_path, output={"format": fmt}, checks={"enabled": False}))
    result = run_job(m, engine="local", progress=False)
    row = pd.read_parquet(result.records_uri).iloc[0]
    assert row.status == "released" and row.n_faces == 1
    out = Path(row.output_uri).read_bytes()
    assert b"Jane Doe" not in out and b"SecretCam" not in out
    im = Image.open(io.BytesIO(out))
    assert len(im.getexif()) == 0
    assert not im.getexif().get_ifd(0x8825)
    assert "icc_profile" not in im.info and "xmp" not in im.info and "comment" not in im.info
    if fmt == "jpeg":
        markers = {mk for mk, _ in _jpeg_segments(out)}
        # only JFIF (APP0), quantisation/huffman tables and the frame header may remain
        assert not markers & ({0xE1, 0xE2, 0xED, 0xFE} | set(range(0xE3, 0xF0))), sorted(hex(m) for m in markers)
    if fmt == "png":
        assert not {"eXIf", "iTXt", "tEXt", "zTXt", "iCCP"} & _png_chunks(out)


def _png_chunks(data: bytes) -> set[str]:
    i, kinds = 8, set()
    while i < len(data):
        length = int.from_bytes(data[i : i + 4], "big")
        kinds.add(data[i + 4 : i + 8].decode("latin-1"))
        i += 12 + length
    return kinds


def test_output_pixels_outside_faces_match_input(tmp_path):
    """Stripping and re-encoding keep the picture: background stays close to the input."""
    inp = tmp_path / "in"
    inp.mkdir()
    from conftest import GROUP

    src = GROUP / "two_people.jpg"
    shutil.copy(src, inp / "a.jpg")
    m = manifest_from_dict(base_manifest(inp, tmp_path, output={"format": "png"}, checks={"enabled": False}))
    row = pd.read_parquet(run_job(m, engine="local", progress=False).records_uri).iloc[0]
    a = np.asarray(Image.open(src).convert("RGB"), dtype=np.int16)
    b = np.asarray(Image.open(row.output_uri).convert("RGB"), dtype=np.int16)
    assert row.n_faces >= 1
    mask = np.ones(a.shape[:2], bool)
    for face in row.faces:
        x0, y0, x1, y1 = face["box"]
        pad = int(0.8 * max(x1 - x0, y1 - y0))  # margin + feather of the default blur
        mask[max(0, y0 - pad) : y1 + pad, max(0, x0 - pad) : x1 + pad] = False
    assert mask.mean() > 0.3
    assert np.abs(a - b)[mask].max() == 0  # lossless PNG output: background identical
    x0, y0, x1, y1 = row.faces[0]["box"]
    assert np.abs(a - b)[y0:y1, x0:x1].mean() > 2  # and the face itself did change


@pytest.mark.parametrize("bits", [10, 12, 16])
@pytest.mark.parametrize("colour", [True, False])
def test_high_bit_depth_data_keeps_its_exposure_and_its_face(tmp_path, bits, colour):
    """10- and 12-bit samples in 16-bit PNG/TIFF files decode by their real range, not as
    near-black (divided by 257), so the detector still finds the face."""
    import cv2

    from deid.faces import make_detector
    from deid.io.decode import scale_to_8bit

    face = np.asarray(Image.open(lfw_images()[0]).convert("RGB"))
    if not colour:
        face = np.asarray(Image.fromarray(face).convert("L"))
    high = np.rint(face.astype(np.float64) * ((1 << bits) - 1) / 255.0).astype(np.uint16)
    det = make_detector()
    expect = np.asarray(Image.fromarray(face).convert("RGB"))
    want = len(det.detect(expect))  # the faces of the 8-bit original (CenterFace: the partial one at the edge too)
    assert want >= 1
    for ext in (".png", ".tiff"):
        stored = high[..., ::-1] if colour else high  # OpenCV writes BGR
        ok, buf = cv2.imencode(ext, stored)
        assert ok
        img = decode_image(buf.tobytes(), max_pixels=10**8, name=f"face{bits}{ext}")
        assert img.rgb.dtype == np.uint8 and img.rgb.shape == expect.shape
        # the exposure survives: at most one grey level of rounding from the 8-bit original
        assert np.abs(img.rgb.astype(int) - expect.astype(int)).max() <= 1, (bits, ext)
        assert len(det.detect(img.rgb)) == want, (bits, ext, colour)
    # the old rule (divide by 257) made 12-bit data near-black
    assert scale_to_8bit(np.array([4095], np.uint16))[0] == 255
    assert (np.array([4095]) / 257).max() < 16


def test_full_range_48bit_png_decodes_like_its_8bit_original(tmp_path):
    """A 16-bit-per-channel PNG with full-range data (the 8-bit photo times 257) decodes back
    to that photo through the full-depth path."""
    from hostile import _rgb16_png

    face = Image.open(lfw_images()[0]).convert("RGB").crop((0, 0, 250, 200))
    img = decode_image(_rgb16_png(face), max_pixels=10**8, name="rgb16.png")
    assert img.rgb.shape == (200, 250, 3)
    assert np.abs(img.rgb.astype(int) - np.asarray(face).astype(int)).max() <= 1

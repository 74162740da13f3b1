"""Builders for bad and odd input files, made from the real sample faces.

Two sets:

* :func:`write_hostile` / :data:`BAD` / :data:`ODD`: the small set tests/test_inputs.py uses.
* :data:`KINDS` / :func:`write_kinds`: every kind of hostile input deid knows about (bad
  files that must fail with a specific error code, and odd-but-valid files that must be
  released), for tests/test_hostile_volume.py and bench/hostile.py.

Every builder is deterministic: the same face photo in, the same bytes out.
"""

from __future__ import annotations

import io
import os
import struct
import zlib
from dataclasses import dataclass
from pathlib import Path
from typing import Callable

import numpy as np
from PIL import Image

from conftest import GROUP, lfw_images


def _png_chunk(kind: bytes, data: bytes) -> bytes:
    return struct.pack(">I", len(data)) + kind + data + struct.pack(">I", zlib.crc32(kind + data) & 0xFFFFFFFF)


def png_bomb(width: int = 100_000, height: int = 100_000) -> bytes:
    """A tiny PNG whose header claims width x height 8-bit greyscale pixels."""
    ihdr = struct.pack(">IIBBBBB", width, height, 8, 0, 0, 0, 0)
    comp = zlib.compressobj(9)
    row = b"\x00" + b"\x00" * width
    idat = comp.compress(row * 8) + comp.flush()
    return b"\x89PNG\r\n\x1a\n" + _png_chunk(b"IHDR", ihdr) + _png_chunk(b"IDAT", idat) + _png_chunk(b"IEND", b"")


def face_image() -> Image.Image:
    return Image.open(lfw_images()[0]).convert("RGB")


def jpeg_bytes(im: Image.Image, **kw) -> bytes:
    buf = io.BytesIO()
    im.save(buf, "JPEG", quality=95, **kw)
    return buf.getvalue()


def encode(im: Image.Image, fmt: str, **kw) -> bytes:
    buf = io.BytesIO()
    im.save(buf, fmt, **kw)
    return buf.getvalue()


#: file name -> expected error code, for files that must fail
BAD = {
    "zero.jpg": "empty_file",
    "truncated.jpg": "truncated",
    "text.jpg": "not_an_image",
    "bomb.png": "too_many_pixels",
    "corrupt.png": "corrupt",
    "broken-link.jpg": "read_error",
}

#: odd but valid files: must be processed (face found), never failed
ODD = ("cmyk.jpg", "grey.jpg", "grey16.png", "rgba.png", "palette.png", "animated.gif", "lzw.tif")


def _scramble(data: bytes, start: int, stop: int, key: int = 0x5A) -> bytes:
    raw = bytearray(data)
    for i in range(max(0, start), min(len(raw), stop)):
        raw[i] ^= key
    return bytes(raw)


def corrupt_png(face: Image.Image) -> bytes:
    """Header chunks intact, compressed pixel data scrambled."""
    raw = encode(face, "PNG")
    idat = raw.find(b"IDAT")
    return _scramble(raw, idat + 8, min(len(raw) - 20, idat + 4000))


def write_hostile(folder: Path) -> None:
    folder.mkdir(parents=True, exist_ok=True)
    face = face_image()
    good = jpeg_bytes(face)
    (folder / "zero.jpg").write_bytes(b"")
    (folder / "truncated.jpg").write_bytes(good[: len(good) // 2])
    (folder / "text.jpg").write_text("this is not an image, whatever its name says\n")
    (folder / "bomb.png").write_bytes(png_bomb())
    (folder / "corrupt.png").write_bytes(corrupt_png(face))
    os.symlink(folder / "does-not-exist.jpg", folder / "broken-link.jpg")

    face.convert("CMYK").save(folder / "cmyk.jpg", "JPEG", quality=95)
    face.convert("L").save(folder / "grey.jpg", "JPEG", quality=95)
    face.convert("I;16").point(lambda v: v * 256).save(folder / "grey16.png")  # noqa: B023
    rgba = face.convert("RGBA")
    rgba.putalpha(255)
    rgba.save(folder / "rgba.png")
    face.convert("P", palette=Image.ADAPTIVE, colors=256).save(folder / "palette.png")
    frames = [face.convert("P", palette=Image.ADAPTIVE), Image.open(GROUP / "kit_with_rose.jpg").convert("P").resize(face.size)]
    frames[0].save(folder / "animated.gif", save_all=True, append_images=frames[1:], duration=100, loop=0)
    face.save(folder / "lzw.tif", "TIFF", compression="tiff_lzw")


# ============================================================================ all kinds
# Byte-level builders for the headers deid must refuse before decoding.

def _jpeg_sof(data: bytes) -> int:
    """Offset of the baseline SOF0 marker of a JPEG Pillow wrote."""
    i = data.find(b"\xff\xc0")
    assert i > 0, "not a baseline JPEG"
    return i


def jpeg_with_sof(face: Image.Image, *, precision: int | None = None, width: int | None = None,
                  height: int | None = None) -> bytes:
    """A real JPEG whose frame header (SOF0) is patched: sample precision and/or size."""
    raw = bytearray(jpeg_bytes(face))
    sof = _jpeg_sof(raw)
    if precision is not None:
        raw[sof + 4] = precision
    if height is not None:
        raw[sof + 5:sof + 7] = struct.pack(">H", height)
    if width is not None:
        raw[sof + 7:sof + 9] = struct.pack(">H", width)
    return bytes(raw)


def jpeg_bad_huffman(face: Image.Image) -> bytes:
    """The first Huffman table's code counts overwritten: the table is invalid."""
    raw = bytearray(jpeg_bytes(face))
    dht = raw.find(b"\xff\xc4")
    raw[dht + 5:dht + 21] = b"\xff" * 16
    return bytes(raw)


def jpeg_scrambled_scan(face: Image.Image) -> bytes:
    raw = jpeg_bytes(face)
    sos = raw.find(b"\xff\xda")
    return _scramble(raw, sos + 20, sos + 2000)


def gif_bomb(width: int = 65535, height: int = 65535) -> bytes:
    """A small GIF whose logical screen claims width x height."""
    raw = bytearray(encode(Image.new("P", (16, 16)), "GIF"))
    raw[6:10] = struct.pack("<HH", width, height)
    return bytes(raw)


def webp_bomb(width: int = 16000, height: int = 16000) -> bytes:
    """An animated WebP (VP8X) whose canvas claims width x height."""
    a, b = Image.new("RGB", (64, 64), (200, 100, 50)), Image.new("RGB", (64, 64), (20, 200, 50))
    raw = bytearray(encode(a, "WEBP", save_all=True, append_images=[b], lossless=True))
    i = raw.find(b"VP8X")
    assert i > 0
    raw[i + 12:i + 15] = (width - 1).to_bytes(3, "little")
    raw[i + 15:i + 18] = (height - 1).to_bytes(3, "little")
    return bytes(raw)


def tiff_raw(width: int, height: int, *, bits: int = 8, strip: bytes | None = None, compression: int = 1) -> bytes:
    """A minimal little-endian greyscale TIFF with one strip; the header says what you ask."""
    if strip is None:
        strip = zlib.compress(b"\x00" * (width * 8)) if compression == 8 else b"\x00" * 64
    entries = [
        (256, 4, 1, width), (257, 4, 1, height), (258, 3, 1, bits), (259, 3, 1, compression),
        (262, 3, 1, 1), (273, 4, 1, 0), (277, 3, 1, 1), (278, 4, 1, height), (279, 4, 1, len(strip)),
    ]
    ifd_at = 8
    data_at = ifd_at + 2 + 12 * len(entries) + 4
    out = bytearray(b"II*\x00" + struct.pack("<I", ifd_at) + struct.pack("<H", len(entries)))
    for tag, typ, count, value in entries:
        if tag == 273:
            value = data_at
        packed = struct.pack("<H", value) + b"\x00\x00" if typ == 3 else struct.pack("<I", value)
        out += struct.pack("<HHI", tag, typ, count) + packed
    out += struct.pack("<I", 0) + strip
    return bytes(out)


def png_text_bomb() -> bytes:
    """A valid small PNG with a zTXt chunk that inflates to 64 MB of text."""
    base = encode(Image.new("RGB", (8, 8)), "PNG")
    comp = zlib.compressobj(9)
    payload = comp.compress(b"A" * (64 * 1024 * 1024)) + comp.flush()
    chunk = _png_chunk(b"zTXt", b"Comment\x00\x00" + payload)
    return base[:33] + chunk + base[33:]  # after the IHDR chunk (8 + 25 bytes)


def exif_orientation(face: Image.Image, value: int) -> bytes:
    exif = Image.Exif()
    exif[0x0112] = value
    return jpeg_bytes(face, exif=exif.tobytes())


def exif_garbage(face: Image.Image) -> bytes:
    """An APP1 Exif segment whose IFD offset points far past the segment."""
    return jpeg_bytes(face, exif=b"Exif\x00\x00II*\x00\xf0\xff\xff\x7f" + b"\x01" * 40)


def _rgb16_png(face: Image.Image) -> bytes:
    """48-bit (16 bits per channel) RGB PNG, written chunk by chunk (Pillow cannot write it)."""
    arr = np.asarray(face, dtype=np.uint16) * 257
    h, w, _ = arr.shape
    rows = b"".join(b"\x00" + arr[y].astype(">u2").tobytes() for y in range(h))
    ihdr = struct.pack(">IIBBBBB", w, h, 16, 2, 0, 0, 0)
    return (b"\x89PNG\r\n\x1a\n" + _png_chunk(b"IHDR", ihdr) + _png_chunk(b"IDAT", zlib.compress(rows, 6))
            + _png_chunk(b"IEND", b""))


@dataclass(frozen=True)
class Kind:
    """One kind of hostile input. ``code`` is the audit ``error_code`` it must get;
    ``None`` means odd but valid: it must be released (``face``: with >= 1 face)."""

    name: str
    code: str | None
    what: str
    build: Callable[[Path, Image.Image], None]
    face: bool = True


def _bytes(fn: Callable[[Image.Image], bytes]) -> Callable[[Path, Image.Image], None]:
    return lambda path, face: path.write_bytes(fn(face))


def _save(mode: str | None, fmt: str, **kw) -> Callable[[Path, Image.Image], None]:
    def build(path: Path, face: Image.Image) -> None:
        (face.convert(mode) if mode else face).save(path, fmt, **kw)
    return build


def _float_tiff(path: Path, face: Image.Image) -> None:
    Image.fromarray(np.asarray(face.convert("L"), np.float32) / 255.0, "F").save(path, "TIFF")


def _animated(fmt: str, **kw) -> Callable[[Path, Image.Image], None]:
    def build(path: Path, face: Image.Image) -> None:
        other = Image.open(GROUP / "kit_with_rose.jpg").convert("RGB").resize(face.size)
        face.save(path, fmt, save_all=True, append_images=[other], **kw)
    return build


def _fifo(path: Path, face: Image.Image) -> None:
    os.mkfifo(path)


def _symlink(target: Callable[[Path], str]) -> Callable[[Path, Image.Image], None]:
    return lambda path, face: os.symlink(target(path), path)


def _loop(path: Path, face: Image.Image) -> None:
    other = path.with_name(path.stem + ".loop-b")  # not an image extension: not listed itself
    os.symlink(other, path)
    os.symlink(path, other)


KINDS: tuple[Kind, ...] = (
    # ---------------------------------------------------------------- read stage
    Kind("broken-link.jpg", "read_error", "symlink to a file that does not exist", _symlink(lambda p: str(p.with_name("gone.jpg")))),
    Kind("link-loop.jpg", "read_error", "symlink loop (ELOOP)", _loop),
    Kind("fifo.jpg", "not_a_file", "named pipe: open() would block forever", _fifo),
    Kind("dev-zero.jpg", "symlink_outside", "symlink to /dev/zero, outside the input: refused at listing (with input.follow_symlinks: all it is read and refused as not_a_file)", _symlink(lambda p: "/dev/zero")),
    # ---------------------------------------------------------------- not an image
    Kind("zero.jpg", "empty_file", "0 bytes", _bytes(lambda f: b"")),
    Kind("text.jpg", "not_an_image", "plain text with an image extension", _bytes(lambda f: b"this is not an image, whatever its name says\n")),
    Kind("pdf-named.jpg", "not_an_image", "a PDF named .jpg (wrong extension)", _bytes(lambda f: b"%PDF-1.4\n1 0 obj<<>>endobj\ntrailer<<>>\n%%EOF\n")),
    Kind("html-named.png", "not_an_image", "an HTML page named .png", _bytes(lambda f: b"<!doctype html><html><body>404</body></html>\n")),
    Kind("zip-named.webp", "not_an_image", "a ZIP archive named .webp", _bytes(lambda f: b"PK\x03\x04" + b"\x00" * 60)),
    # ---------------------------------------------------------------- header damage
    Kind("bad-crc.png", "bad_header", "PNG whose IHDR checksum is wrong", _bytes(lambda f: _scramble(encode(f, "PNG"), 29, 30, 0xFF))),
    Kind("cut-in-header.png", "bad_header", "PNG cut off inside its first chunks (40 bytes)", _bytes(lambda f: encode(f, "PNG")[:40])),
    Kind("zero-width.jpg", "bad_header", "JPEG frame header says width 0", _bytes(lambda f: jpeg_with_sof(f, width=0))),
    Kind("12bit.jpg", "unsupported", "JPEG header says 12-bit samples (libjpeg 8-bit build)", _bytes(lambda f: jpeg_with_sof(f, precision=12))),
    Kind("7bit.bmp", "unsupported", "BMP header says 7 bits per pixel", _bytes(lambda f: encode(f, "BMP")[:28] + struct.pack("<H", 7) + encode(f, "BMP")[30:])),
    Kind("5bit.tif", "unsupported", "TIFF with 5 bits per sample", _bytes(lambda f: tiff_raw(64, 64, bits=5))),
    # ---------------------------------------------------------------- truncated
    Kind("truncated.jpg", "truncated", "JPEG cut in half", _bytes(lambda f: jpeg_bytes(f)[: len(jpeg_bytes(f)) // 2])),
    Kind("truncated.png", "truncated", "PNG cut in half", _bytes(lambda f: encode(f, "PNG")[: len(encode(f, "PNG")) // 2])),
    Kind("truncated.webp", "truncated", "WebP cut in half (RIFF size says more)", _bytes(lambda f: encode(f, "WEBP")[: len(encode(f, "WEBP")) // 2])),
    Kind("truncated.tif", "truncated", "TIFF cut in half", _bytes(lambda f: encode(f, "TIFF")[: len(encode(f, "TIFF")) // 2])),
    Kind("truncated.gif", "truncated", "GIF cut in half", _bytes(lambda f: encode(f, "GIF")[: len(encode(f, "GIF")) // 2])),
    # ---------------------------------------------------------------- corrupt data
    Kind("scrambled.jpg", "corrupt", "JPEG entropy-coded data XOR-scrambled", _bytes(jpeg_scrambled_scan)),
    Kind("bad-huffman.jpg", "corrupt", "JPEG Huffman table invalid", _bytes(jpeg_bad_huffman)),
    Kind("corrupt.png", "corrupt", "PNG IDAT data scrambled", _bytes(corrupt_png)),
    Kind("scrambled.webp", "corrupt", "WebP bitstream scrambled", _bytes(lambda f: _scramble(encode(f, "WEBP"), 40, 2000))),
    Kind("scrambled-lzw.tif", "corrupt", "LZW TIFF strip data scrambled", _bytes(lambda f: _scramble(encode(f, "TIFF", compression="tiff_lzw"), 20, 60000))),
    Kind("text-bomb.png", "corrupt", "PNG zTXt chunk inflating to 64 MB (over Pillow's text cap)", _bytes(lambda f: png_text_bomb())),
    # ---------------------------------------------------------------- huge dimensions / bombs
    Kind("bomb.png", "too_many_pixels", "PNG claiming 100000x100000 (deflate bomb)", _bytes(lambda f: png_bomb())),
    Kind("huge-dims.jpg", "too_many_pixels", "JPEG header claiming 65000x65000", _bytes(lambda f: jpeg_with_sof(f, width=65000, height=65000))),
    Kind("bomb.gif", "too_many_pixels", "GIF logical screen 65535x65535", _bytes(lambda f: gif_bomb())),
    Kind("bomb.webp", "too_many_pixels", "animated WebP canvas 16000x16000", _bytes(lambda f: webp_bomb())),
    Kind("bomb.tif", "too_many_pixels", "deflate TIFF claiming 100000x100000", _bytes(lambda f: tiff_raw(100_000, 100_000, compression=8))),
    # ---------------------------------------------------------------- odd but valid: released
    Kind("png-named.jpg", None, "a PNG named .jpg (wrong extension, real image)", _bytes(lambda f: encode(f, "PNG"))),
    Kind("jpeg-named.png", None, "a JPEG named .png", _bytes(jpeg_bytes)),
    Kind("orientation-9.jpg", None, "EXIF orientation 9 (no such value): ignored", _bytes(lambda f: exif_orientation(f, 9))),
    Kind("orientation-0.jpg", None, "EXIF orientation 0 (no such value): ignored", _bytes(lambda f: exif_orientation(f, 0))),
    Kind("exif-garbage.jpg", None, "EXIF IFD offset pointing past the segment", _bytes(exif_garbage)),
    Kind("progressive.jpg", None, "progressive JPEG", _save(None, "JPEG", quality=90, progressive=True)),
    Kind("cmyk.jpg", None, "CMYK JPEG", _save("CMYK", "JPEG", quality=95)),
    Kind("cmyk.tif", None, "CMYK TIFF", _save("CMYK", "TIFF")),
    Kind("lab.tif", None, "CIELAB TIFF", _save("LAB", "TIFF")),
    Kind("grey.jpg", None, "8-bit greyscale", _save("L", "JPEG", quality=95)),
    Kind("bilevel.png", None, "1-bit (dithered) PNG", _save("1", "PNG")),
    Kind("grey-alpha.png", None, "greyscale + alpha", _save("LA", "PNG")),
    Kind("grey16.png", None, "16-bit greyscale PNG", lambda p, f: f.convert("I;16").point(lambda v: v * 256).save(p)),
    Kind("rgb48.png", None, "16 bits per channel RGB PNG", _bytes(_rgb16_png)),
    Kind("int32.tif", None, "32-bit integer TIFF", _save("I", "TIFF")),
    Kind("float32.tif", None, "32-bit float TIFF (0..1)", _float_tiff),
    Kind("rgba.png", None, "RGBA", _save("RGBA", "PNG")),
    Kind("palette.png", None, "palette PNG", lambda p, f: f.convert("P", palette=Image.ADAPTIVE, colors=256).save(p)),
    Kind("lzw.tif", None, "LZW TIFF", _save(None, "TIFF", compression="tiff_lzw")),
    Kind("animated.gif", None, "2-frame GIF: first frame used", _animated("GIF", duration=100, loop=0)),
    Kind("animated.webp", None, "2-frame WebP", _animated("WEBP")),
    Kind("animated.png", None, "2-frame APNG", _animated("PNG")),
    Kind("multipage.tif", None, "2-page TIFF", _animated("TIFF")),
    Kind("one-pixel.png", None, "1x1 image (no face)", lambda p, f: Image.new("RGB", (1, 1), (90, 60, 40)).save(p), face=False),
    Kind("sliver.png", None, "20000x3 image (extreme aspect, no face)", lambda p, f: Image.new("RGB", (20000, 3), (90, 60, 40)).save(p), face=False),
)

BAD_KINDS = {k.name: k.code for k in KINDS if k.code is not None}
ODD_KINDS = {k.name: k for k in KINDS if k.code is None}


def write_kinds(folder: Path, copies: int = 1, face: Image.Image | None = None) -> dict[str, Kind]:
    """Write every kind into ``folder`` ``copies`` times (``k{i}-<name>`` for i > 0 ...
    the first copy keeps the plain name). Returns file name -> kind."""
    folder.mkdir(parents=True, exist_ok=True)
    face = face or face_image()
    out: dict[str, Kind] = {}
    for i in range(copies):
        for kind in KINDS:
            name = kind.name if i == 0 else f"c{i}-{kind.name}"
            kind.build(folder / name, face)
            out[name] = kind
    return out

"""Builders for bad and odd input files, made from the real sample faces."""

from __future__ import annotations

import io
import os
import struct
import zlib
from pathlib import Path

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


def write_hostile(folder: Path) -> None:
    folder.mkdir(parents=True, exist_ok=True)
    face = face_image()
    good = jpeg_bytes(face)
    (folder / "zero.jpg").write_bytes(b"")
    (folder / "truncated.jpg").write_bytes(good[: len(good) // 2])
    (folder / "text.jpg").write_text("this is not an image, whatever its name says\n")
    (folder / "bomb.png").write_bytes(png_bomb())
    png = io.BytesIO()
    face.save(png, "PNG")
    raw = bytearray(png.getvalue())
    # keep the header chunks, scramble the compressed pixel data
    idat = raw.find(b"IDAT")
    for i in range(idat + 8, min(len(raw) - 20, idat + 4000)):
        raw[i] ^= 0x5A
    (folder / "corrupt.png").write_bytes(bytes(raw))
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

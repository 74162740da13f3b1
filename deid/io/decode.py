"""Safe decode: bytes -> sha256 -> RGB uint8 array, or a :class:`DecodeError` with a code.

Contract:
* never raises anything but :class:`DecodeError` for bad data (the batch goes on);
* the pixel caps are checked from the header, *before* pixels are decoded, so a
  decompression bomb costs a header read, not gigabytes: ``max_pixels`` (``run.max_pixels``),
  pixels per byte of file (:class:`PixelBounds.per_byte`, above :data:`RATIO_FLOOR_PIXELS`:
  a 1.2 KB RLE8 BMP that claims 64 Mpx, a 1-bit PNG of zeros, a GIF or WebP of one colour),
  and the pixels the worker's memory can hold (:class:`PixelBounds.memory_pixels`);
* EXIF orientation is applied, then the image is converted to 8-bit RGB:
  greyscale, palette, CMYK, RGBA/LA (alpha composited on white), 16-bit and 32-bit
  integer and float modes are all accepted and converted; integer samples are scaled by
  their real range (10-, 12-, 14- or 16-bit data in a 16-bit file: :func:`scale_to_8bit`),
  and 16-bit colour PNG/TIFF is decoded at full depth (Pillow would keep the high bytes);
* multi-frame files (animated GIF/WebP/PNG, multi-page TIFF): the first frame is used and
  ``frames`` says how many there were; nothing of the other frames is written out.

Error codes (stable, documented in docs/audit.md): ``empty_file``, ``not_an_image``,
``bad_header``, ``unsupported``, ``truncated``, ``corrupt``, ``too_many_pixels``,
``too_many_pixels_for_size``, ``too_many_pixels_for_memory``, ``bad_dimensions``; and from :func:`read_input`, which the pipeline stage calls first:
``read_error`` and ``not_a_file``.

``not_an_image`` means no image format claims the bytes; ``bad_header`` means the first
bytes are those of a known format (Pillow's own signature check) but its header cannot be
read; ``unsupported`` means a readable header of a variant Pillow cannot decode (12-bit
JPEG, 7-bit BMP, ...). The message carries the format plugin's own reason.
"""

from __future__ import annotations

import errno
import hashlib
import io
import os
import re
import stat
import warnings
from dataclasses import dataclass

import numpy as np
from PIL import Image, ImageOps, UnidentifiedImageError

# deid enforces its own cap (run.max_pixels) before decoding; PIL's global cap would
# raise a different exception type at a different threshold.
Image.MAX_IMAGE_PIXELS = None


#: images of at most this many pixels are never refused for their pixels per byte: processing
#: one costs at most a few hundred MB, and small flat images (icons, renders) compress that well
RATIO_FLOOR_PIXELS = 1_000_000


@dataclass(frozen=True)
class PixelBounds:
    """The caps :func:`decode_image` checks from the header besides ``max_pixels``.

    ``per_byte``: the most pixels per byte of file (0 or None: off), for images above
    :data:`RATIO_FLOOR_PIXELS`. Uncompressed formats hold at least one bit per pixel, so only
    compressed data (RLE, deflate, LZW, VP8L, progressive-JPEG end-of-band runs) can exceed it.
    ``memory_bytes`` x ``fraction`` / ``bytes_per_pixel``: the most pixels the worker's
    memory can take through the whole stage (decode, detect, anonymize, check, encode);
    ``memory_from`` says where ``memory_bytes`` comes from, for the message."""

    per_byte: float | None = None
    memory_bytes: int | None = None
    fraction: float = 1.0
    bytes_per_pixel: float = 1.0
    memory_from: str = ""

    @property
    def memory_pixels(self) -> int | None:
        if not self.memory_bytes:
            return None
        return int(self.memory_bytes * self.fraction / self.bytes_per_pixel)


class DecodeError(Exception):
    def __init__(self, code: str, message: str):
        self.code = code
        self.message = message
        super().__init__(f"{code}: {message}")


@dataclass
class Decoded:
    rgb: np.ndarray  # HxWx3 uint8, C-contiguous
    sha256: str
    source_format: str
    source_mode: str
    frames: int


def sha256_hex(data: bytes) -> str:
    return hashlib.sha256(data).hexdigest()


def read_input(uri: str, storage_options: dict | None = None) -> bytes:
    """Read the whole input file, or raise :class:`DecodeError` (``read_error``,
    ``not_a_file``) with a message that names ``uri`` and the reason.

    On a local filesystem the path is checked first with ``os.stat`` (symlinks followed):
    anything but a regular file is refused, because opening a FIFO blocks until a writer
    comes and a character device (``/dev/zero``, ``/dev/urandom``) never ends. Object
    stores hold only plain objects, so no extra request is made there.
    """
    import fsspec
    from fsspec.implementations.local import LocalFileSystem

    try:
        fs, path = fsspec.core.url_to_fs(uri, **(storage_options or {}))
        if isinstance(fs, LocalFileSystem):
            st = os.stat(path)
            if not stat.S_ISREG(st.st_mode):
                if stat.S_ISDIR(st.st_mode):
                    raise DecodeError("read_error", f"{uri}: is a directory")
                kind = ("a FIFO (named pipe)" if stat.S_ISFIFO(st.st_mode)
                        else "a character device" if stat.S_ISCHR(st.st_mode)
                        else "a block device" if stat.S_ISBLK(st.st_mode)
                        else "a socket" if stat.S_ISSOCK(st.st_mode) else "not a regular file")
                raise DecodeError("not_a_file", f"{uri}: is {kind}, not a regular file; "
                                                "reading it could block or never end")
        with fs.open(path, "rb") as f:
            return f.read()
    except DecodeError:
        raise
    except FileNotFoundError:
        raise DecodeError("read_error", f"{uri}: file not found (deleted or a broken link)") from None
    except PermissionError:
        raise DecodeError("read_error", f"{uri}: permission denied") from None
    except IsADirectoryError:
        raise DecodeError("read_error", f"{uri}: is a directory") from None
    except OSError as exc:
        if exc.errno == errno.ELOOP:
            raise DecodeError("read_error", f"{uri}: symbolic link loop (too many levels of symbolic links)") from None
        raise DecodeError("read_error", f"{uri}: cannot read ({exc.strerror or exc})") from None


#: plugin reasons that mean "a variant Pillow cannot decode", not damage
_UNSUPPORTED = re.compile(r"unsupported|not supported|cannot handle|unknown pixel mode|unrecognized mode|"
                          r"unknown (?:raw )?mode|bit depth|bits per", re.IGNORECASE)


def _claimed_format(data: bytes) -> tuple[str | None, str]:
    """The format whose signature check (Pillow's ``accept``) matches ``data``, and that
    plugin's own reason for refusing it; ``(None, "")`` if no format claims the bytes."""
    Image.init()
    prefix = data[:16]
    for fmt, (factory, accept) in Image.OPEN.items():
        if accept is None or fmt in ("MPEG", "IPTC"):  # too loose to call a match
            continue
        try:
            if not accept(prefix):
                continue
        except Exception:  # noqa: BLE001 - a signature check that chokes is no match
            continue
        try:
            factory(io.BytesIO(data), "")
        except Exception as exc:  # noqa: BLE001 - we want the plugin's reason, whatever it is
            return fmt, (str(exc) or type(exc).__name__)
        return fmt, "opened on its own but not by Image.open"
    return None, ""


def _webp_truncated(data: bytes) -> bool:
    """RIFF says how long a WebP file is; fewer bytes than that means it was cut off."""
    if len(data) >= 12 and data[:4] == b"RIFF" and data[8:12] == b"WEBP":
        return len(data) < int.from_bytes(data[4:8], "little") + 8
    return False


#: sample depths of real sensors and files: data in 16-bit containers is scaled by the smallest
#: of these that holds its largest value (12-bit data: / 4095, not / 65535, which made it black)
SAMPLE_BITS = (8, 10, 12, 14, 16)


def scale_to_8bit(arr: np.ndarray) -> np.ndarray:
    """``uint8`` from integer samples, scaled by their real range: the smallest sample depth in
    :data:`SAMPLE_BITS` that holds the largest value (10- and 12-bit data in 16-bit files)."""
    hi = int(arr.max()) if arr.size else 0
    bits = next((b for b in SAMPLE_BITS if hi < 1 << b), hi.bit_length())
    if bits <= 8:
        return np.clip(arr, 0, 255).astype(np.uint8)
    return np.clip(np.rint(arr.astype(np.float64) * (255.0 / ((1 << bits) - 1))), 0, 255).astype(np.uint8)


def _is_16bit_colour(im: Image.Image) -> bool:
    """A 16-bit-per-channel colour PNG or TIFF, which Pillow opens as 8-bit RGB(A) by keeping
    each sample's high byte (10/12-bit data then decodes to near-black). Read before load."""
    if im.mode not in ("RGB", "RGBA") or not im.tile:
        return False
    args = im.tile[0].args
    raw = args[0] if isinstance(args, tuple) else args
    return isinstance(raw, str) and ";16" in raw


def _decode_16bit_colour(data: bytes, im: Image.Image) -> Image.Image:
    """The 16-bit colour image decoded at full depth (OpenCV), scaled by its real range, alpha
    composited on white, EXIF orientation applied as Pillow would."""
    import cv2

    arr = cv2.imdecode(np.frombuffer(data, np.uint8), cv2.IMREAD_UNCHANGED)
    if arr is None or arr.ndim != 3 or arr.shape[2] not in (3, 4):
        raise ValueError("16-bit colour image that OpenCV cannot decode")
    code = cv2.COLOR_BGRA2RGBA if arr.shape[2] == 4 else cv2.COLOR_BGR2RGB
    out = Image.fromarray(scale_to_8bit(cv2.cvtColor(arr, code)), "RGBA" if arr.shape[2] == 4 else "RGB")
    method = _TRANSPOSE.get(im.getexif().get(0x0112, 1))
    return out.transpose(method) if method is not None else out


_TRANSPOSE = {2: Image.Transpose.FLIP_LEFT_RIGHT, 3: Image.Transpose.ROTATE_180, 4: Image.Transpose.FLIP_TOP_BOTTOM,
              5: Image.Transpose.TRANSPOSE, 6: Image.Transpose.ROTATE_270, 7: Image.Transpose.TRANSVERSE,
              8: Image.Transpose.ROTATE_90}


def _to_rgb(im: Image.Image) -> Image.Image:
    mode = im.mode
    if mode == "RGB":
        return im
    if mode in ("RGBA", "LA", "PA") or (mode == "P" and "transparency" in im.info):
        rgba = im.convert("RGBA")
        bg = Image.new("RGBA", rgba.size, (255, 255, 255, 255))
        return Image.alpha_composite(bg, rgba).convert("RGB")
    if mode.startswith("I;16") or mode == "I":  # integer samples: scaled by their real range
        grey = scale_to_8bit(np.clip(np.asarray(im, dtype=np.int64), 0, None))
        return Image.fromarray(grey, "L").convert("RGB")
    if mode == "F":  # assume 0..1 if it looks like it, else 0..255
        arr = np.asarray(im, dtype=np.float64)
        hi = float(np.nanmax(arr)) if arr.size else 0.0
        arr = arr * 255.0 if hi <= 1.0 else arr
        grey = np.clip(np.nan_to_num(arr), 0, 255).astype(np.uint8)
        return Image.fromarray(grey, "L").convert("RGB")
    # L, 1, P, CMYK, YCbCr, LAB, HSV, RGBX...
    return im.convert("RGB")


def _gib(n: float) -> str:
    return f"{n / 2**30:.1f} GiB"


def check_bounds(w: int, h: int, size: int, max_pixels: int, bounds: PixelBounds | None, label: str) -> None:
    """Refuse a ``w`` x ``h`` image of ``size`` bytes (from its header) that a cap does not allow."""
    px = w * h
    if px > max_pixels:
        raise DecodeError(
            "too_many_pixels",
            f"{label}: {w}x{h} = {px:,} pixels exceeds run.max_pixels = {max_pixels:,} (possible decompression bomb)",
        )
    if bounds is None:
        return
    if bounds.per_byte and px > RATIO_FLOOR_PIXELS and px > bounds.per_byte * size:
        raise DecodeError(
            "too_many_pixels_for_size",
            f"{label}: {w}x{h} = {px:,} pixels in a file of {size:,} bytes ({px / max(size, 1):,.0f} pixels per "
            f"byte) exceeds run.max_pixels_per_byte = {bounds.per_byte:g}: a decompression bomb (real photos store "
            f"under 15 pixels per byte); not decoded",
        )
    cap = bounds.memory_pixels
    if cap is not None and px > cap:
        raise DecodeError(
            "too_many_pixels_for_memory",
            f"{label}: {w}x{h} = {px:,} pixels exceeds this worker's memory bound of {cap:,} pixels "
            f"(run.worker_memory_fraction {bounds.fraction:g} x {_gib(bounds.memory_bytes)} of {bounds.memory_from} "
            f"/ run.bytes_per_pixel {bounds.bytes_per_pixel:g}): processing it would take about "
            f"{_gib(px * bounds.bytes_per_pixel)}; not decoded. Give each worker more memory (fewer run.actors per "
            f"node, or bigger nodes) and run again: a resumed run retries it",
        )


def decode_image(data: bytes, *, max_pixels: int, name: str = "", bounds: PixelBounds | None = None) -> Decoded:
    """Decode ``data``; ``name`` is used only in error messages. ``bounds``: the caps besides
    ``max_pixels``, checked from the header as it is (:class:`PixelBounds`)."""
    label = name or "<bytes>"
    if len(data) == 0:
        raise DecodeError("empty_file", f"{label}: file is empty (0 bytes)")
    digest = sha256_hex(data)
    if _webp_truncated(data):
        declared = int.from_bytes(data[4:8], "little") + 8
        raise DecodeError("truncated", f"{label}: WebP data is truncated ({len(data)} of {declared} bytes)")
    try:
        with warnings.catch_warnings():
            warnings.simplefilter("ignore")
            im = Image.open(io.BytesIO(data))
            w, h = im.size
            if w <= 0 or h <= 0:
                raise DecodeError("bad_dimensions", f"{label}: image header says {w}x{h}")
            check_bounds(w, h, len(data), max_pixels, bounds, label)
            frames = int(getattr(im, "n_frames", 1) or 1)
            fmt = im.format or "unknown"
            src_mode = im.mode
            im.seek(0)
            if _is_16bit_colour(im):
                src_mode += ";16"
                im = _decode_16bit_colour(data, im)
            else:
                im.load()
                im = ImageOps.exif_transpose(im) or im
            rgb = np.ascontiguousarray(np.asarray(_to_rgb(im), dtype=np.uint8))
    except DecodeError:
        raise
    except UnidentifiedImageError:
        fmt, why = _claimed_format(data)
        if fmt is None:
            raise DecodeError("not_an_image", f"{label}: not a recognised image format ({len(data)} bytes)") from None
        if _UNSUPPORTED.search(why):
            raise DecodeError("unsupported", f"{label}: {fmt} variant that cannot be decoded ({why})") from None
        raise DecodeError("bad_header", f"{label}: starts like a {fmt} file but its header cannot be read ({why})") from None
    except (OSError, SyntaxError, EOFError) as exc:
        text = str(exc)
        if _UNSUPPORTED.search(text):
            raise DecodeError("unsupported", f"{label}: image variant that cannot be decoded ({text})") from None
        if "truncated" in text.lower() or isinstance(exc, EOFError):
            raise DecodeError("truncated", f"{label}: image data is truncated ({text})") from None
        raise DecodeError("corrupt", f"{label}: image data is corrupt ({text})") from None
    except (ValueError, TypeError, MemoryError, Image.DecompressionBombError, ZeroDivisionError, IndexError, KeyError) as exc:
        raise DecodeError("corrupt", f"{label}: cannot decode ({type(exc).__name__}: {exc})") from None
    if rgb.ndim != 3 or rgb.shape[2] != 3 or rgb.shape[0] == 0 or rgb.shape[1] == 0:
        raise DecodeError("bad_dimensions", f"{label}: decoded to an unexpected shape {rgb.shape}")
    return Decoded(rgb=rgb, sha256=digest, source_format=fmt, source_mode=src_mode, frames=frames)

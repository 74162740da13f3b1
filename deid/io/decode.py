"""Safe decode: bytes -> sha256 -> RGB uint8 array, or a :class:`DecodeError` with a code.

Contract:
* never raises anything but :class:`DecodeError` for bad data (the batch goes on);
* the pixel cap is checked from the header, *before* pixels are decoded, so a
  decompression bomb costs a header read, not gigabytes;
* EXIF orientation is applied, then the image is converted to 8-bit RGB:
  greyscale, palette, CMYK, RGBA/LA (alpha composited on white), 16-bit and 32-bit
  integer and float modes are all accepted and converted;
* multi-frame files (animated GIF/WebP/PNG, multi-page TIFF): the first frame is used and
  ``frames`` says how many there were; nothing of the other frames is written out.

Error codes (stable, documented in docs/audit.md): ``empty_file``, ``not_an_image``,
``truncated``, ``corrupt``, ``too_many_pixels``, ``bad_dimensions``. (Reading the bytes
happens before, in the pipeline stage, whose failures are ``read_error``.)
"""

from __future__ import annotations

import hashlib
import io
import warnings
from dataclasses import dataclass

import numpy as np
from PIL import Image, ImageOps, UnidentifiedImageError

# deid enforces its own cap (run.max_pixels) before decoding; PIL's global cap would
# raise a different exception type at a different threshold.
Image.MAX_IMAGE_PIXELS = None


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


def _to_rgb(im: Image.Image) -> Image.Image:
    mode = im.mode
    if mode == "RGB":
        return im
    if mode in ("RGBA", "LA", "PA") or (mode == "P" and "transparency" in im.info):
        rgba = im.convert("RGBA")
        bg = Image.new("RGBA", rgba.size, (255, 255, 255, 255))
        return Image.alpha_composite(bg, rgba).convert("RGB")
    if mode in ("I;16", "I;16B", "I;16L", "I;16N", "I", "F"):
        arr = np.asarray(im, dtype=np.float64)
        if mode.startswith("I;16"):
            arr = arr / 257.0
        elif mode == "I":
            hi = float(arr.max()) if arr.size else 0.0
            arr = arr / 257.0 if hi > 255 else arr
        else:  # F: assume 0..1 if it looks like it, else 0..255
            hi = float(np.nanmax(arr)) if arr.size else 0.0
            arr = arr * 255.0 if hi <= 1.0 else arr
        grey = np.clip(np.nan_to_num(arr), 0, 255).astype(np.uint8)
        return Image.fromarray(grey, "L").convert("RGB")
    # L, 1, P, CMYK, YCbCr, LAB, HSV, RGBX...
    return im.convert("RGB")


def decode_image(data: bytes, *, max_pixels: int, name: str = "") -> Decoded:
    """Decode ``data``; ``name`` is used only in error messages."""
    label = name or "<bytes>"
    if len(data) == 0:
        raise DecodeError("empty_file", f"{label}: file is empty (0 bytes)")
    digest = sha256_hex(data)
    try:
        with warnings.catch_warnings():
            warnings.simplefilter("ignore")
            im = Image.open(io.BytesIO(data))
            w, h = im.size
            if w <= 0 or h <= 0:
                raise DecodeError("bad_dimensions", f"{label}: image header says {w}x{h}")
            if w * h > max_pixels:
                raise DecodeError(
                    "too_many_pixels",
                    f"{label}: {w}x{h} = {w * h:,} pixels exceeds run.max_pixels = {max_pixels:,} (possible decompression bomb)",
                )
            frames = int(getattr(im, "n_frames", 1) or 1)
            fmt = im.format or "unknown"
            src_mode = im.mode
            im.seek(0)
            im.load()
            im = ImageOps.exif_transpose(im) or im
            rgb = np.ascontiguousarray(np.asarray(_to_rgb(im), dtype=np.uint8))
    except DecodeError:
        raise
    except UnidentifiedImageError:
        raise DecodeError("not_an_image", f"{label}: not a recognised image format ({len(data)} bytes)") from None
    except (OSError, SyntaxError, EOFError) as exc:
        text = str(exc)
        if "truncated" in text.lower() or isinstance(exc, EOFError):
            raise DecodeError("truncated", f"{label}: image data is truncated ({text})") from None
        raise DecodeError("corrupt", f"{label}: image data is corrupt ({text})") from None
    except (ValueError, TypeError, MemoryError, Image.DecompressionBombError, ZeroDivisionError, IndexError, KeyError) as exc:
        raise DecodeError("corrupt", f"{label}: cannot decode ({type(exc).__name__}: {exc})") from None
    if rgb.ndim != 3 or rgb.shape[2] != 3 or rgb.shape[0] == 0 or rgb.shape[1] == 0:
        raise DecodeError("bad_dimensions", f"{label}: decoded to an unexpected shape {rgb.shape}")
    return Decoded(rgb=rgb, sha256=digest, source_format=fmt, source_mode=src_mode, frames=frames)

"""Untrusted image bytes, checked before any pixel is decoded: formats, media types, limits.

The header is read with Pillow's supported plugins only; an empty body, an unknown format or an
image over ``max_pixels`` is refused here (400/415/413), before decoding costs anything. The CPU
path (:mod:`.cpu`) and nvJPEG (:mod:`.gpu`) share these checks, so the same bytes get the same
refusal whichever decoder runs.
"""

from __future__ import annotations

import io
import threading
import warnings
from collections.abc import Iterator
from contextlib import contextmanager
from dataclasses import dataclass

from PIL import Image, UnidentifiedImageError

from resserve.errors import ImageTooLargeError, InvalidImageError, UnsupportedMediaTypeError

SUPPORTED_FORMATS = {"JPEG", "PNG", "WEBP", "BMP", "GIF", "TIFF"}
# Phones write JPEGs with extra pictures appended (MPO); Pillow names that format "MPO".
# The JPEG plugin opens those itself (there is no "MPO" opener to ask for).
_FORMAT_ALIASES = {"MPO": "JPEG"}
_OPEN_FORMATS = tuple(sorted(SUPPORTED_FORMATS))
SUPPORTED_MEDIA_TYPES = {
    "image/jpeg", "image/jpg", "image/pjpeg", "image/png", "image/x-png", "image/webp",
    "image/bmp", "image/x-bmp", "image/x-ms-bmp", "image/gif", "image/tiff",
}  # fmt: skip
# Types that say nothing about the content: accepted, the bytes are sniffed by decode_image.
_SNIFFED_MEDIA_TYPES = {"", "application/octet-stream"}
DEFAULT_MAX_PIXELS = 40_000_000
DEFAULT_MAX_JPEG_SCANS = 100
_SOS = b"\xff\xda"  # start of scan: a marker, never inside entropy-coded data (0xFF is stuffed there)


@dataclass(frozen=True)
class DecodeOptions:
    """Per-server decode limits and speed/accuracy trade-offs."""

    # Caps the decoded image and the resize target alike: a thin strip can be under the cap decoded
    # and far over it resized to the shorter side.
    max_pixels: int = DEFAULT_MAX_PIXELS
    # Decode work of a progressive JPEG is linear in its scans; counted in the bytes before decoding.
    max_jpeg_scans: int = DEFAULT_MAX_JPEG_SCANS
    # Let libjpeg decode at 1/2, 1/4 or 1/8 scale (never below the resize target). Much faster on
    # large photos, but no longer bit-identical to torchvision: opt-in.
    fast_jpeg_draft: bool = False
    # Resize only the centre-crop window (``Image.resize(box=...)``) and normalize with one fused
    # multiply-add into a preallocated array. Measured equal to the exact path on 500x375 JPEGs and
    # within ~0.006 (mean abs, normalized units) elsewhere; about 40% less CPU: opt-in.
    fast_transform: bool = False
    # Stop at uint8 (H, W, 3) RGB pixels after resize and crop: the engine normalizes inside the
    # model (``uint8_input`` models). Saves the float32 tensor and its normalize pass.
    uint8_pixels: bool = False


def check_media_type(content_type: str | None) -> None:
    """Reject declared non-image types early (415) before reading pixels; unknown types are sniffed."""
    if content_type is None:
        return
    media_type = content_type.split(";", 1)[0].strip().lower()
    if media_type in _SNIFFED_MEDIA_TYPES or media_type in SUPPORTED_MEDIA_TYPES:
        return
    raise UnsupportedMediaTypeError(
        f"unsupported media type {media_type!r}; send one of {', '.join(sorted(SUPPORTED_MEDIA_TYPES))}"
    )


# Pillow reports corrupt EXIF, decompression-bomb sizes and the like with warnings.warn. They are
# handled here (as errors or fallbacks) and must not reach callers. warnings.catch_warnings is not
# thread-safe before Python 3.14: two overlapping decodes in a thread pool can restore each other's
# filters and leave them changed for good. So one shared "ignore Pillow's warnings" filter is
# installed while at least one decode runs, counted under a lock.
_QUIET_MODULES = r"(PIL|resserve\.preprocess)(\.|$)"
_quiet_lock = threading.Lock()
_quiet_depth = 0


@contextmanager
def _pillow_warnings_ignored() -> Iterator[None]:
    global _quiet_depth
    with _quiet_lock:
        if _quiet_depth == 0:
            warnings.filterwarnings("ignore", module=_QUIET_MODULES)
        _quiet_depth += 1
    try:
        yield
    finally:
        with _quiet_lock:
            _quiet_depth -= 1
            if _quiet_depth == 0:  # remove exactly that filter (filterwarnings keeps one copy)
                warnings.filters[:] = [
                    f for f in warnings.filters if not (f[0] == "ignore" and _is_quiet_module(f[3]))
                ]


def _is_quiet_module(module: object) -> bool:
    return str(getattr(module, "pattern", "")).startswith(_QUIET_MODULES)


def _open(data: bytes) -> Image.Image:
    """Open (header only) with the supported plugins; name the format of anything else we refuse."""
    try:
        return Image.open(io.BytesIO(data), formats=_OPEN_FORMATS)
    except Image.DecompressionBombError as exc:
        raise ImageTooLargeError(f"image refused before decoding: {exc}") from exc
    except UnidentifiedImageError:
        pass
    except Exception as exc:
        raise InvalidImageError(f"cannot read image header: {exc}") from exc
    # Second look with every plugin, only to give a useful 415 instead of a vague 400.
    try:
        with Image.open(io.BytesIO(data)) as other:
            fmt = other.format
    except Image.DecompressionBombError as exc:
        raise ImageTooLargeError(f"image refused before decoding: {exc}") from exc
    except Exception as exc:
        raise InvalidImageError(f"cannot identify image data ({len(data)} bytes)") from exc
    raise UnsupportedMediaTypeError(
        f"unsupported image format {fmt!r}; supported: {', '.join(sorted(SUPPORTED_FORMATS))}"
    )


def _orientation(image: Image.Image) -> int:
    """EXIF orientation (1..8); garbage EXIF means "as stored", never a failed request."""
    try:
        value = int(image.getexif().get(0x0112, 1))
    except Exception:
        return 1
    return value if 1 <= value <= 8 else 1


@dataclass(frozen=True)
class ImageHeader:
    """What an image's header says, read and checked before any pixel is decoded."""

    format: str  # one of SUPPORTED_FORMATS
    width: int
    height: int
    # EXIF 1..8 for a JPEG (its APP1 segment precedes the pixels); None for other formats, whose
    # EXIF Pillow reads only by decoding (a PNG's eXIf chunk may follow its pixels).
    orientation: int | None


def _checked_header(data: bytes, options: DecodeOptions) -> tuple[Image.Image, ImageHeader]:
    """Open ``data`` (header only) and refuse it if empty, unsupported or over the pixel limit."""
    if not data:
        raise InvalidImageError("empty body: no image bytes")
    image = _open(data)
    fmt = _FORMAT_ALIASES.get(image.format or "", image.format or "")
    if fmt not in SUPPORTED_FORMATS:
        raise UnsupportedMediaTypeError(f"unsupported image format {image.format!r}")
    width, height = image.size
    if width < 1 or height < 1:
        raise InvalidImageError(f"image has no pixels ({width}x{height})")
    # The header's size, before any pixel is decoded: a 30000x30000 PNG of a few KB stops here.
    if width * height > options.max_pixels:
        raise ImageTooLargeError(
            f"image is {width}x{height} = {width * height} pixels; the limit is {options.max_pixels}"
        )
    if fmt == "JPEG" and (scans := data.count(_SOS)) > options.max_jpeg_scans:
        raise ImageTooLargeError(f"JPEG has {scans} scans; the limit is {options.max_jpeg_scans} (max_jpeg_scans): "
                                 "decoding costs time in proportion to them")
    return image, ImageHeader(fmt, width, height, _orientation(image) if fmt == "JPEG" else None)


def read_header(data: bytes, options: DecodeOptions = DecodeOptions()) -> ImageHeader:
    """The checks :func:`decode_image` makes before decoding, for a decoder other than Pillow's
    (nvJPEG): the same refusals (400/413/415) for the same bytes, and no pixel decoded."""
    with _pillow_warnings_ignored():
        return _checked_header(data, options)[1]

"""Image bytes -> model input tensor on the CPU: decode, orient, convert, resize, crop, normalize.

Pure functions driven by a :class:`~resserve.contract.PreprocessContract`. The serving path has no
torch, so this is numpy + Pillow only, written to reproduce torchvision's
``Resize -> CenterCrop -> ToTensor -> Normalize`` on PIL images bit for bit (checked against
hashes recorded from torchvision 0.28 in ``tests/fixtures/preprocess/reference.json``).

Every failure on untrusted bytes becomes one of three domain errors, which the server maps to
HTTP statuses: :class:`InvalidImageError` (400), :class:`ImageTooLargeError` (413) and
:class:`UnsupportedMediaTypeError` (415).
"""

from __future__ import annotations

import functools
import time

import numpy as np
from PIL import Image, ImageOps

from resserve.contract import PreprocessContract
from resserve.errors import ImageTooLargeError, InvalidImageError, ResserveError
from resserve.preprocess.headers import (
    DEFAULT_MAX_PIXELS,
    DecodeOptions,
    ImageHeader,
    _checked_header,
    _orientation,
    _pillow_warnings_ignored,
)

_RESAMPLE = {
    "nearest": Image.Resampling.NEAREST,
    "bilinear": Image.Resampling.BILINEAR,
    "bicubic": Image.Resampling.BICUBIC,
    "lanczos": Image.Resampling.LANCZOS,
}
_ALPHA_MODES = {"RGBA", "LA", "PA", "RGBa", "La"}
_SWAPS_AXES = {5, 6, 7, 8}  # EXIF orientations that transpose width and height
# 16-bit grey -> 8-bit, round(v * 255 / 65535) for every possible sample, looked up a tile at a time.
_WIDE_GREY_TO_8 = ((np.arange(65536, dtype=np.int64) * 255 + 32767) // 65535).astype(np.uint8)
_TILE_PIXELS = 1 << 20

def _resize_target(width: int, height: int, contract: PreprocessContract) -> tuple[int, int]:
    """(W, H) after Resize, as torchvision's ``_compute_resized_output_size`` computes it."""
    size = contract.resize_size
    if isinstance(size, tuple):  # only "exact" takes (W, H): the contract refuses it otherwise
        return size
    if contract.resize_mode == "exact":  # torchvision Resize((N, N))
        return size, size
    if width <= height:
        return size, int(size * height / width)
    return int(size * width / height), size


def _draft(image: Image.Image, contract: PreprocessContract) -> None:
    """Ask libjpeg for a power-of-2 reduced decode that stays at or above the resize target."""
    width, height = image.size
    target_w, target_h = _resize_target(width, height, contract)
    if contract.resize_mode == "exact" and _orientation(image) in _SWAPS_AXES:
        target_w, target_h = target_h, target_w  # the target is for the displayed (rotated) image
    # Pillow picks the largest scale s in 8/4/2/1 with s <= min(W // tw, H // th): never below target.
    if width >= 2 * target_w and height >= 2 * target_h:
        image.draft("RGB", (target_w, target_h))


def _is_wide_grey(mode: str) -> bool:
    return mode.startswith("I;16") or mode == "I"


def _wide_grey_to_l(image: Image.Image, *, tile_pixels: int = _TILE_PIXELS) -> Image.Image:
    """16-bit (I;16*) or 32-bit (I) grey -> L, 0..65535 scaled onto 0..255 with rounding.

    Pillow's own I;16 -> L clips at 255 instead. Mode I is taken to hold 16-bit samples too, as
    16-bit PNG/TIFF/PPM do; values outside 0..65535 clip. One table lookup per sample, a tile at a
    time, so the temporaries stay small however large the image: whole-image int64 arithmetic
    costs several times the decoded pixels.
    """
    width, height = image.size
    out = np.empty((height, width), dtype=np.uint8)
    tile_w = min(width, tile_pixels)
    tile_h = max(1, tile_pixels // tile_w)
    for top in range(0, height, tile_h):
        bottom = min(top + tile_h, height)
        for left in range(0, width, tile_w):
            right = min(left + tile_w, width)
            samples = np.asarray(image.crop((left, top, right, bottom)))
            out[top:bottom, left:right] = _WIDE_GREY_TO_8[np.clip(samples, 0, 65535)]
    return Image.fromarray(out)


def _to_rgb(image: Image.Image) -> Image.Image:
    """Any Pillow mode -> 8-bit RGB, transparency composited on white."""
    mode = image.mode
    if mode == "RGB" and "transparency" not in image.info:
        return image
    if _is_wide_grey(mode):
        return _wide_grey_to_l(image).convert("RGB")
    if mode in _ALPHA_MODES or "transparency" in image.info:
        rgba = image.convert("RGBA")
        white = Image.new("RGBA", rgba.size, (255, 255, 255, 255))
        return Image.alpha_composite(white, rgba).convert("RGB")
    # L, 1, P, CMYK, YCbCr, F (clipped to 0..255 by Pillow), ...
    return image.convert("RGB")


def decode_image(
    data: bytes, contract: PreprocessContract, options: DecodeOptions = DecodeOptions()
) -> Image.Image:
    """Untrusted bytes -> upright 8-bit RGB image, or a domain error; checks size before pixels."""
    with _pillow_warnings_ignored():
        return _decode_opened(*_checked_header(data, options), contract, options)


def _decode_opened(image: Image.Image, header: ImageHeader, contract: PreprocessContract,
                   options: DecodeOptions) -> Image.Image:
    """The pixels of an image whose header passed :func:`_checked_header`."""
    fmt = header.format
    try:
        if options.fast_jpeg_draft and fmt == "JPEG":
            _draft(image, contract)
        image.load()  # GIF/WebP/TIFF: the first frame, which Pillow opens at
        if _orientation(image) != 1:  # after load: a PNG's eXIf chunk may follow its pixels
            try:
                image = ImageOps.exif_transpose(image)
            except Exception:
                pass
        if _is_wide_grey(image.mode):
            image = _wide_grey_to_l(image)  # frees the wide samples before the RGB copy exists
        return _to_rgb(image)
    except ResserveError:
        raise
    except Exception as exc:
        raise InvalidImageError(f"cannot decode {fmt} image: {exc}") from exc


def _center_crop(image: Image.Image, crop_wh: tuple[int, int]) -> Image.Image:
    """torchvision ``center_crop``: pad with 0 where the image is smaller, then crop at the centre."""
    width, height = image.size
    crop_w, crop_h = crop_wh
    if (width, height) == (crop_w, crop_h):
        return image
    # torchvision pads floor(d/2) before; the padded axis then crops at offset 0. PIL's crop fills
    # outside the image with 0, so a negative offset is the same pad-then-crop in one step.
    # round(...) is Python's round-half-even, as in torchvision.
    left = -((crop_w - width) // 2) if crop_w > width else round((width - crop_w) / 2.0)
    top = -((crop_h - height) // 2) if crop_h > height else round((height - crop_h) / 2.0)
    return image.crop((left, top, left + crop_w, top + crop_h))


def resize_and_crop(
    image: Image.Image, contract: PreprocessContract, *, max_pixels: int = DEFAULT_MAX_PIXELS
) -> Image.Image:
    """torchvision ``Resize`` then ``CenterCrop`` on a PIL image, same pixels.

    Pillow always antialiases bilinear/bicubic/lanczos when shrinking, as torchvision does on PIL
    images whatever ``antialias`` says, so ``antialias=False`` gets the antialiased resize too
    (torchvision's tensor path would differ). The whole image is resized, then cropped:
    ``Image.resize(box=crop window)`` is faster but not bit-identical on every size. Only where the
    resized whole would exceed ``max_pixels`` is the crop window resized alone, since a thin strip
    under the decode limit can resize to tens of gigabytes; if that crop pads, the image is refused.
    """
    target = _resize_target(*image.size, contract)
    if target == image.size:  # torchvision returns the image untouched when sizes match
        return _center_crop(image, contract.crop_wh)
    if target[0] * target[1] > max_pixels:
        return _resize_window(image, target, contract, max_pixels)
    return _center_crop(image.resize(target, _RESAMPLE[contract.interpolation]), contract.crop_wh)


def _resize_window(
    image: Image.Image, target: tuple[int, int], contract: PreprocessContract, max_pixels: int
) -> Image.Image:
    """The centre crop of ``image`` resized to ``target``, computing only the pixels the crop keeps.

    The crop box is mapped back to source coordinates and resized straight to the crop size (Pillow
    scales its antialiasing filter by the box, so the kernel is the full resize's). A crop that pads
    has no such box: past ``max_pixels`` it is refused rather than resized whole.
    """
    width, height = image.size
    target_w, target_h = target
    crop_w, crop_h = contract.crop_wh
    if crop_w > target_w or crop_h > target_h:
        raise ImageTooLargeError(
            f"resizing the {width}x{height} image to {target_w}x{target_h} = {target_w * target_h} pixels "
            f"exceeds the limit of {max_pixels}, and the {crop_w}x{crop_h} crop pads it, so the resize "
            "cannot be limited to the crop"
        )
    left, top = round((target_w - crop_w) / 2.0), round((target_h - crop_h) / 2.0)
    scale_x, scale_y = width / target_w, height / target_h
    box = (left * scale_x, top * scale_y, (left + crop_w) * scale_x, (top + crop_h) * scale_y)
    return image.resize((crop_w, crop_h), _RESAMPLE[contract.interpolation], box=box)


def resize_crop_window(
    image: Image.Image, contract: PreprocessContract, *, max_pixels: int = DEFAULT_MAX_PIXELS
) -> Image.Image:
    """``resize_and_crop`` computing only the pixels the crop keeps (see :func:`_resize_window`).
    Falls back to the exact path where the crop pads or no resize is needed."""
    target_w, target_h = target = _resize_target(*image.size, contract)
    crop_w, crop_h = contract.crop_wh
    if crop_w > target_w or crop_h > target_h or target == image.size:
        return resize_and_crop(image, contract, max_pixels=max_pixels)
    return _resize_window(image, target, contract, max_pixels)


@functools.lru_cache(maxsize=64)
def _scale_bias(contract: PreprocessContract) -> tuple[np.ndarray, np.ndarray]:
    """Per-channel (scale, bias) with ``x * scale + bias == ((x / 255) - mean) / std`` (to ~1 ulp)."""
    std = np.asarray(contract.std, dtype=np.float64)
    mean = np.asarray(contract.mean, dtype=np.float64)
    divisor = 255.0 if contract.input_scale == "0-1" else 1.0
    return (1.0 / (divisor * std)).astype(np.float32), (-mean / std).astype(np.float32)


def to_tensor_fused(image: Image.Image, contract: PreprocessContract) -> np.ndarray:
    """``to_tensor`` as one multiply-add per element straight into the output layout."""
    if image.mode != "RGB":
        image = image.convert("RGB")
    pixels = np.asarray(image, dtype=np.uint8)
    if contract.color_order == "BGR":
        pixels = pixels[..., ::-1]
    scale, bias = _scale_bias(contract)
    if contract.layout == "NCHW":
        source = pixels.transpose(2, 0, 1)
        out = np.empty(source.shape, dtype=np.float32)
        np.multiply(source, scale[:, None, None], out=out)
        out += bias[:, None, None]
        return out
    out = np.multiply(pixels, scale, dtype=np.float32)
    out += bias
    return out


def to_pixels(image: Image.Image) -> np.ndarray:
    """The cropped image as uint8 (H, W, 3) RGB, for engines that normalize inside the model."""
    if image.mode != "RGB":
        image = image.convert("RGB")
    return np.asarray(image, dtype=np.uint8)


def to_tensor(image: Image.Image, contract: PreprocessContract) -> np.ndarray:
    """RGB image -> normalized float32, (C, H, W) or (H, W, C), C-contiguous.

    The float32 division by 255 and ``(x - mean) / std`` with float32 mean/std are the same IEEE
    operations as torchvision's ToTensor + Normalize, hence the same bits.
    """
    if image.mode != "RGB":
        image = image.convert("RGB")
    return normalize_pixels(np.asarray(image, dtype=np.uint8), contract)


def normalize_pixels(pixels: np.ndarray, contract: PreprocessContract) -> np.ndarray:
    """uint8 RGB pixels, (H, W, 3) or a batch (N, H, W, 3), -> what :func:`to_tensor` makes of them."""
    if contract.color_order == "BGR":
        pixels = pixels[..., ::-1]
    x = pixels.astype(np.float32)
    if contract.input_scale == "0-1":
        x /= np.float32(255.0)
    x -= np.asarray(contract.mean, dtype=np.float32)
    x /= np.asarray(contract.std, dtype=np.float32)
    if contract.layout == "NCHW":
        x = np.moveaxis(x, -1, -3)
    return np.ascontiguousarray(x)


def preprocess_timed(
    data: bytes, contract: PreprocessContract, options: DecodeOptions = DecodeOptions()
) -> tuple[np.ndarray, float, float]:
    """:func:`preprocess` plus (decode_seconds, transform_seconds) for the server's stage metrics."""
    start = time.perf_counter()
    image = decode_image(data, contract, options)
    return _transform_timed(image, contract, options, start)


_JPEG_MAGIC = b"\xff\xd8\xff"


def preprocess_small(
    data: bytes, contract: PreprocessContract, options: DecodeOptions, max_pixels: int
) -> tuple[np.ndarray, float, float] | None:
    """:func:`preprocess_timed` for a small JPEG, else None with nothing decoded. Such an image
    costs less to decode where it is than to hand to another thread (the server decodes it on
    its event loop), so "small" bounds all of its work: a JPEG (other formats carry chunks that
    Pillow inflates and parses in Python), of at most ``max_pixels`` by its header, whose resize
    is at most ``max_pixels`` or four crops (a thin strip resizes to millions of pixels)."""
    if not data.startswith(_JPEG_MAGIC):
        return None
    start = time.perf_counter()
    with _pillow_warnings_ignored():
        image, header = _checked_header(data, options)
        target_w, target_h = _resize_target(header.width, header.height, contract)
        crop_w, crop_h = contract.crop_wh
        if header.width * header.height > max_pixels or target_w * target_h > max(max_pixels, 4 * crop_w * crop_h):
            image.close()
            return None
        decoded = _decode_opened(image, header, contract, options)
    return _transform_timed(decoded, contract, options, start)


def _transform_timed(image: Image.Image, contract: PreprocessContract, options: DecodeOptions,
                     start: float) -> tuple[np.ndarray, float, float]:
    decoded = time.perf_counter()
    resize = resize_crop_window if options.fast_transform else resize_and_crop
    cropped = resize(image, contract, max_pixels=options.max_pixels)
    if options.uint8_pixels:
        tensor = to_pixels(cropped)
    elif options.fast_transform:
        tensor = to_tensor_fused(cropped, contract)
    else:
        tensor = to_tensor(cropped, contract)
    return tensor, decoded - start, time.perf_counter() - decoded


def preprocess(
    data: bytes, contract: PreprocessContract, options: DecodeOptions = DecodeOptions()
) -> np.ndarray:
    """One image file -> one model input, (C, H, W) or (H, W, C) float32, or with
    ``options.uint8_pixels`` (H, W, 3) uint8 RGB pixels."""
    return preprocess_timed(data, contract, options)[0]

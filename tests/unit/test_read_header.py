"""read_header: the CPU path's refusals for a decoder other than Pillow's, with no pixel decoded."""

from __future__ import annotations

import io

import numpy as np
import pytest
from PIL import Image

from resserve.config import ModelConfig
from resserve.errors import ImageTooLargeError, InvalidImageError, UnsupportedMediaTypeError
from resserve.preprocess import DecodeOptions, decode_image, read_header
from resserve.contract import imagenet_contract


def _encoded(fmt: str, size: tuple[int, int] = (64, 48), orientation: int | None = None) -> bytes:
    image = Image.fromarray(np.random.default_rng(0).integers(0, 255, (size[1], size[0], 3), dtype=np.uint8))
    out = io.BytesIO()
    if orientation is not None:
        exif = Image.Exif()
        exif[0x0112] = orientation
        image.save(out, fmt, exif=exif)
    else:
        image.save(out, fmt)
    return out.getvalue()


def test_the_header_says_format_size_and_orientation() -> None:
    header = read_header(_encoded("JPEG", (64, 48)))
    assert (header.format, header.width, header.height, header.orientation) == ("JPEG", 64, 48, 1)
    assert read_header(_encoded("JPEG", orientation=6)).orientation == 6
    png = read_header(_encoded("PNG"))
    assert png.format == "PNG" and png.orientation is None  # not read: Pillow would decode the PNG for it


@pytest.mark.parametrize("data, error", [
    (b"", InvalidImageError),
    (b"not an image at all", InvalidImageError),
    (_encoded("PPM"), UnsupportedMediaTypeError),
])
def test_the_header_refuses_what_the_cpu_path_refuses(data: bytes, error: type[Exception]) -> None:
    with pytest.raises(error):
        read_header(data)
    with pytest.raises(error):
        decode_image(data, imagenet_contract())


def test_the_pixel_limit_is_checked_on_the_header() -> None:
    data = _encoded("JPEG", (300, 200))
    limit = DecodeOptions(max_pixels=300 * 200 - 1)
    with pytest.raises(ImageTooLargeError, match="60000 pixels"):
        read_header(data, limit)
    with pytest.raises(ImageTooLargeError, match="60000 pixels"):
        decode_image(data, imagenet_contract(), limit)
    assert read_header(data, DecodeOptions(max_pixels=300 * 200)).width == 300


def test_gpu_decode_cannot_feed_a_uint8_input_model() -> None:
    base = {"name": "m", "source": {"onnx": "m.onnx"}, "engine": "openvino"}
    assert ModelConfig(**base, gpu_decode=True).gpu_decode
    with pytest.raises(ValueError, match="gpu_decode .* uint8_input"):
        ModelConfig(**base, gpu_decode=True, uint8_input=True)

"""Image bytes -> tensor: formats, modes, orientation, hostile input, layouts, torchvision parity.

Real files written with Pillow into tmp_path, no mocks. The torchvision reference hashes come from
tests/fixtures/make_preprocess_reference.py (torchvision 0.28 on the committed PNGs).
"""

from __future__ import annotations

import hashlib
import io
import json
import struct
import subprocess
import sys
import threading
import time
import tracemalloc
import warnings
import zlib
from pathlib import Path

import numpy as np
import pytest
from PIL import Image

from resserve.contract import PreprocessContract
from resserve.errors import ImageTooLargeError, InvalidImageError, UnsupportedMediaTypeError
from resserve.preprocess import (
    DecodeOptions,
    check_media_type,
    decode_image,
    preprocess,
    preprocess_small,
    preprocess_timed,
    resize_and_crop,
    to_tensor,
)
from resserve.synthetic import synthetic_image, synthetic_jpegs

FIXTURES = Path(__file__).parents[2] / "fixtures" / "preprocess"
REFERENCE = json.loads((FIXTURES / "reference.json").read_text())
CONTRACT = PreprocessContract()
MEAN = np.asarray(CONTRACT.mean, dtype=np.float32)
STD = np.asarray(CONTRACT.std, dtype=np.float32)


def encode(image: Image.Image, fmt: str, path: Path | None = None, **params: object) -> bytes:
    """Write a real file (to tmp_path when given) and return its bytes."""
    buf = io.BytesIO()
    image.save(buf, format=fmt, **params)
    data = buf.getvalue()
    if path is not None:
        path.write_bytes(data)
        data = path.read_bytes()
    return data


def normalized(rgb: tuple[int, int, int]) -> np.ndarray:
    """What one pixel value becomes, per channel, with the ImageNet contract."""
    return (np.asarray(rgb, dtype=np.float32) / np.float32(255.0) - MEAN) / STD


@pytest.fixture(scope="module")
def picture() -> Image.Image:
    return synthetic_image(320, 240, seed=3)


@pytest.fixture(scope="module")
def big_jpeg() -> bytes:
    return encode(synthetic_image(1280, 960, seed=11), "JPEG", quality=90)


# -- formats -------------------------------------------------------------------------------------


@pytest.mark.parametrize("fmt", ["JPEG", "PNG", "WEBP", "BMP", "TIFF", "GIF"])
def test_every_supported_format_gives_a_model_input(fmt: str, picture: Image.Image, tmp_path: Path) -> None:
    data = encode(picture, fmt, tmp_path / f"picture.{fmt.lower()}")
    x = preprocess(data, CONTRACT)
    assert x.shape == (3, 224, 224)
    assert x.dtype == np.float32 and x.flags.c_contiguous
    assert np.isfinite(x).all()


def test_lossless_formats_agree_bit_for_bit(picture: Image.Image, tmp_path: Path) -> None:
    png = preprocess(encode(picture, "PNG", tmp_path / "a.png"), CONTRACT)
    for fmt in ("BMP", "TIFF"):
        assert np.array_equal(preprocess(encode(picture, fmt, tmp_path / f"a.{fmt}"), CONTRACT), png)
    webp = encode(picture, "WEBP", tmp_path / "a.webp", lossless=True)
    assert np.array_equal(preprocess(webp, CONTRACT), png)


def test_animated_gif_uses_the_first_frame(tmp_path: Path) -> None:
    red = Image.new("RGB", (300, 260), (255, 0, 0))
    blue = Image.new("RGB", (300, 260), (0, 0, 255))
    data = encode(red, "GIF", tmp_path / "anim.gif", save_all=True, append_images=[blue], duration=100)
    with Image.open(io.BytesIO(data)) as check:
        assert check.n_frames == 2
    x = preprocess(data, CONTRACT)
    assert np.array_equal(x, np.broadcast_to(normalized((255, 0, 0))[:, None, None], x.shape))


# -- orientation ---------------------------------------------------------------------------------


def test_exif_orientation_is_applied(picture: Image.Image, tmp_path: Path) -> None:
    exif = Image.Exif()
    exif[0x0112] = 6  # stored landscape, displayed rotated 90 degrees clockwise
    rotated = encode(picture, "JPEG", tmp_path / "rot.jpg", quality=95, exif=exif.tobytes())
    plain = encode(picture, "JPEG", tmp_path / "plain.jpg", quality=95)
    upright = decode_image(rotated, CONTRACT)
    assert upright.size == (240, 320)
    # Same compressed pixels, so the same decode, turned: compare exactly.
    expected = decode_image(plain, CONTRACT).transpose(Image.Transpose.ROTATE_270)
    assert np.array_equal(np.asarray(upright), np.asarray(expected))
    lossless = encode(expected, "PNG", tmp_path / "upright.png")
    assert np.array_equal(preprocess(rotated, CONTRACT), preprocess(lossless, CONTRACT))


def test_garbage_exif_does_not_fail_the_request(picture: Image.Image, tmp_path: Path) -> None:
    garbage = b"Exif\x00\x00II*\x00\x08\x00\x00\x00\xff\xff\x12\x01\x03\x00" + b"\xee" * 40
    data = encode(picture, "JPEG", tmp_path / "garbage_exif.jpg", exif=garbage)
    assert preprocess(data, CONTRACT).shape == (3, 224, 224)


# -- modes ---------------------------------------------------------------------------------------


def test_grayscale_l_becomes_three_equal_channels(picture: Image.Image, tmp_path: Path) -> None:
    image = decode_image(encode(picture.convert("L"), "PNG", tmp_path / "gray.png"), CONTRACT)
    pixels = np.asarray(image)
    assert image.mode == "RGB"
    assert np.array_equal(pixels[..., 0], pixels[..., 1]) and np.array_equal(pixels[..., 1], pixels[..., 2])


def test_16_bit_grayscale_is_scaled_not_clipped(tmp_path: Path) -> None:
    values = np.array([0, 257, 1000, 32896, 65535], dtype=np.uint16)
    wide = np.repeat(np.repeat(values[None, :], 8, axis=0), 8, axis=1)
    data = encode(Image.fromarray(wide), "PNG", tmp_path / "deep.png")
    with Image.open(io.BytesIO(data)) as check:
        assert check.mode.startswith("I;16")
    pixels = np.asarray(decode_image(data, CONTRACT))[0, ::8, 0]
    assert pixels.tolist() == [0, 1, 4, 128, 255]  # round(v * 255 / 65535)


def test_32_bit_integer_and_float_tiffs_decode(tmp_path: Path) -> None:
    ints = Image.fromarray(np.full((40, 40), 65535, dtype=np.int32), "I")
    assert np.asarray(decode_image(encode(ints, "TIFF", tmp_path / "i.tif"), CONTRACT)).min() == 255
    floats = Image.fromarray(np.full((40, 40), 100.0, dtype=np.float32), "F")
    assert np.asarray(decode_image(encode(floats, "TIFF", tmp_path / "f.tif"), CONTRACT)).max() == 100


def test_palette_transparency_becomes_white(tmp_path: Path) -> None:
    image = Image.new("P", (260, 260), 0)
    image.putpalette([0, 0, 0, 200, 30, 30] + [0] * 762)
    image.paste(1, (0, 0, 130, 260))  # left half colour 1, right half colour 0 (transparent)
    data = encode(image, "PNG", tmp_path / "palette.png", transparency=0)
    pixels = np.asarray(decode_image(data, CONTRACT))
    assert pixels[10, 10].tolist() == [200, 30, 30]
    assert pixels[10, 250].tolist() == [255, 255, 255]


def test_cmyk_jpeg_becomes_rgb(tmp_path: Path) -> None:
    data = encode(Image.new("CMYK", (300, 260), (0, 255, 255, 0)), "JPEG", tmp_path / "cmyk.jpg")
    image = decode_image(data, CONTRACT)
    assert image.mode == "RGB"
    assert np.abs(np.asarray(image, dtype=int)[130, 150] - [255, 0, 0]).max() <= 8


def test_rgba_is_composited_on_white(tmp_path: Path) -> None:
    clear = Image.new("RGBA", (300, 260), (10, 200, 30, 0))
    x = preprocess(encode(clear, "PNG", tmp_path / "clear.png"), CONTRACT)
    white = normalized((255, 255, 255))  # (1 - mean) / std
    assert np.array_equal(x, np.broadcast_to(white[:, None, None], x.shape))
    half = Image.new("RGBA", (300, 260), (0, 0, 0, 128))
    pixels = np.asarray(decode_image(encode(half, "PNG", tmp_path / "half.png"), CONTRACT), dtype=int)
    assert np.abs(pixels - 127).max() <= 1


def test_la_is_composited_on_white(tmp_path: Path) -> None:
    la = Image.merge("LA", [Image.new("L", (260, 260), 0), Image.new("L", (260, 260), 0)])
    la.paste((0, 255), (0, 0, 130, 260))  # left opaque black, right transparent
    pixels = np.asarray(decode_image(encode(la, "PNG", tmp_path / "la.png"), CONTRACT))
    assert pixels[5, 5].tolist() == [0, 0, 0] and pixels[5, 255].tolist() == [255, 255, 255]


# -- hostile and wrong input ---------------------------------------------------------------------


@pytest.mark.parametrize("fmt", ["JPEG", "PNG"])
def test_truncated_files_are_invalid(fmt: str, picture: Image.Image, tmp_path: Path) -> None:
    data = encode(picture, fmt, tmp_path / f"whole.{fmt.lower()}")
    with pytest.raises(InvalidImageError):
        preprocess(data[: len(data) // 2], CONTRACT)


def test_corrupt_png_data_is_invalid(picture: Image.Image) -> None:
    data = bytearray(encode(picture, "PNG"))
    idat = data.index(b"IDAT")
    data[idat + 20 : idat + 60] = b"\x00" * 40  # CRC no longer matches, zlib stream broken
    with pytest.raises(InvalidImageError):
        preprocess(bytes(data), CONTRACT)


def test_corrupt_jpeg_header_is_invalid(picture: Image.Image) -> None:
    data = bytearray(encode(picture, "JPEG"))
    data[20:400] = b"\xff" * 380
    with pytest.raises(InvalidImageError):
        preprocess(bytes(data), CONTRACT)


@pytest.mark.parametrize("data", [b"", b"hello, this is not a picture\n" * 10, b"\x00" * 100])
def test_non_images_are_invalid(data: bytes) -> None:
    with pytest.raises(InvalidImageError):
        preprocess(data, CONTRACT)


@pytest.mark.parametrize("fmt", ["ICO", "PPM"])
def test_formats_pillow_reads_but_we_do_not_serve(fmt: str, tmp_path: Path) -> None:
    data = encode(Image.new("RGB", (64, 64), (1, 2, 3)), fmt, tmp_path / f"x.{fmt.lower()}")
    with pytest.raises(UnsupportedMediaTypeError, match=fmt):
        preprocess(data, CONTRACT)


@pytest.mark.parametrize(
    "content_type", ["text/plain", "application/json", "image/svg+xml", "application/pdf", "image/heic"]
)
def test_non_image_media_types_are_refused(content_type: str) -> None:
    with pytest.raises(UnsupportedMediaTypeError, match="unsupported media type"):
        check_media_type(content_type)


@pytest.mark.parametrize(
    "content_type",
    [None, "", "application/octet-stream", "image/jpeg", "IMAGE/PNG", "image/webp; q=1", "image/x-ms-bmp"],
)
def test_image_and_unknown_media_types_pass(content_type: str | None) -> None:
    check_media_type(content_type)


def png_claiming(width: int, height: int) -> bytes:
    """A real 1x1 PNG whose IHDR is patched to claim width x height (CRC fixed): a tiny bomb."""
    data = bytearray(encode(Image.new("RGB", (1, 1)), "PNG"))
    ihdr = data.index(b"IHDR")
    data[ihdr + 4 : ihdr + 12] = struct.pack(">II", width, height)
    crc = zlib.crc32(bytes(data[ihdr : ihdr + 17]))
    data[ihdr + 17 : ihdr + 21] = struct.pack(">I", crc)
    return bytes(data)


@pytest.mark.parametrize("side", [30_000, 10_000, 7_000])  # past Pillow's error, its warning, ours
def test_decompression_bomb_is_refused_before_decoding(side: int) -> None:
    data = png_claiming(side, side)
    tracemalloc.start()
    start = time.perf_counter()
    try:
        with pytest.raises(ImageTooLargeError, match=str(side * side)):
            preprocess(data, CONTRACT)
        elapsed = time.perf_counter() - start
        _, peak = tracemalloc.get_traced_memory()
    finally:
        tracemalloc.stop()
    assert elapsed < 1.0
    assert peak < 5_000_000  # nothing near width * height * 3 bytes


def test_max_pixels_is_configurable(picture: Image.Image) -> None:
    data = encode(picture, "PNG")
    with pytest.raises(ImageTooLargeError, match="320x240 = 76800 pixels; the limit is 50000"):
        preprocess(data, CONTRACT, DecodeOptions(max_pixels=50_000))
    assert preprocess(data, CONTRACT, DecodeOptions(max_pixels=76_800)).shape == (3, 224, 224)


def test_warning_filters_are_left_as_found(picture: Image.Image) -> None:
    before = list(warnings.filters)
    data = encode(picture, "JPEG")
    bomb = png_claiming(10_000, 10_000)

    def work() -> None:
        for _ in range(5):
            preprocess(data, CONTRACT)
            with pytest.raises(ImageTooLargeError):
                preprocess(bomb, CONTRACT)

    threads = [threading.Thread(target=work) for _ in range(4)]
    for thread in threads:
        thread.start()
    for thread in threads:
        thread.join()
    assert warnings.filters == before


# -- contract variants ---------------------------------------------------------------------------


def test_nhwc_is_the_same_numbers_channels_last(picture: Image.Image) -> None:
    data = encode(picture, "PNG")
    nchw = preprocess(data, CONTRACT)
    nhwc = preprocess(data, CONTRACT.model_copy(update={"layout": "NHWC"}))
    assert nhwc.shape == (224, 224, 3) and nhwc.flags.c_contiguous
    assert np.array_equal(nhwc, nchw.transpose(1, 2, 0))


def test_bgr_reverses_channels_with_mean_and_std_in_model_order(picture: Image.Image) -> None:
    data = encode(picture, "PNG")
    bgr = CONTRACT.model_copy(
        update={"color_order": "BGR", "mean": CONTRACT.mean[::-1], "std": CONTRACT.std[::-1]}
    )
    assert np.array_equal(preprocess(data, bgr), preprocess(data, CONTRACT)[::-1])


def test_0_255_scale_keeps_pixel_units(picture: Image.Image) -> None:
    data = encode(picture, "PNG")
    raw = CONTRACT.model_copy(update={"input_scale": "0-255", "mean": (0.0, 0.0, 0.0), "std": (1.0, 1.0, 1.0)})
    pixels = np.asarray(resize_and_crop(decode_image(data, raw), raw)).transpose(2, 0, 1)
    assert np.array_equal(preprocess(data, raw), pixels.astype(np.float32))
    caffe = raw.model_copy(update={"mean": (100.0, 110.0, 120.0), "std": (2.0, 2.0, 2.0)})
    expected = (pixels.astype(np.float32) - np.float32([100, 110, 120])[:, None, None]) / np.float32(2)
    assert np.array_equal(preprocess(data, caffe), expected)


def test_exact_resize_and_non_square_crop(picture: Image.Image) -> None:
    data = encode(picture, "PNG")
    exact = PreprocessContract(resize_mode="exact", resize_size=(300, 200), crop_size=(300, 200))
    assert preprocess(data, exact).shape == (3, 200, 300)
    cropped = exact.model_copy(update={"crop_size": (200, 100)})
    x = preprocess(data, cropped)
    assert x.shape == (3, 100, 200)
    assert np.array_equal(x, preprocess(data, exact)[:, 50:150, 50:250])  # the centre of the 300x200
    assert preprocess(data, cropped.model_copy(update={"layout": "NHWC"})).shape == (100, 200, 3)
    square = PreprocessContract(resize_mode="exact", resize_size=256, crop_size=256)
    assert np.array_equal(
        preprocess(data, square),
        to_tensor(decode_image(data, square).resize((256, 256), Image.Resampling.BILINEAR), square),
    )
    shorter = PreprocessContract(resize_size=256, crop_size=(224, 160))
    assert preprocess(data, shorter).shape == (3, 160, 224)


def test_to_tensor_accepts_a_non_rgb_image() -> None:
    x = to_tensor(Image.new("L", (4, 3), 255), CONTRACT)
    assert x.shape == (3, 3, 4)
    assert np.array_equal(x[:, 0, 0], normalized((255, 255, 255)))


def test_timed_gives_the_same_tensor_and_stage_times(picture: Image.Image) -> None:
    data = encode(picture, "JPEG")
    x, decode_s, transform_s = preprocess_timed(data, CONTRACT)
    assert np.array_equal(x, preprocess(data, CONTRACT))
    assert 0 < decode_s < 5 and 0 < transform_s < 5


# -- torchvision parity --------------------------------------------------------------------------


@pytest.mark.parametrize("case", sorted(REFERENCE["cases"]))
def test_bit_identical_to_torchvision(case: str) -> None:
    ref = REFERENCE["cases"][case]
    contract = PreprocessContract(**ref["contract"])
    x = preprocess((FIXTURES / ref["file"]).read_bytes(), contract)
    assert list(x.shape) == ref["shape"]
    assert x.mean(dtype=np.float64) == pytest.approx(ref["mean"], abs=1e-9)
    assert x.std(dtype=np.float64) == pytest.approx(ref["std"], abs=1e-9)
    assert hashlib.sha256(x.tobytes()).hexdigest() == ref["sha256"]


# -- JPEG draft fast path ------------------------------------------------------------------------


def test_jpeg_draft_decodes_smaller_and_stays_close(big_jpeg: bytes) -> None:
    fast = DecodeOptions(fast_jpeg_draft=True)
    image = decode_image(big_jpeg, CONTRACT, fast)
    assert image.size == (640, 480)  # 1/2 scale: 1/4 would go below the 256 shorter side
    assert min(image.size) >= CONTRACT.resize_size
    exact, drafted = preprocess(big_jpeg, CONTRACT), preprocess(big_jpeg, CONTRACT, fast)
    assert drafted.shape == exact.shape
    assert np.abs(exact - drafted).mean() < 0.05


def test_jpeg_draft_is_skipped_when_it_would_not_pay(picture: Image.Image) -> None:
    data = encode(picture, "JPEG")
    fast = DecodeOptions(fast_jpeg_draft=True)
    assert decode_image(data, CONTRACT, fast).size == (320, 240)
    assert np.array_equal(preprocess(data, CONTRACT, fast), preprocess(data, CONTRACT))


def test_jpeg_draft_respects_orientation_in_exact_mode(tmp_path: Path) -> None:
    exif = Image.Exif()
    exif[0x0112] = 6
    data = encode(synthetic_image(1600, 800, seed=5), "JPEG", tmp_path / "wide.jpg", exif=exif.tobytes())
    # Displayed 800x1600. Read in the stored (unrotated) frame, a (400, 200) target would allow
    # 1/4 scale and a displayed 200x400, below the target width; the rotated target allows 1/2.
    exact = PreprocessContract(resize_mode="exact", resize_size=(400, 200), crop_size=(400, 200))
    image = decode_image(data, exact, DecodeOptions(fast_jpeg_draft=True))
    assert image.size == (400, 800)
    assert preprocess(data, exact, DecodeOptions(fast_jpeg_draft=True)).shape == (3, 200, 400)


def test_serving_path_does_not_import_torch() -> None:
    code = "import sys, resserve.preprocess; sys.exit('torch' in sys.modules)"
    assert subprocess.run([sys.executable, "-c", code], check=False).returncode == 0


def test_synthetic_jpegs_cycle_the_sizes_from_consecutive_seeds() -> None:
    data = synthetic_jpegs(3, ((40, 30), (30, 40)), seed=7, quality=80)
    assert [Image.open(io.BytesIO(d)).size for d in data] == [(40, 30), (30, 40), (40, 30)]
    assert data[2] == encode(synthetic_image(40, 30, 9), "JPEG", quality=80)


# ---- the fast path (crop-window resize, fused normalize): close to the exact path, never far ----

FAST = DecodeOptions(fast_transform=True)


def _jpeg_bytes(width: int, height: int, seed: int = 4) -> bytes:
    return synthetic_jpegs(1, ((width, height),), seed)[0]


@pytest.mark.parametrize("size", [(500, 375), (375, 500), (1280, 960), (320, 240), (257, 1000), (640, 640)])
@pytest.mark.parametrize("contract", [
    PreprocessContract(),
    PreprocessContract(layout="NHWC", color_order="BGR"),
    PreprocessContract(input_scale="0-255", mean=(123.7, 116.3, 103.5), std=(58.4, 57.1, 57.4)),
    PreprocessContract(resize_mode="exact", resize_size=(240, 240), crop_size=(224, 224), interpolation="bicubic"),
])
def test_fast_transform_stays_close_to_the_exact_path(size: tuple[int, int], contract: PreprocessContract) -> None:
    data = _jpeg_bytes(*size)
    exact, fast = preprocess(data, contract), preprocess(data, contract, FAST)
    assert fast.shape == exact.shape and fast.dtype == np.float32 and fast.flags.c_contiguous
    spread = float(np.asarray(contract.std).mean()) * (255.0 if contract.input_scale == "0-255" else 1.0)
    # Mean deviation within 0.01 normalized units (well under one grey level), no pixel off by more than
    # a few grey levels.
    assert np.abs(fast - exact).mean() / spread * float(np.asarray(contract.std).mean()) < 0.01
    assert np.abs(fast - exact).max() < 8 / 255 / min(contract.std) * (255 if contract.input_scale == "0-255" else 1)


def test_fast_transform_is_within_one_grey_level_on_500x375() -> None:
    """The measured common case: about 0.1% of values one grey level apart, the rest equal."""
    data = _jpeg_bytes(500, 375)
    diff = np.abs(preprocess(data, PreprocessContract(), FAST) - preprocess(data, PreprocessContract()))
    one_level = 1 / 255 / min(PreprocessContract().std)
    assert diff.max() <= one_level * 1.001 and diff.mean() < 1e-4 and (diff > 1e-5).mean() < 0.01


def test_fast_transform_falls_back_where_the_crop_pads() -> None:
    data = _jpeg_bytes(100, 80)  # smaller than the crop: torchvision pads, the box trick cannot
    contract = PreprocessContract(resize_mode="exact", resize_size=(100, 80), crop_size=224)
    assert np.abs(preprocess(data, contract, FAST) - preprocess(data, contract)).max() < 1e-5


def test_bench_preprocess_reports_every_mode_with_its_deviation() -> None:
    from resserve.perf.bench_preprocess import MODES, bench_preprocess

    results = bench_preprocess([(640, 480)], images=2, rounds=1, round_s=0.05)
    assert [r.mode for r in results] == list(MODES)
    by_mode = {r.mode: r for r in results}
    assert by_mode["exact"].max_abs_deviation == 0.0
    assert 0 < by_mode["both"].mean_abs_deviation < 0.01 and all(r.ms_per_image > 0 for r in results)


@pytest.mark.parametrize("fast", [False, True])
def test_a_small_image_decoded_where_it_is_matches_the_threaded_path(fast: bool) -> None:
    """``preprocess_small`` (the server's decode on its event loop) is the same decode as
    ``preprocess_timed``; an image whose header says more pixels is left undecoded (None)."""
    contract = PreprocessContract(resize_size=32, crop_size=28)
    options = DecodeOptions(fast_jpeg_draft=fast, fast_transform=fast)
    small, large = synthetic_jpegs(2, ((48, 36), (200, 150)))
    inline = preprocess_small(small, contract, options, max_pixels=48 * 36)
    assert inline is not None
    np.testing.assert_array_equal(inline[0], preprocess_timed(small, contract, options)[0])
    assert preprocess_small(large, contract, options, max_pixels=48 * 36) is None
    assert preprocess_small(small, contract, options, max_pixels=48 * 36 - 1) is None
    # Only a JPEG whose whole work is small: a PNG (chunks Pillow inflates and parses in Python)
    # and a thin strip (a 5 x 3000 JPEG resizes to 32 x 19,200) go to the threads.
    png, strip = io.BytesIO(), io.BytesIO()
    Image.new("RGB", (48, 36)).save(png, format="PNG")
    Image.new("RGB", (5, 3000)).save(strip, format="JPEG")
    assert preprocess_small(png.getvalue(), contract, options, max_pixels=16384) is None
    assert preprocess_small(strip.getvalue(), contract, options, max_pixels=16384) is None
    assert preprocess_small(b"not an image", contract, options, max_pixels=10_000) is None
    with pytest.raises(InvalidImageError):  # a JPEG's refusals are the threaded path's
        preprocess_small(small[:200], contract, options, max_pixels=10_000)

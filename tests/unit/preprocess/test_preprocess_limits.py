"""Every image costs what the decode limit allows: resize targets and 16-bit conversion stay bounded.

A thin strip under ``max_pixels`` decoded can resize (shorter side to 256) to tens of gigabytes, and
whole-image int64 arithmetic on 16-bit samples costs several times the decoded pixels. Memory is
measured in a child process (Pillow allocates in C, out of tracemalloc's sight) under an address
space limit, so a regression fails fast instead of taking the shared machine's memory.
"""

from __future__ import annotations

import io
import json
import subprocess
import sys
from collections.abc import Callable
from pathlib import Path

import numpy as np
import pytest
from PIL import Image

from resserve.contract import PreprocessContract, imagenet_contract
from resserve.errors import ImageTooLargeError
from resserve.preprocess import read_header
from resserve.preprocess.cpu import (
    DecodeOptions,
    _to_rgb,
    _wide_grey_to_l,
    decode_image,
    preprocess,
    resize_and_crop,
    resize_crop_window,
)


Resize = Callable[..., Image.Image]


def old_wide_grey(image: Image.Image) -> np.ndarray:
    """The formula the table replaces, as it was written: whole-image int64."""
    wide = np.clip(np.asarray(image, dtype=np.int64), 0, 65535)
    return ((wide * 255 + 32767) // 65535).astype(np.uint8)


def png(image: Image.Image) -> bytes:
    buffer = io.BytesIO()
    image.save(buffer, format="PNG")
    return buffer.getvalue()


# -- 16-bit and 32-bit grey -> 8-bit ----------------------------------------------------------


EVERY_SAMPLE = np.arange(65536, dtype=np.uint32).reshape(256, 256)


@pytest.mark.parametrize("mode, dtype", [("I;16", "<u2"), ("I;16L", "<u2"), ("I;16B", ">u2")])
def test_table_equals_the_formula_on_every_16_bit_value(mode: str, dtype: str) -> None:
    image = Image.frombytes(mode, (256, 256), EVERY_SAMPLE.astype(dtype).tobytes())
    assert image.mode == mode and np.array_equal(np.asarray(image, dtype=np.int64), EVERY_SAMPLE)
    expected = old_wide_grey(image)
    assert np.array_equal(np.asarray(_wide_grey_to_l(image)), expected)
    rgb = np.asarray(_to_rgb(image))
    assert all(np.array_equal(rgb[..., c], expected) for c in range(3))


def test_mode_i_clips_outside_16_bits_as_the_formula_does() -> None:
    edges = [-(2**31), -65536, -1, 0, 1, 32767, 32768, 65534, 65535, 65536, 70000, 2**24, 2**31 - 1]
    values = np.concatenate([np.asarray(edges, dtype=np.int64), np.arange(65536)]).astype(np.int32)
    image = Image.fromarray(values.reshape(1, -1))
    assert image.mode == "I"
    assert np.array_equal(np.asarray(_wide_grey_to_l(image)), old_wide_grey(image))


@pytest.mark.parametrize("tile_pixels", [1, 7, 13, 64, 10_000])
def test_tiles_cover_every_pixel_once(tile_pixels: int) -> None:
    rng = np.random.default_rng(14)
    image = Image.fromarray(rng.integers(-70_000, 140_000, size=(11, 13), dtype=np.int32))
    assert np.array_equal(np.asarray(_wide_grey_to_l(image, tile_pixels=tile_pixels)), old_wide_grey(image))


@pytest.mark.parametrize("mode", ["I;16", "I;16B", "I"])
def test_decode_gives_the_formula_for_wide_grey_files(mode: str, tmp_path: Path) -> None:
    rng = np.random.default_rng(3)
    samples = rng.integers(0, 65536, size=(37, 53), dtype=np.int64)
    image = Image.fromarray(samples.astype(np.int32)) if mode == "I" else Image.frombytes(
        mode, (53, 37), samples.astype("<u2" if mode == "I;16" else ">u2").tobytes())
    image.save(tmp_path / "wide.tif")  # TIFF keeps all three modes' samples
    with Image.open(tmp_path / "wide.tif") as stored:
        assert stored.mode.startswith("I")
    decoded = np.asarray(decode_image((tmp_path / "wide.tif").read_bytes(), PreprocessContract()))
    assert np.array_equal(decoded[..., 0], old_wide_grey(image)) and decoded.shape == (37, 53, 3)


# -- resize targets over the limit ----------------------------------------------------------


def strip(width: int, height: int) -> Image.Image:
    """A thin grey strip with a slow ramp along its length, as RGB."""
    ramp = (np.arange(height) * 255 // max(height - 1, 1)).astype(np.uint8)
    return Image.fromarray(np.ascontiguousarray(np.broadcast_to(ramp[:, None], (height, width)))).convert("RGB")


@pytest.mark.parametrize("resize", [resize_and_crop, resize_crop_window])
def test_over_the_limit_only_the_crop_window_is_resized(resize: Resize) -> None:
    image = strip(8, 2000)  # target 256 x 64000: far over a limit of 1 M pixels
    contract = imagenet_contract()
    limited = resize(image, contract, max_pixels=1_000_000)
    assert limited.size == (224, 224)
    assert np.array_equal(np.asarray(limited), np.asarray(resize_crop_window(image, contract)))
    whole = np.asarray(resize_and_crop(image, contract, max_pixels=10**9), dtype=np.float64)
    assert np.abs(np.asarray(limited, dtype=np.float64) - whole).max() <= 1  # one grey level at most


def test_under_the_limit_the_exact_path_resizes_the_whole_image() -> None:
    image = strip(300, 200)  # target 384 x 256
    contract = imagenet_contract()
    whole = image.resize((384, 256), Image.Resampling.BILINEAR).crop((80, 16, 304, 240))
    assert np.array_equal(np.asarray(resize_and_crop(image, contract, max_pixels=384 * 256)), np.asarray(whole))


@pytest.mark.parametrize("resize", [resize_and_crop, resize_crop_window])
def test_over_the_limit_a_padding_crop_is_413(resize: Resize) -> None:
    contract = PreprocessContract(resize_size=256, crop_size=300)  # the crop pads the 256 side
    with pytest.raises(ImageTooLargeError, match=r"256x64000 = 16384000 pixels exceeds the limit of 1000000"):
        resize(strip(8, 2000), contract, max_pixels=1_000_000)


@pytest.mark.parametrize("fast", [False, True])
def test_preprocess_applies_the_decode_limit_to_the_resize_target(fast: bool) -> None:
    data = png(strip(8, 2000).convert("L"))
    options = DecodeOptions(max_pixels=1_000_000, fast_transform=fast)
    assert preprocess(data, imagenet_contract(), options).shape == (3, 224, 224)
    with pytest.raises(ImageTooLargeError, match="limit of 1000000"):
        preprocess(data, PreprocessContract(resize_size=256, crop_size=300), options)


# -- whole-process peak memory --------------------------------------------------------------


# Imports alone (numpy, Pillow, pydantic, resserve.preprocess) peak at about 45 MiB. A 40 M pixel
# image decoded as L and converted to RGB (Pillow stores 4 bytes a pixel) is about 190 MiB on top,
# which nothing can avoid; the budget leaves room for that and for allocator slack, not for a
# second whole-image copy in int64 or a resize of the whole strip.
PEAK_BUDGET_MIB = 400
# The child's address space limit: a regression hits MemoryError here, not the machine's memory.
ADDRESS_SPACE_LIMIT = 2 << 30

# The child reads its own VmHWM, not ru_maxrss: exec carries the parent's high-water mark into
# ru_maxrss (pytest's own peak would count), VmHWM belongs to the child's fresh address space.
CHILD = """
import json, resource, sys
resource.setrlimit(resource.RLIMIT_AS, ({limit}, {limit}))
def hwm_kib():
    return next(int(line.split()[1]) for line in open("/proc/self/status") if line.startswith("VmHWM:"))
from resserve.contract import imagenet_contract
from resserve.preprocess import DecodeOptions, preprocess
imports = hwm_kib()
tensor = preprocess(open(sys.argv[1], "rb").read(), imagenet_contract(), DecodeOptions(fast_transform=sys.argv[2] == "fast"))
assert tensor.shape == (3, 224, 224), tensor.shape
print(json.dumps({{"imports_kib": imports, "peak_kib": hwm_kib()}}))
"""


def peak_rss_mib(path: Path, fast: bool) -> tuple[float, float]:
    """(imports, whole run) peak RSS of a child that preprocesses ``path`` with the default limits."""
    done = subprocess.run(
        [sys.executable, "-c", CHILD.format(limit=ADDRESS_SPACE_LIMIT), str(path), "fast" if fast else "exact"],
        capture_output=True, text=True, timeout=120, check=False,
    )
    assert done.returncode == 0, done.stderr[-2000:]
    figures = json.loads(done.stdout.strip().splitlines()[-1])
    return figures["imports_kib"] / 1024, figures["peak_kib"] / 1024


linux_only = pytest.mark.skipif(sys.platform != "linux", reason="reads /proc/self/status")


@pytest.fixture(scope="module")
def tall_grey_png(tmp_path_factory: pytest.TempPathFactory) -> Path:
    """20 x 2,000,000 L: exactly the default 40 M pixel limit, about 100 kB as PNG."""
    ramp = (np.arange(2_000_000) // 7919 % 256).astype(np.uint8)
    path = tmp_path_factory.mktemp("limits") / "tall.png"
    Image.fromarray(np.ascontiguousarray(np.broadcast_to(ramp[:, None], (2_000_000, 20)))).save(path)
    return path


@pytest.fixture(scope="module")
def wide_16_bit_png(tmp_path_factory: pytest.TempPathFactory) -> Path:
    """8000 x 5000 I;16: 40 M pixels, under 100 kB as PNG."""
    ramp = (np.arange(8000, dtype=np.uint16) * 8)[None, :]
    path = tmp_path_factory.mktemp("limits") / "wide16.png"
    Image.fromarray(np.ascontiguousarray(np.broadcast_to(ramp, (5000, 8000)))).save(path)
    with Image.open(path) as stored:
        assert stored.mode == "I;16"
    return path


@linux_only
@pytest.mark.parametrize("fast", [False, True])
def test_a_thin_strip_at_the_pixel_limit_preprocesses_in_bounded_memory(tall_grey_png: Path, fast: bool) -> None:
    assert tall_grey_png.stat().st_size < 200_000
    imports, peak = peak_rss_mib(tall_grey_png, fast)
    assert peak < PEAK_BUDGET_MIB, f"peak RSS {peak:.0f} MiB (imports {imports:.0f} MiB)"


@linux_only
@pytest.mark.parametrize("fast", [False, True])
def test_a_16_bit_image_at_the_pixel_limit_preprocesses_in_bounded_memory(wide_16_bit_png: Path, fast: bool) -> None:
    assert wide_16_bit_png.stat().st_size < 200_000
    imports, peak = peak_rss_mib(wide_16_bit_png, fast)
    assert peak < PEAK_BUDGET_MIB, f"peak RSS {peak:.0f} MiB (imports {imports:.0f} MiB)"


def _progressive_jpeg_with_scans(scans: int, size: int = 64) -> bytes:
    """A valid progressive JPEG whose last scan is repeated until it has ``scans`` scans (the attack:
    decode cost linear in scans, pixels within the limit)."""
    buffer = io.BytesIO()
    rng = np.random.default_rng(0)
    Image.fromarray(rng.integers(0, 256, (size, size, 3), dtype=np.uint8)).save(
        buffer, "JPEG", progressive=True, quality=90)
    data = buffer.getvalue()
    last, end = data.rindex(b"\xff\xda"), data.rindex(b"\xff\xd9")
    return data[:end] + data[last:end] * (scans - data.count(b"\xff\xda")) + data[end:]


def test_a_jpeg_with_too_many_scans_is_refused_before_decoding() -> None:
    contract = imagenet_contract()
    within = _progressive_jpeg_with_scans(90)
    assert within.count(b"\xff\xda") == 90
    assert decode_image(within, contract).size == (64, 64)  # a valid file: only its cost is refused
    with pytest.raises(ImageTooLargeError, match=r"JPEG has 150 scans; the limit is 100 \(max_jpeg_scans\)"):
        decode_image(_progressive_jpeg_with_scans(150), contract)
    with pytest.raises(ImageTooLargeError, match="limit is 80"):
        read_header(within, DecodeOptions(max_jpeg_scans=80))  # nvJPEG's path makes the same check

"""Fuzzing the decode/preprocess path with hypothesis: every input is an image or a 4xx, never a crash.

Seeds are real encodings of image-like pictures in every accepted format plus the awkward modes
(CMYK, 16-bit, palette with transparency, 1-bit, LA); hypothesis truncates, flips, splices and
replaces their bytes. The contract: ``preprocess`` returns a float32 tensor of the model's shape,
or raises a ResserveError whose HTTP status is 400, 413 or 415. In CI each property runs a bounded
number of examples; ``RESSERVE_FUZZ_EXAMPLES=20000`` makes a long run (see README, Reliability).
The slow test (``RESSERVE_SLOW=1``) runs the same mutations from a seeded ``random.Random`` instead,
without hypothesis's per-example bookkeeping and shrinking, over ``RESSERVE_SLOW_FUZZ_INPUTS`` inputs.
"""

from __future__ import annotations

import hashlib
import os
import random
import struct
import time
import zlib

import numpy as np
import pytest
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st
from PIL import Image

from resserve.contract import imagenet_contract
from resserve.errors import ImageTooLargeError, InvalidImageError, ResserveError, UnsupportedMediaTypeError
from resserve.preprocess import DecodeOptions, preprocess
from resserve.server.error_responses import status_of
from resserve.synthetic import synthetic_image
from tests.fuzz_seeds import SEEDS, encode

EXAMPLES = int(os.environ.get("RESSERVE_FUZZ_EXAMPLES", "150"))
SLOW_INPUTS = int(os.environ.get("RESSERVE_SLOW_FUZZ_INPUTS", "100000"))
CONTRACT = imagenet_contract()
OPTIONS = DecodeOptions(max_pixels=4_000_000)
FUZZ = settings(max_examples=EXAMPLES, deadline=None, derandomize=os.environ.get("RESSERVE_FUZZ_EXAMPLES") is None,
                suppress_health_check=[HealthCheck.too_slow, HealthCheck.data_too_large])


def check(data: bytes) -> bool:
    """The property: a tensor of the model's shape (True), or a client error, 400/413/415 (False)."""
    try:
        tensor = preprocess(data, CONTRACT, OPTIONS)
    except ResserveError as exc:
        assert status_of(exc) in {400, 413, 415}, (type(exc).__name__, exc)
        return False
    assert tensor.shape == (3, 224, 224) and tensor.dtype == np.float32
    assert np.isfinite(tensor).all()
    return True


@st.composite
def mutants(draw: st.DrawFn) -> bytes:
    data = bytearray(draw(st.sampled_from(SEEDS)))
    for _ in range(draw(st.integers(1, 4))):
        kind = draw(st.sampled_from(["truncate", "flip", "splice", "overwrite", "duplicate"]))
        at = draw(st.integers(0, max(len(data) - 1, 0)))
        if kind == "truncate":
            del data[at:]
        elif kind == "flip" and data:
            data[at] ^= 1 << draw(st.integers(0, 7))
        elif kind == "splice":
            data[at:at] = draw(st.binary(min_size=1, max_size=64))
        elif kind == "overwrite":
            chunk = draw(st.binary(min_size=1, max_size=16))
            data[at:at + len(chunk)] = chunk
        elif kind == "duplicate":
            data[at:at] = data[at:at + draw(st.integers(1, 512))]
    return bytes(data)


@FUZZ
@given(mutants())
def test_mutated_images_are_decoded_or_refused_cleanly(data: bytes) -> None:
    check(data)


@FUZZ
@given(st.binary(max_size=4096))
def test_arbitrary_bytes_are_refused_cleanly(data: bytes) -> None:
    check(data)


@FUZZ
@given(st.text(max_size=2000))
def test_text_sent_as_an_image_is_refused(text: str) -> None:
    with pytest.raises((InvalidImageError, UnsupportedMediaTypeError)):
        preprocess(text.encode(), CONTRACT, OPTIONS)


def seeded_mutant(rng: random.Random) -> bytes:
    """One input as :func:`mutants` draws it, from ``rng``: 1-4 of the same five byte mutations."""
    data = bytearray(rng.choice(SEEDS))
    for _ in range(rng.randint(1, 4)):
        kind = rng.choice(["truncate", "flip", "splice", "overwrite", "duplicate"])
        at = rng.randint(0, max(len(data) - 1, 0))
        if kind == "truncate":
            del data[at:]
        elif kind == "flip" and data:
            data[at] ^= 1 << rng.randint(0, 7)
        elif kind == "splice":
            data[at:at] = rng.randbytes(rng.randint(1, 64))
        elif kind == "overwrite":
            chunk = rng.randbytes(rng.randint(1, 16))
            data[at:at + len(chunk)] = chunk
        elif kind == "duplicate":
            data[at:at] = data[at:at + rng.randint(1, 512)]
    return bytes(data)


@pytest.mark.slow
def test_a_long_seeded_run_is_decoded_or_refused_cleanly() -> None:
    """Many more inputs than CI's hypothesis budget: mutants, with one in ten arbitrary bytes.

    Each input is reproducible from its index (one ``random.Random`` per input, seeded by it).
    """
    start, tensors = time.perf_counter(), 0
    for index in range(SLOW_INPUTS):
        rng = random.Random(index)
        data = rng.randbytes(rng.randint(0, 4096)) if index % 10 == 9 else seeded_mutant(rng)
        try:
            tensors += check(data)
        except AssertionError as exc:
            digest = hashlib.sha256(data).hexdigest()[:16]
            raise AssertionError(f"input {index} ({len(data)} bytes, sha256 {digest}): {exc}") from exc
        except Exception as exc:  # a crash, not a client error: name the input that caused it
            raise AssertionError(f"input {index} ({len(data)} bytes) raised {type(exc).__name__}: {exc}") from exc
    print(f"{SLOW_INPUTS} inputs, {tensors} decoded, in {time.perf_counter() - start:.1f} s")
    assert tensors > SLOW_INPUTS // 100  # the mutants still reach the pixel path, not only the header checks


def test_every_seed_decodes() -> None:
    for data in SEEDS:
        assert preprocess(data, CONTRACT, OPTIONS).shape == (3, 224, 224)


def _png_header(width: int, height: int) -> bytes:
    """A PNG that declares ``width``x``height`` and carries one tiny compressed row: a few bytes."""
    def chunk(kind: bytes, body: bytes) -> bytes:
        return struct.pack(">I", len(body)) + kind + body + struct.pack(">I", zlib.crc32(kind + body) & 0xFFFFFFFF)
    ihdr = struct.pack(">IIBBBBB", width, height, 8, 2, 0, 0, 0)
    return b"\x89PNG\r\n\x1a\n" + chunk(b"IHDR", ihdr) + chunk(b"IDAT", zlib.compress(b"\0" * 64)) + chunk(b"IEND", b"")


@pytest.mark.parametrize("width, height", [(100_000, 100_000), (4_000_001, 1), (2_001, 2_000)])
def test_decompression_bombs_are_413_from_the_header(width: int, height: int) -> None:
    data = _png_header(width, height)
    assert len(data) < 200
    with pytest.raises(ImageTooLargeError, match="pixels"):
        preprocess(data, CONTRACT, OPTIONS)


def test_huge_gif_screen_is_refused_before_decoding() -> None:
    small = bytearray(encode(synthetic_image(8, 8, 1).convert("P"), "GIF"))
    small[6:10] = struct.pack("<HH", 65535, 65535)  # logical screen 65535 x 65535
    with pytest.raises((ImageTooLargeError, InvalidImageError)):
        preprocess(bytes(small), CONTRACT, OPTIONS)


@pytest.mark.parametrize("orientation", [0, 9, 255, 65535])
def test_exif_orientation_garbage_is_ignored(orientation: int) -> None:
    exif = Image.Exif()
    exif[0x0112] = orientation
    data = encode(synthetic_image(64, 48, 2), "JPEG", exif=exif.tobytes())
    assert preprocess(data, CONTRACT, OPTIONS).shape == (3, 224, 224)


def test_exif_block_of_garbage_is_ignored() -> None:
    data = encode(synthetic_image(64, 48, 2), "JPEG", exif=b"Exif\x00\x00" + bytes(range(256)) * 4)
    check(data)

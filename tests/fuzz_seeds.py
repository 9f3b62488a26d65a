"""Seed images for the fuzzers: every accepted format and the awkward modes, as real encodings."""

from __future__ import annotations

import io

from PIL import Image

from resserve.synthetic import synthetic_image


def encode(image: Image.Image, fmt: str, **params: object) -> bytes:
    buffer = io.BytesIO()
    image.save(buffer, format=fmt, **params)
    return buffer.getvalue()


def seeds() -> list[bytes]:
    rgb = synthetic_image(96, 72, 5)
    exif = Image.Exif()
    exif[0x0112] = 6  # rotated: the orientation path runs on the mutants too
    return [
        encode(rgb, "JPEG", quality=85),
        encode(rgb, "JPEG", quality=85, exif=exif.tobytes()),
        encode(rgb, "JPEG", quality=85, progressive=True),
        encode(rgb.convert("CMYK"), "JPEG"),
        encode(rgb.convert("L"), "JPEG"),
        encode(rgb, "PNG"),
        encode(rgb.convert("I;16"), "PNG"),
        encode(rgb.convert("LA"), "PNG"),
        encode(rgb.convert("P", palette=Image.Palette.ADAPTIVE), "PNG", transparency=0),
        encode(rgb.convert("1"), "PNG"),
        encode(rgb, "WEBP", quality=80),
        encode(rgb.convert("RGBA"), "WEBP", lossless=True),
        encode(rgb.convert("P"), "GIF"),
        encode(rgb, "TIFF"),
        encode(rgb.convert("CMYK"), "TIFF", compression="tiff_lzw"),
        encode(rgb, "BMP"),
    ]


SEEDS = seeds()

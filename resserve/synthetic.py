"""Image-like synthetic pictures, made from a seed.

Random weights need image-like inputs to give meaningful BatchNorm statistics and
input-dependent logits; tests, calibration placeholders and load tests need picture files.
Smooth colour fields, gradients and a few solid shapes give pixel statistics much closer to
photographs than white noise does. Pure numpy + Pillow: usable where torch is absent.
"""

from __future__ import annotations

import io
from collections.abc import Sequence

import numpy as np
from PIL import Image, ImageDraw, ImageFilter


def synthetic_image(width: int, height: int, seed: int) -> Image.Image:
    """One RGB picture: low-frequency colour field, a gradient, shapes and mild noise."""
    rng = np.random.default_rng(seed)
    grid = rng.integers(0, 256, size=(rng.integers(2, 7), rng.integers(2, 7), 3), dtype=np.uint8)
    field = Image.fromarray(grid, "RGB").resize((width, height), Image.Resampling.BICUBIC)
    base = np.asarray(field, dtype=np.float32)
    ramp = np.linspace(-1.0, 1.0, width, dtype=np.float32)[None, :, None] * rng.uniform(-40, 40, size=3)
    base = base + ramp
    image = Image.fromarray(np.clip(base, 0, 255).astype(np.uint8), "RGB")
    draw = ImageDraw.Draw(image)
    for _ in range(int(rng.integers(2, 7))):
        x0, x1 = sorted(rng.integers(0, width, size=2).tolist())
        y0, y1 = sorted(rng.integers(0, height, size=2).tolist())
        colour = tuple(int(c) for c in rng.integers(0, 256, size=3))
        shape = draw.ellipse if rng.random() < 0.5 else draw.rectangle
        shape((x0, y0, max(x1, x0 + 1), max(y1, y0 + 1)), fill=colour)
    image = image.filter(ImageFilter.GaussianBlur(radius=float(rng.uniform(0.5, 2.0))))
    noisy = np.asarray(image, dtype=np.float32) + rng.normal(0, 6, size=(height, width, 3))
    return Image.fromarray(np.clip(noisy, 0, 255).astype(np.uint8), "RGB")


def synthetic_jpegs(count: int, sizes: Sequence[tuple[int, int]], seed: int = 0, quality: int = 90) -> list[bytes]:
    """``count`` JPEG files: picture ``i`` is ``sizes[i % len(sizes)]`` (width, height) from seed ``seed + i``."""
    out = []
    for i in range(count):
        width, height = sizes[i % len(sizes)]
        buffer = io.BytesIO()
        synthetic_image(width, height, seed + i).save(buffer, format="JPEG", quality=quality)
        out.append(buffer.getvalue())
    return out


def synthetic_batch(
    count: int,
    size: int = 224,
    seed: int = 0,
    mean: tuple[float, float, float] = (0.485, 0.456, 0.406),
    std: tuple[float, float, float] = (0.229, 0.224, 0.225),
) -> np.ndarray:
    """``count`` pictures as a normalized float32 NCHW batch (ImageNet statistics by default)."""
    pixels = np.stack([np.asarray(synthetic_image(size, size, seed * 100_003 + i)) for i in range(count)])
    x = pixels.astype(np.float32) / 255.0
    x = (x - np.asarray(mean, dtype=np.float32)) / np.asarray(std, dtype=np.float32)
    return np.ascontiguousarray(x.transpose(0, 3, 1, 2))

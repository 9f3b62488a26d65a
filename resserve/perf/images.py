"""The request bodies a load test cycles through: a folder of images, or generated ones.

Several sizes on purpose: decode cost grows with the upload's pixels, so a test with one small
size flatters the server. Bodies are read once into memory; the generator never touches disk.
"""

from __future__ import annotations

import io
from collections.abc import Sequence
from dataclasses import dataclass
from pathlib import Path

from PIL import Image

from resserve.synthetic import synthetic_jpegs

CONTENT_TYPES = {".jpg": "image/jpeg", ".jpeg": "image/jpeg", ".png": "image/png", ".webp": "image/webp"}
DEFAULT_SIZES: tuple[tuple[int, int], ...] = ((500, 375), (1280, 960), (320, 240))


@dataclass(frozen=True)
class Payload:
    """One request body and what it is."""

    name: str
    body: bytes
    content_type: str
    width: int
    height: int


def load_folder(folder: Path, limit: int | None = None) -> list[Payload]:
    """Every JPEG/PNG/WebP file under ``folder`` (sorted, so runs cycle in the same order)."""
    folder = Path(folder)
    if not folder.is_dir():
        raise FileNotFoundError(f"image folder {folder} does not exist")
    payloads = []
    for path in sorted(p for p in folder.rglob("*") if p.suffix.lower() in CONTENT_TYPES and p.is_file()):
        body = path.read_bytes()
        with Image.open(io.BytesIO(body)) as image:
            width, height = image.size
        payloads.append(Payload(path.name, body, CONTENT_TYPES[path.suffix.lower()], width, height))
        if limit is not None and len(payloads) >= limit:
            break
    if not payloads:
        raise FileNotFoundError(f"no .jpg/.jpeg/.png/.webp images in {folder}")
    return payloads


def generate(sizes: Sequence[tuple[int, int]] = DEFAULT_SIZES, per_size: int = 8,
             quality: int = 90, seed: int = 0) -> list[Payload]:
    """Image-like JPEGs, ``per_size`` distinct pictures of each size, interleaved by size."""
    payloads = []
    for index in range(per_size):
        # One picture of each size per round, from seed + 2 * index * len(sizes) on: the seeds this
        # generator has always used, so a generated set stays the same files.
        bodies = synthetic_jpegs(len(sizes), sizes, seed + 2 * index * len(sizes), quality)
        for (width, height), body in zip(sizes, bodies, strict=True):
            payloads.append(Payload(f"synthetic-{width}x{height}-{index}.jpg", body, "image/jpeg", width, height))
    return payloads


def write_folder(folder: Path, payloads: Sequence[Payload]) -> list[Path]:
    """Write payloads as files (a reusable image folder for `--images` or Locust)."""
    folder = Path(folder)
    folder.mkdir(parents=True, exist_ok=True)
    paths = []
    for payload in payloads:
        path = folder / payload.name
        path.write_bytes(payload.body)
        paths.append(path)
    return paths

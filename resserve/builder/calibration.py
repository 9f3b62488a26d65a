"""Calibration and held-out image sets, run through the model's own preprocessing.

Real calibration should use a few hundred images from the data the model will see
(``--calibration-images DIR``, any folder of images). Without one, resserve generates seeded
image-like pictures: a documented placeholder that makes the pipeline work and gives
meaningful agreement figures for BatchNorm-calibrated random weights, not for real accuracy.
"""

from __future__ import annotations

import logging
from pathlib import Path

import numpy as np

from resserve.contract import PreprocessContract
from resserve.errors import ConfigError, ResserveError
from resserve.preprocess import DecodeOptions, normalize_pixels, preprocess
from resserve.synthetic import synthetic_jpegs

log = logging.getLogger(__name__)

IMAGE_SUFFIXES = {".jpg", ".jpeg", ".png", ".webp", ".bmp", ".gif", ".tif", ".tiff"}
# Seeds far apart so the calibration and held-out placeholder sets never share a picture.
CALIBRATION_SEED = 1_000
HELD_OUT_SEED = 9_000
# The placeholder pictures cycle through a few common photo sizes.
PLACEHOLDER_SIZES: tuple[tuple[int, int], ...] = ((500, 375), (375, 500), (640, 480))


def image_files(folder: Path) -> list[Path]:
    """Image files under ``folder`` (recursively), sorted for reproducibility."""
    if not folder.is_dir():
        raise ConfigError(f"calibration folder {folder} does not exist")
    return sorted(p for p in folder.rglob("*") if p.suffix.lower() in IMAGE_SUFFIXES and p.is_file())


def load_batch(
    contract: PreprocessContract,
    count: int,
    *,
    folder: Path | None = None,
    seed: int = CALIBRATION_SEED,
    skip: int = 0,
    pixels: bool = False,
) -> np.ndarray:
    """``count`` preprocessed images as one float32 batch in the model's input layout (``pixels``:
    the uint8 (N, H, W, 3) crops before normalization instead).

    From ``folder`` when given (images ``skip`` .. ``skip + count`` in sorted order, so a held-out
    set can follow the calibration set without overlap), else the seeded placeholder pictures.
    Unreadable files are skipped with a warning.
    """
    if count < 1:
        raise ConfigError(f"need at least one calibration image, asked for {count}")
    tensors = []
    options = DecodeOptions(uint8_pixels=pixels)
    if folder is not None:
        files = image_files(folder)[skip:]
        for path in files:
            try:
                tensors.append(preprocess(path.read_bytes(), contract, options))
            except ResserveError as exc:
                log.warning("skipping %s: %s", path, exc)
            if len(tensors) == count:
                break
        if len(tensors) < count:
            raise ConfigError(f"{folder} has {len(tensors)} usable images after the first {skip}; need {count}")
    else:
        tensors = [preprocess(data, contract, options)
                   for data in synthetic_jpegs(count, PLACEHOLDER_SIZES, seed + skip)]
    return np.ascontiguousarray(np.stack(tensors))


def calibration_and_held_out(
    contract: PreprocessContract, calibration_count: int, held_out_count: int, folder: Path | None = None
) -> tuple[np.ndarray, np.ndarray]:
    """Disjoint calibration and held-out batches of model inputs (held-out: never seen by calibration)."""
    calibration = load_batch(contract, calibration_count, folder=folder, seed=CALIBRATION_SEED)
    pixels = held_out_pixels(contract, held_out_count, folder, calibration_count)
    return calibration, normalize_pixels(pixels, contract)


def held_out_pixels(contract: PreprocessContract, count: int, folder: Path | None = None,
                    calibration_count: int = 0) -> np.ndarray:
    """The held-out images as uint8 (N, H, W, 3) crops: :func:`resserve.preprocess.normalize_pixels`
    makes the model inputs of them, and a few are stored with the artifact for the load-time check."""
    if folder is not None:
        return load_batch(contract, count, folder=folder, skip=calibration_count, pixels=True)
    return load_batch(contract, count, seed=HELD_OUT_SEED, pixels=True)

"""Preprocessing benchmark: time per image on one core and deviation from the exact path, per mode.

The exact path reproduces torchvision bit for bit; each fast path trades a stated deviation for
CPU. Both numbers come from the same images in one run.
"""

from __future__ import annotations

import time
from dataclasses import dataclass

import numpy as np
from PIL import Image

from resserve.contract import PreprocessContract, imagenet_contract
from resserve.preprocess import DecodeOptions, preprocess, to_tensor_fused
from resserve.synthetic import synthetic_jpegs

MODES = {
    "exact": DecodeOptions(),
    "fast_jpeg_decode": DecodeOptions(fast_jpeg_draft=True),
    "fast_preprocess": DecodeOptions(fast_transform=True),
    "both": DecodeOptions(fast_jpeg_draft=True, fast_transform=True),
    # The host's share when the engine normalizes inside the model (uint8_input).
    "both+uint8": DecodeOptions(fast_jpeg_draft=True, fast_transform=True, uint8_pixels=True),
}


@dataclass
class PreprocessResult:
    size: tuple[int, int]
    mode: str
    ms_per_image: float
    mean_abs_deviation: float
    max_abs_deviation: float


def bench_preprocess(sizes: list[tuple[int, int]], *, images: int = 6, rounds: int = 3, round_s: float = 1.0,
                     contract: PreprocessContract | None = None) -> list[PreprocessResult]:
    """Interleaved rounds per size (each mode in turn); the median round's time per image."""
    contract = contract or imagenet_contract()
    results = []
    for size in sizes:
        data = synthetic_jpegs(images, (size,))
        reference = [preprocess(d, contract) for d in data]
        times: dict[str, list[float]] = {mode: [] for mode in MODES}
        for _ in range(rounds):
            for mode, options in MODES.items():
                done, start = 0, time.perf_counter()
                while time.perf_counter() - start < round_s:
                    preprocess(data[done % len(data)], contract, options)
                    done += 1
                times[mode].append((time.perf_counter() - start) / done * 1000.0)
        for mode, options in MODES.items():
            diffs = [np.abs(_normalized(preprocess(d, contract, options), contract) - ref)
                     for d, ref in zip(data, reference, strict=True)]
            results.append(PreprocessResult(size, mode, float(np.median(times[mode])),
                                            float(np.mean([d.mean() for d in diffs])),
                                            float(max(d.max() for d in diffs))))
    return results


def _normalized(tensor: np.ndarray, contract: PreprocessContract) -> np.ndarray:
    """uint8 pixels normalized as the model graph does it, so every mode compares in model units."""
    if tensor.dtype != np.uint8:
        return tensor
    return to_tensor_fused(Image.fromarray(tensor), contract)

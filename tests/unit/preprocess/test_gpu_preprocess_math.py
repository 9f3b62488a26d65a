"""GPU preprocessing's resize, crop and normalize, run on a CPU tensor against the CPU path.

Decode is torchvision's (tests/gpu/test_gpu_preprocess_cuda.py); here Pillow decodes, so any
difference is the arithmetic's. Pillow resizes with fixed-point weights and rounds to 8 bits
between its horizontal and vertical passes; torch resizes in float32 and rounds once. Measured on
500x375 ... 1600x1200 synthetic JPEGs, bilinear and bicubic, shorter-side and exact resizes,
padded crops: never more than one level off (1 / (255 * std): 0.0175 for std 0.224), mean 0.0015
to 0.0041, on 9-24% of the elements; unresized images are exact. The tolerances are those.
"""

from __future__ import annotations

import sys

import numpy as np
import pytest
import torch

from resserve.contract import PreprocessContract, imagenet_contract
from resserve.preprocess.gpu import GpuPreprocessor, decode_jpegs, require_torchvision, resize_crop_normalize
from resserve.errors import ConfigError, EngineUnavailableError
from resserve.preprocess import decode_image, preprocess
from resserve.synthetic import synthetic_jpegs

MEAN_TOLERANCE = 0.006  # normalized units, a third of a level


def _one_level(contract: PreprocessContract) -> np.ndarray:
    """One 8-bit level in normalized units, per channel, plus float32 slack."""
    unit = 255.0 if contract.input_scale == "0-1" else 1.0
    return 1.0 / (unit * np.asarray(contract.std, dtype=np.float32)) + 1e-5


def _pixels(data: bytes, contract: PreprocessContract) -> torch.Tensor:
    """Pillow's decode as the uint8 (3, H, W) tensor torchvision's decode_jpeg returns."""
    return torch.from_numpy(np.array(decode_image(data, contract))).permute(2, 0, 1).contiguous()


def _compare(contract: PreprocessContract, sizes: list[tuple[int, int]]) -> list[float]:
    jpegs = synthetic_jpegs(len(sizes), sizes, seed=7)
    batch = resize_crop_normalize([_pixels(d, contract) for d in jpegs], contract)
    width, height = contract.crop_wh
    nhwc = contract.layout == "NHWC"
    expected_shape = (len(sizes), height, width, 3) if nhwc else (len(sizes), 3, height, width)
    assert batch.dtype == torch.float32 and tuple(batch.shape) == expected_shape and batch.is_contiguous()
    level = _one_level(contract).reshape((1, 1, 3) if nhwc else (3, 1, 1))
    means = []
    for data, got in zip(jpegs, batch.numpy(), strict=True):
        diff = np.abs(got - preprocess(data, contract))
        assert (diff <= level).all(), f"more than one level off: max {diff.max():.4f}"
        means.append(float(diff.mean()))
    assert max(means) <= MEAN_TOLERANCE
    return means


@pytest.mark.parametrize("interpolation", ["bilinear", "bicubic"])
def test_shorter_side_resize_within_one_level_of_the_cpu_path(interpolation: str) -> None:
    contract = PreprocessContract(interpolation=interpolation)  # type: ignore[arg-type]
    means = _compare(contract, [(500, 375), (375, 500), (1600, 1200), (200, 150), (1000, 100)])
    assert min(means) > 0  # really resized: Pillow and torch round differently somewhere


def test_exact_resize_padded_crop_and_unresized_image() -> None:
    _compare(PreprocessContract(resize_mode="exact", resize_size=(240, 200), crop_size=224), [(500, 375)])
    # resize 200 < crop 224: the crop pads with zeros, which normalize to -mean/std as on the CPU.
    _compare(PreprocessContract(resize_size=200, crop_size=224), [(500, 375), (150, 100)])
    means = _compare(imagenet_contract(), [(256, 256), (341, 256)])  # already the resize target
    assert max(means) < 1e-6  # float32 rounding of the normalize alone


def test_bgr_nhwc_and_0_255_follow_the_contract() -> None:
    _compare(PreprocessContract(color_order="BGR", layout="NHWC", input_scale="0-255",
                                mean=(123.7, 116.3, 103.5), std=(58.4, 57.1, 57.4)), [(500, 375), (640, 480)])


def test_refuses_what_it_cannot_reproduce() -> None:
    image = torch.zeros((3, 300, 400), dtype=torch.uint8)
    for interpolation in ("nearest", "lanczos"):
        with pytest.raises(ConfigError, match=f"does not reproduce {interpolation} resizing.*CPU path"):
            resize_crop_normalize([image], PreprocessContract(interpolation=interpolation))  # type: ignore[arg-type]
    with pytest.raises(ValueError, match=r"expected uint8 \(3, H, W\) RGB"):
        resize_crop_normalize([image.float()], imagenet_contract())
    with pytest.raises(ValueError, match="no images"):
        resize_crop_normalize([], imagenet_contract())


def test_no_cuda_is_a_clear_engine_unavailable_error(monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setattr(torch.cuda, "is_available", lambda: False)
    with pytest.raises(EngineUnavailableError, match=r"GPU JPEG decode: torch .* sees no CUDA GPU; use the CPU path"):
        GpuPreprocessor(imagenet_contract())
    with pytest.raises(EngineUnavailableError, match="sees no CUDA GPU"):
        decode_jpegs([b"\xff\xd8"], "cuda")


def test_no_torchvision_is_a_clear_engine_unavailable_error(monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setitem(sys.modules, "torchvision", None)  # as if not installed (it is not, on CI)
    monkeypatch.setitem(sys.modules, "torchvision.io", None)
    with pytest.raises(EngineUnavailableError, match=r"needs torchvision \(torchvision.io.decode_jpeg, nvJPEG\)"):
        require_torchvision("cpu")

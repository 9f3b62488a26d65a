"""JPEG bytes -> model input on the GPU: nvJPEG decode, then resize, crop and normalize in torch.

The same :class:`~resserve.contract.PreprocessContract` as the CPU path (:mod:`resserve.preprocess`):
resize (shorter side or exact, antialiased), centre crop (zero padding where the image is smaller),
``(x / 255 - mean) / std``, colour order and layout. Decode (``torchvision.io.decode_jpeg`` with
``device="cuda"``, the batched list form) is kept apart from the arithmetic, which is plain torch
on whatever device its tensors are on, so it runs and is tested on a CPU tensor too.

The server uses it for models with ``gpu_decode: true`` through :class:`GpuImageDecoder`: Pillow
reads and checks each header first (format, pixel limit, EXIF orientation: the same refusals as
the CPU path, before any pixel is decoded), then JPEGs stored upright go to nvJPEG and everything
else (PNG, WebP, rotated JPEGs) to the CPU path. ``loadtests/gpu_check`` measures both. torch
and torchvision are imported lazily: neither is a serving dependency.

Example::

    preprocessor = GpuPreprocessor(imagenet_contract())
    batch = preprocessor([jpeg_bytes, other_jpeg_bytes])  # (2, 3, 224, 224) float32 on cuda
"""

from __future__ import annotations

import threading
import time
from collections.abc import Sequence
from typing import Any

import numpy as np

from resserve.contract import PreprocessContract
from resserve.errors import ConfigError, EngineUnavailableError, InvalidImageError
from resserve.preprocess.cpu import _resize_target, _scale_bias
from resserve.preprocess.headers import DecodeOptions, read_header

# The filters whose result stays within a level of Pillow's: antialiased bilinear, and bicubic
# (antialiased, torch uses Pillow's a = -0.5). Nearest is refused: torch's "nearest-exact" took
# the neighbouring source pixel at ~0.4% of positions on a 640x480 -> 341x256 shrink, up to 21
# levels off there; torch has no lanczos.
_TORCH_MODES = ("bilinear", "bicubic")


def check_contract(contract: PreprocessContract) -> None:
    """Refuse what this path cannot reproduce, before any image is read."""
    if contract.interpolation not in _TORCH_MODES:
        raise ConfigError(f"GPU preprocessing does not reproduce {contract.interpolation} resizing (only "
                          f"{' and '.join(_TORCH_MODES)}); use the CPU path for this model")


def require_torchvision(device: str = "cuda") -> Any:
    """``torchvision.io`` where it can decode on ``device``, else EngineUnavailableError saying why."""
    try:
        import torch
    except ImportError as exc:
        raise EngineUnavailableError(f"GPU preprocessing needs torch, which is not installed ({exc})") from exc
    if device.startswith("cuda") and not torch.cuda.is_available():
        build = f"CUDA {torch.version.cuda}" if torch.version.cuda else "a CPU-only build"
        raise EngineUnavailableError(f"GPU JPEG decode: torch {torch.__version__} ({build}) sees no CUDA GPU; "
                                     "use the CPU path (resserve.preprocess)")
    try:
        import torchvision.io
    except ImportError as exc:
        raise EngineUnavailableError(f"GPU JPEG decode needs torchvision (torchvision.io.decode_jpeg, nvJPEG), "
                                     f"which is not installed beside torch {torch.__version__} ({exc})") from exc
    return torchvision.io


def decode_jpegs(images: Sequence[bytes], device: str = "cuda") -> list[Any]:
    """JPEG files -> uint8 (3, H, W) RGB tensors on ``device``, in one batched ``decode_jpeg`` call.

    Grey and CMYK JPEGs come out RGB (``ImageReadMode.RGB``); EXIF orientation is not applied.
    """
    tvio = require_torchvision(device)
    import torch

    for index, data in enumerate(images):
        if not data:
            raise InvalidImageError(f"image {index}: empty body, no JPEG bytes")
    encoded = [torch.frombuffer(bytearray(data), dtype=torch.uint8) for data in images]
    try:
        return list(tvio.decode_jpeg(encoded, mode=tvio.ImageReadMode.RGB, device=device))
    except (RuntimeError, ValueError) as exc:  # how torchvision reports corrupt and non-JPEG data
        raise InvalidImageError(f"cannot decode JPEG on {device}: {exc}") from exc


def _center_crop(x: Any, crop_w: int, crop_h: int) -> Any:
    """torchvision ``center_crop`` on (1, C, H, W): zero-pad an axis shorter than the crop (floor
    of the difference before), then cut at the centre rounded half to even."""
    import torch.nn.functional as F

    height, width = x.shape[-2:]
    if crop_w > width or crop_h > height:
        pad_w, pad_h = max(crop_w - width, 0), max(crop_h - height, 0)
        x = F.pad(x, [pad_w // 2, (pad_w + 1) // 2, pad_h // 2, (pad_h + 1) // 2])
        height, width = x.shape[-2:]
    top, left = round((height - crop_h) / 2.0), round((width - crop_w) / 2.0)
    return x[..., top : top + crop_h, left : left + crop_w]


def resize_crop_normalize(images: Sequence[Any], contract: PreprocessContract) -> Any:
    """uint8 (3, H, W) RGB tensors of any sizes, on one device -> one float32 batch on that device,
    (N, 3, h, w) or (N, h, w, 3) as the contract says.

    Resized in float32 and rounded back to 0..255 before the crop, as Pillow resizes an 8-bit image
    to 8 bits. Pillow also rounds between its horizontal and vertical passes and this path does
    not, so an element may sit one level (``1 / (255 * std)``) from the CPU path's
    (tests/unit/preprocess/test_gpu_preprocess_math.py measures it).
    """
    import torch
    import torch.nn.functional as F

    check_contract(contract)
    if not images:
        raise ValueError("no images to preprocess")
    mode = contract.interpolation
    crop_w, crop_h = contract.crop_wh
    cropped = []
    for index, image in enumerate(images):
        if image.dtype != torch.uint8 or image.ndim != 3 or image.shape[0] != 3:
            raise ValueError(f"image {index}: expected uint8 (3, H, W) RGB, got {image.dtype} {tuple(image.shape)}")
        height, width = int(image.shape[1]), int(image.shape[2])
        target_w, target_h = _resize_target(width, height, contract)
        x = image.unsqueeze(0)
        if (target_w, target_h) != (width, height):  # as torchvision, an image already the size is kept
            x = F.interpolate(x.float(), size=(target_h, target_w), mode=mode, align_corners=False,
                              antialias=True).round_().clamp_(0, 255)
        cropped.append(_center_crop(x.float(), crop_w, crop_h))
    batch = torch.cat(cropped)
    if contract.color_order == "BGR":
        batch = batch.flip(1)
    scale, bias = (torch.from_numpy(v).to(batch.device).view(1, 3, 1, 1) for v in _scale_bias(contract))
    batch = batch.mul_(scale).add_(bias)
    if contract.layout == "NHWC":
        return batch.permute(0, 2, 3, 1).contiguous()
    return batch.contiguous()


class GpuPreprocessor:
    """Decode and preprocess whole batches of JPEG files on one CUDA device (checked at construction)."""

    def __init__(self, contract: PreprocessContract, device: str = "cuda") -> None:
        check_contract(contract)
        require_torchvision(device)
        self.contract = contract
        self.device = device

    def __call__(self, images: Sequence[bytes]) -> Any:
        """JPEG files -> (N, 3, h, w) float32 (or NHWC) on the device; the caller synchronizes."""
        return resize_crop_normalize(decode_jpegs(images, self.device), self.contract)


class GpuImageDecoder:
    """The server's per-image hook: one encoded image -> the model's input as a numpy array, decoded
    and preprocessed on the GPU, or ``None`` where the CPU path must take it.

    Images arrive one at a time from the preprocessing threads; one lock keeps one image at a time
    on the device (the threads share torchvision's nvJPEG state), and the result comes back to the
    host because the batch queue concatenates numpy rows.
    """

    def __init__(self, contract: PreprocessContract, options: DecodeOptions, device: str = "cuda") -> None:
        # Float tensors only: ModelConfig refuses gpu_decode with uint8_input.
        self.preprocessor = GpuPreprocessor(contract, device)  # refuses the contract or a missing GPU here
        self.options = options
        self._lock = threading.Lock()

    def __call__(self, data: bytes) -> tuple[np.ndarray, float, float] | None:
        """(tensor without the batch axis, decode seconds, transform seconds), or None for the CPU path.

        Raises the CPU path's own errors for bytes it would refuse (empty, unsupported, too many pixels).
        """
        header = read_header(data, self.options)
        if header.format != "JPEG" or header.orientation != 1:
            return None
        with self._lock:
            start = time.perf_counter()
            decoded = decode_jpegs([data], self.preprocessor.device)
            decode_done = time.perf_counter()
            batch = resize_crop_normalize(decoded, self.preprocessor.contract)
            tensor = batch[0].cpu().numpy()  # waits for the device
        return tensor, decode_done - start, time.perf_counter() - decode_done

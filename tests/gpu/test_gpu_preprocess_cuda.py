"""nvJPEG decode and preprocessing on CUDA against the CPU path (Pillow's libjpeg) on the same files.

Skipped with the reason where no GPU is present (tests/conftest.py) or torchvision is missing. The
two decoders differ (IDCT and chroma upsampling), so the figures are bounded, not equal: the
arithmetic alone stays within a level (tests/unit/preprocess/test_gpu_preprocess_math.py), the rest
is decode. The bounds are loose first guesses (no GPU run had measured them when they were set);
loadtests/gpu_check (its preprocess stage) prints the measured difference.
"""

from __future__ import annotations

import numpy as np
import pytest

from resserve.contract import imagenet_contract
from resserve.errors import InvalidImageError
from resserve.preprocess import preprocess
from resserve.synthetic import synthetic_jpegs

pytestmark = pytest.mark.gpu
torch = pytest.importorskip("torch")
pytest.importorskip("torchvision")

from resserve.preprocess.gpu import GpuPreprocessor, decode_jpegs

MEAN_ABS_BOUND = 0.05  # normalized units: about 3 levels on average
MAX_ABS_BOUND = 1.0  # a sharp synthetic edge may decode tens of levels apart in one pixel


def test_batched_decode_and_preprocess_match_the_cpu_path() -> None:
    if not torch.cuda.is_available():
        pytest.skip("torch sees no CUDA GPU")
    contract = imagenet_contract()
    jpegs = synthetic_jpegs(6, [(500, 375), (1600, 1200), (375, 500)], seed=3)
    batch = GpuPreprocessor(contract)(jpegs)
    assert batch.device.type == "cuda" and batch.dtype == torch.float32 and tuple(batch.shape) == (6, 3, 224, 224)
    cpu = np.stack([preprocess(data, contract) for data in jpegs])
    diff = np.abs(batch.cpu().numpy() - cpu)
    assert diff.mean() < MEAN_ABS_BOUND and diff.max() < MAX_ABS_BOUND, (diff.mean(), diff.max())


def test_decode_gives_rgb_uint8_on_the_device_and_refuses_garbage() -> None:
    if not torch.cuda.is_available():
        pytest.skip("torch sees no CUDA GPU")
    images = decode_jpegs(synthetic_jpegs(2, [(320, 240)]), "cuda")
    assert [tuple(i.shape) for i in images] == [(3, 240, 320)] * 2
    assert all(i.dtype == torch.uint8 and i.device.type == "cuda" for i in images)
    with pytest.raises(InvalidImageError, match="cannot decode JPEG on cuda"):
        decode_jpegs([b"not a jpeg at all"], "cuda")
    with pytest.raises(InvalidImageError, match="empty body"):
        decode_jpegs([b""], "cuda")


def test_the_servers_gpu_decoder_takes_upright_jpegs_and_leaves_the_rest_to_the_cpu() -> None:
    if not torch.cuda.is_available():
        pytest.skip("torch sees no CUDA GPU")
    import io

    from PIL import Image

    from resserve.preprocess.gpu import GpuImageDecoder
    from resserve.errors import ImageTooLargeError
    from resserve.preprocess import DecodeOptions

    contract = imagenet_contract()
    decoder = GpuImageDecoder(contract, DecodeOptions(max_pixels=1600 * 1200))
    for data in synthetic_jpegs(3, [(500, 375), (1600, 1200), (375, 500)], seed=5):
        tensor, decode_s, transform_s = decoder(data)
        assert isinstance(tensor, np.ndarray) and tensor.shape == (3, 224, 224) and decode_s >= 0 and transform_s > 0
        diff = np.abs(tensor - preprocess(data, contract))
        assert diff.mean() < MEAN_ABS_BOUND and diff.max() < MAX_ABS_BOUND, (diff.mean(), diff.max())
    image = Image.open(io.BytesIO(synthetic_jpegs(1, [(64, 48)])[0]))
    png, rotated = io.BytesIO(), io.BytesIO()
    image.save(png, "PNG")
    exif = Image.Exif()
    exif[0x0112] = 6
    image.save(rotated, "JPEG", exif=exif)
    assert decoder(png.getvalue()) is None and decoder(rotated.getvalue()) is None  # the CPU path's
    with pytest.raises(ImageTooLargeError):
        decoder(synthetic_jpegs(1, [(1601, 1200)])[0])

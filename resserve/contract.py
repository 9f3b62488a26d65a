"""The preprocessing contract: what a model expects between the image file and its input tensor.

It travels with the weights (as in torchvision's presets and timm's ``_cfg``): recorded in the
exported ONNX metadata and in the model config, and followed by the server's preprocessing.
"""

from __future__ import annotations

from typing import Literal

from pydantic import BaseModel, ConfigDict, Field, model_validator

IMAGENET_MEAN = (0.485, 0.456, 0.406)
IMAGENET_STD = (0.229, 0.224, 0.225)


class PreprocessContract(BaseModel):
    """Resize, crop and normalize, as numbers a user can read and change.

    ``mean`` and ``std`` are in the units of ``input_scale``: with ``"0-1"`` pixels are divided by
    255 before ``(x - mean) / std``; with ``"0-255"`` they are not.
    """

    model_config = ConfigDict(extra="forbid", frozen=True)

    resize_mode: Literal["shorter_side", "exact"] = "shorter_side"
    resize_size: int | tuple[int, int] = Field(256, description="N for shorter_side, (W, H) for exact")
    crop_size: int | tuple[int, int] = Field(224, description="center crop; N or (W, H)")
    interpolation: Literal["nearest", "bilinear", "bicubic", "lanczos"] = "bilinear"
    antialias: bool = True
    color_order: Literal["RGB", "BGR"] = "RGB"
    input_scale: Literal["0-1", "0-255"] = "0-1"
    mean: tuple[float, float, float] = IMAGENET_MEAN
    std: tuple[float, float, float] = IMAGENET_STD
    layout: Literal["NCHW", "NHWC"] = "NCHW"

    @model_validator(mode="after")
    def _check(self) -> PreprocessContract:
        sizes = [self.resize_size, self.crop_size]
        for size in sizes:
            values = size if isinstance(size, tuple) else (size,)
            if any(v < 1 for v in values):
                raise ValueError(f"sizes must be positive, got {size}")
        if self.resize_mode == "shorter_side" and isinstance(self.resize_size, tuple):
            raise ValueError("resize_mode 'shorter_side' takes one resize_size, not (W, H)")
        if any(s <= 0 for s in self.std):
            raise ValueError(f"std must be positive, got {self.std}")
        return self

    @property
    def crop_wh(self) -> tuple[int, int]:
        """Crop width and height."""
        return self.crop_size if isinstance(self.crop_size, tuple) else (self.crop_size, self.crop_size)


def imagenet_contract(resize_size: int = 256, crop_size: int = 224) -> PreprocessContract:
    """torchvision's ImageNet classification preset (``ImageClassification``)."""
    return PreprocessContract(resize_size=resize_size, crop_size=crop_size)

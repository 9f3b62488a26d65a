"""Image preprocessing: header checks and limits (:mod:`.headers`), the CPU path (:mod:`.cpu`:
decode, orient, resize, crop, normalize) and nvJPEG on a GPU (:mod:`.gpu`, which imports torch
when used and is not imported here).

The public names are re-exported, so ``from resserve.preprocess import preprocess`` is the usual import.
"""

from resserve.preprocess.cpu import (
    decode_image,
    normalize_pixels,
    preprocess,
    preprocess_small,
    preprocess_timed,
    resize_and_crop,
    resize_crop_window,
    to_pixels,
    to_tensor,
    to_tensor_fused,
)
from resserve.preprocess.headers import (
    DEFAULT_MAX_PIXELS,
    SUPPORTED_FORMATS,
    SUPPORTED_MEDIA_TYPES,
    DecodeOptions,
    ImageHeader,
    check_media_type,
    read_header,
)

__all__ = [
    "DEFAULT_MAX_PIXELS", "SUPPORTED_FORMATS", "SUPPORTED_MEDIA_TYPES", "DecodeOptions", "ImageHeader",
    "check_media_type", "decode_image", "normalize_pixels", "preprocess", "preprocess_small", "preprocess_timed", "read_header",
    "resize_and_crop", "resize_crop_window", "to_pixels", "to_tensor", "to_tensor_fused",
]

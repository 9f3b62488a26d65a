"""How far a reduced-precision model's answers agree with its fp32 reference, and whether another
CPU still gives the answers its accuracy report promised.

The build measures agreement on held-out images (:mod:`resserve.builder.accuracy`) and stores a
few of them with the artifact as a :class:`CheckSet`: the uint8 crops, the fp32 reference's
logits and the built model's own logits, all from the build machine. A machine of another
instruction-set class (an int8 kernel that saturates on AVX2 and not on VNNI, say) runs the model
on those crops before it turns ready (:func:`check_here`). Every stored image whose top-1 class
differs from the build's own answer is counted as lost agreement: a model whose report, less
those, falls under its floor fails to load with that arithmetic as the reason.
A leaf: numpy, Pillow and pydantic only.
"""

from __future__ import annotations

import io
import itertools
import zipfile
from dataclasses import dataclass
from pathlib import Path

import numpy as np
from PIL import Image
from pydantic import BaseModel

CHECK_FILE = "check.npz"
JPEG_QUALITY = 90
# This close to the build's own logits on every stored image, a machine reproduces the build.
REPRODUCED_COSINE = 0.99999


def agreement(reference: np.ndarray, candidate: np.ndarray) -> tuple[float, float, np.ndarray]:
    """Top-1 agreement, top-5 agreement (reference top-1 in candidate top-5), per-row cosine."""
    ref_top1 = reference.argmax(axis=1)
    top1 = float(np.mean(candidate.argmax(axis=1) == ref_top1))
    k = min(5, candidate.shape[1])
    cand_top5 = np.argpartition(-candidate, k - 1, axis=1)[:, :k]
    top5 = float(np.mean([r in row for r, row in zip(ref_top1, cand_top5, strict=True)]))
    a, b = reference.astype(np.float64), candidate.astype(np.float64)
    cosine = (a * b).sum(1) / (np.linalg.norm(a, axis=1) * np.linalg.norm(b, axis=1) + 1e-12)
    return top1, top5, cosine


@dataclass(frozen=True)
class CheckSet:
    """Held-out images stored with an artifact, and the logits the fp32 reference and the built model
    gave on them where the model was built.

    The crops are stored as JPEGs (quality 90, no chroma subsampling: about 15 kB a crop where raw
    pixels take 150 kB) and :attr:`pixels` decodes them; the build computes both logits on the
    decoded pixels, and libjpeg-turbo's integer decoder gives the same pixels on every CPU.
    """

    jpegs: tuple[bytes, ...]
    reference: np.ndarray
    candidate: np.ndarray

    def __post_init__(self) -> None:
        n = len(self.jpegs)
        if self.reference.shape != self.candidate.shape or len(self.reference) != n or self.reference.ndim != 2:
            raise ValueError(f"check set logits {self.reference.shape} and {self.candidate.shape} do not fit {n} images")

    @property
    def pixels(self) -> np.ndarray:
        """The stored crops, uint8 (N, H, W, 3) RGB."""
        return decode_crops(self.jpegs)

    def write(self, folder: Path) -> Path:
        path = folder / CHECK_FILE
        offsets = np.cumsum([0, *(len(j) for j in self.jpegs)], dtype=np.int64)
        np.savez_compressed(path, jpegs=np.frombuffer(b"".join(self.jpegs), dtype=np.uint8), offsets=offsets,
                            reference=self.reference.astype(np.float32), candidate=self.candidate.astype(np.float32))
        return path

    @classmethod
    def read(cls, folder: Path) -> CheckSet | None:
        """The stored set, or None when the artifact has none. Never unpickles (object arrays refused)."""
        path = folder / CHECK_FILE
        if not path.is_file():
            return None
        try:
            # An open file, not a path: np.load leaks its own handle when the archive is corrupt.
            with path.open("rb") as file, np.load(file, allow_pickle=False) as data:
                blob, offsets = data["jpegs"].tobytes(), data["offsets"]
                if offsets.ndim != 1 or len(offsets) < 1 or offsets[0] != 0 or offsets[-1] != len(blob) \
                        or np.any(np.diff(offsets) <= 0):
                    raise ValueError("image offsets do not fit the stored bytes")
                jpegs = tuple(blob[a:b] for a, b in itertools.pairwise(offsets.tolist()))
                return cls(jpegs, data["reference"], data["candidate"])
        except (OSError, KeyError, ValueError, zipfile.BadZipFile, EOFError) as exc:
            raise ValueError(f"{path.name} is unreadable ({exc}); rebuild the model") from exc


def encode_crops(pixels: np.ndarray) -> tuple[bytes, ...]:
    """uint8 (N, H, W, 3) crops as the JPEGs a check set stores."""
    encoded = []
    for crop in pixels:
        buffer = io.BytesIO()
        Image.fromarray(np.ascontiguousarray(crop)).save(buffer, "JPEG", quality=JPEG_QUALITY, subsampling=0)
        encoded.append(buffer.getvalue())
    return tuple(encoded)


def decode_crops(jpegs: tuple[bytes, ...]) -> np.ndarray:
    """The crops a check set stores, uint8 (N, H, W, 3) RGB."""
    crops = []
    for data in jpegs:
        with Image.open(io.BytesIO(data)) as image:
            if image.format != "JPEG":
                raise ValueError(f"a check image is {image.format}, not JPEG")
            crops.append(np.asarray(image.convert("RGB"), dtype=np.uint8))
    return np.stack(crops)


class LoadCheck(BaseModel):
    """The load-time re-check of a model on this machine against its build's report."""

    built_on: str | None  # instruction-set class the report was measured on
    here: str
    images: int
    top1_build: float  # the build's top-1 agreement with fp32 on the stored images
    top1_here: float  # this machine's, on the same images
    agree_with_build: float  # this machine's top-1 equal to the build's own, per image
    cosine_with_build_min: float
    report_top1: float
    estimate_top1: float  # the report's figure, moved by (top1_here - top1_build)
    worst_top1: float  # the report's figure less every changed answer: what the verdict uses
    floor: float
    reproduced: bool  # every image within REPRODUCED_COSINE of the build's own logits
    passed: bool

    def summary(self) -> str:
        what = ("reproduces the build's answers" if self.reproduced else
                f"agrees with the build's own answers on {self.agree_with_build:.2%} of {self.images} stored "
                f"images (min cosine {self.cosine_with_build_min:.5f}); top-1 agreement with fp32 there "
                f"{self.top1_here:.2%} against the build's {self.top1_build:.2%}")
        return (f"measured on {self.built_on or 'an unrecorded CPU'}, running on {self.here}: {what}; top-1 "
                f"agreement here at worst {self.worst_top1:.2%}, estimated {self.estimate_top1:.2%} (report "
                f"{self.report_top1:.2%}, floor {self.floor:.2%})")


def check_here(check: CheckSet, here: np.ndarray, *, report_top1: float, floor: float, built_on: str | None,
               isa_here: str) -> LoadCheck:
    """Judge ``here`` (this machine's logits on ``check.pixels``) against the build's stored answers."""
    if here.shape != check.candidate.shape:
        raise ValueError(f"logits {here.shape} on this machine, {check.candidate.shape} stored")
    top1_build = agreement(check.reference, check.candidate)[0]
    top1_here = agreement(check.reference, here)[0]
    agree, _, cosine = agreement(check.candidate, here)
    estimate = min(1.0, max(0.0, report_top1 + (top1_here - top1_build)))
    worst = max(0.0, report_top1 - (1.0 - agree))
    reproduced = bool(agree == 1.0 and cosine.min() >= REPRODUCED_COSINE)
    return LoadCheck(built_on=built_on, here=isa_here, images=len(here), top1_build=top1_build, top1_here=top1_here,
                     agree_with_build=agree, cosine_with_build_min=float(cosine.min()), report_top1=report_top1,
                     estimate_top1=estimate, worst_top1=worst, floor=floor, reproduced=reproduced,
                     passed=reproduced or worst >= floor)

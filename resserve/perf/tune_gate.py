"""``resserve tune``'s accuracy gate: what may change the answers enters only if it keeps them.

Reduced precision, fast preprocessing and uint8 input each change the numbers a model sees or
computes. Every such way of serving (engine, precision, fast, uint8) is compared with the
reference, the fp32 build on the exact (torchvision) preprocessing path, by top-1 agreement on
real images: ``--images``, else the model's ``calibration.images``. Without real images only the
build's own accuracy report can speak, and only for the precision: fast preprocessing is then
refused (generated images would say nothing about photos), and uint8 input, the same
normalization done inside the model, takes its precision's verdict.
"""

from __future__ import annotations

from collections.abc import Iterable, Sequence
from pathlib import Path

import numpy as np
from pydantic import BaseModel

from resserve.builder.accuracy import run_batched
from resserve.engine_registry import engine_spec
from resserve.engines.base import PixelInput
from resserve.engines.factory import open_engine
from resserve.perf.tune import BuiltPair
from resserve.preprocess import DecodeOptions, preprocess
from resserve.repository import ModelRepository

Mode = tuple[bool, bool]  # (fast preprocessing, uint8 input)


class GateResult(BaseModel):
    """One way of serving and its verdict."""

    engine: str
    precision: str
    fast_preprocess: bool = False
    uint8_input: bool = False
    top1_agreement: float | None = None  # None: the reference itself, or not measured
    images: int = 0
    source: str = ""  # "reference", "--images", "calibration.images", "accuracy report"
    passed: bool = True
    why: str = ""

    @property
    def key(self) -> str:
        return gate_key(self.engine, self.precision, self.fast_preprocess, self.uint8_input)


def gate_key(engine: str, precision: str, fast: bool, uint8: bool) -> str:
    return f"{engine}-{precision}{' fast' if fast else ''}{' u8' if uint8 else ''}"


def modes_of(engine: str, fast_options: Iterable[bool]) -> list[Mode]:
    """The (fast, uint8) ways ``engine`` can be fed."""
    pixels = (False, True) if engine_spec(engine).pixel_input else (False,)
    return [(fast, uint8) for fast in fast_options for uint8 in pixels]


def calibration_images(repository: Path, model: str) -> Path | None:
    """The model's ``calibration.images`` folder, where it names one that exists."""
    config = ModelRepository(repository).config(model)
    if config.calibration.images is None:
        return None
    folder = repository / model / config.calibration.images
    return folder if folder.is_dir() else None


def gate(pairs: Sequence[BuiltPair], model: str, min_top1_agreement: float, fast_options: Iterable[bool],
         images: list[bytes] | None, images_source: str = "--images") -> list[GateResult]:
    """A verdict for every (pair, fast, uint8) the space holds; pairs that failed their build or
    their accuracy report keep that reason."""
    fast_options = tuple(fast_options)
    results: list[GateResult] = []
    reference = next((p for p in pairs if p.precision == "fp32" and p.passed), None)
    ref_top1 = _top1_reference(reference, model, images) if images and reference is not None else None
    for pair in pairs:
        modes = modes_of(pair.engine, fast_options)
        if not pair.passed:
            results += [_result(pair, mode, passed=False, why=pair.why) for mode in modes]
            continue
        if ref_top1 is None:
            results += [_without_images(pair, mode, reference is None) for mode in modes]
            continue
        assert images is not None
        version = ModelRepository(pair.repository).version(model)  # parses the ONNX file: once a pair
        for uint8 in sorted({u for _, u in modes}):
            pixels = PixelInput.from_contract(version.contract) if uint8 else None
            engine = open_engine(version.variant, version.config, version.folder, pixels)
            try:
                for fast in sorted({f for f, u in modes if u == uint8}):
                    options = DecodeOptions(fast_jpeg_draft=fast, fast_transform=fast, uint8_pixels=uint8)
                    batch = np.stack([preprocess(data, version.contract, options) for data in images])
                    top1 = float(np.mean(run_batched(engine, batch).argmax(axis=1) == ref_top1))
                    exact = pair.precision == "fp32" and not fast and not uint8
                    result = _result(pair, (fast, uint8), top1_agreement=top1, images=len(images),
                                     source="reference" if exact else images_source)
                    if not exact and top1 < min_top1_agreement:  # the reference is what agreement means
                        result.passed = False
                        result.why = f"accuracy: top-1 agreement {top1:.2%} < {min_top1_agreement:.2%} on " \
                                     f"{len(images)} images ({images_source})"
                    results.append(result)
            finally:
                engine.close()
    return results


def _top1_reference(reference: BuiltPair, model: str, images: list[bytes]) -> np.ndarray:
    version = ModelRepository(reference.repository).version(model)
    engine = open_engine(version.variant, version.config, version.folder)
    try:
        batch = np.stack([preprocess(data, version.contract, DecodeOptions()) for data in images])
        return run_batched(engine, batch).argmax(axis=1)
    finally:
        engine.close()


def _without_images(pair: BuiltPair, mode: Mode, no_reference: bool) -> GateResult:
    """Fast preprocessing is refused; uint8 input (the same normalization, inside the model) takes
    its precision's verdict."""
    if mode[0]:
        return _result(pair, mode, passed=False,
                       why="accuracy: fast preprocessing needs real images to be gated (--images or "
                           "calibration.images)")
    if pair.precision == "fp32":
        return _result(pair, mode, source="reference")
    if no_reference:
        return _result(pair, mode, passed=False, why="accuracy: no fp32 reference built")
    return _result(pair, mode, top1_agreement=pair.top1_agreement, source="accuracy report")


def _result(pair: BuiltPair, mode: Mode, **fields: object) -> GateResult:
    return GateResult(engine=pair.engine, precision=pair.precision, fast_preprocess=mode[0], uint8_input=mode[1],
                      **fields)  # type: ignore[arg-type]


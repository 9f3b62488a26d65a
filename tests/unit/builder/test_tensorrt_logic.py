"""The TensorRT path's logic that needs no TensorRT: profiles, cache keys, plan records, calibration.

Also the real behaviour of this machine, which has neither TensorRT nor CUDA: availability says
why, and building or loading a plan fails with a clear EngineUnavailableError (no mock involved).
"""

from __future__ import annotations

import dataclasses
import importlib.util
from pathlib import Path
from typing import Any

import numpy as np
import pytest

from resserve.builder.compile_tensorrt import (
    build_plan,
    keep_in_cache,
    reuse_plan,
    strongly_typed,
    typed_onnx,
    unsupported_build,
    calibration_batch_size,
    calibration_batches,
    plan_cache_key,
    profile_shapes,
)
from resserve.engines.hardware import tensorrt_available
from resserve.engines.tensorrt import (
    PLAN_FILE,
    RECORD_FILE,
    PlanRecord,
    ProfileShapes,
    TensorRTEngine,
    plan_matches,
)
from resserve.errors import ConfigError, EngineUnavailableError

SHAPES = ProfileShapes((1, 3, 224, 224), (8, 3, 224, 224), (16, 3, 224, 224))
HERE = {"trt_version": "10.3.0", "gpu_name": "NVIDIA H100 80GB HBM3", "compute_capability": "9.0"}
KEY_ARGS: dict[str, Any] = {"onnx_sha256": "ab" * 32, "precision": "fp16", "shapes": SHAPES, **HERE}
NO_TRT = not tensorrt_available()[0]
no_trt_only = pytest.mark.skipif(not NO_TRT, reason="this machine has TensorRT and CUDA: see tests/gpu")


def record(**overrides: object) -> PlanRecord:
    fields: dict[str, object] = {"key": plan_cache_key(**KEY_ARGS), **HERE, "precision": "fp16",
                                 "min_shape": SHAPES.min, "opt_shape": SHAPES.opt, "max_shape": SHAPES.max,
                                 "onnx_sha256": "ab" * 32}
    fields.update(overrides)
    return PlanRecord.model_validate(fields)


# --- profile shapes --------------------------------------------------------------------------------

def test_profile_opt_is_the_largest_preferred_size_that_fits() -> None:
    shapes = profile_shapes((3, 224, 224), 16, [4, 8, 32])
    assert shapes == ProfileShapes((1, 3, 224, 224), (8, 3, 224, 224), (16, 3, 224, 224))


def test_profile_opt_defaults_to_max() -> None:
    assert profile_shapes((3, 256, 192), 12, []).opt == (12, 3, 256, 192)
    assert profile_shapes((3, 224, 224), 4, [8]).opt == (4, 3, 224, 224)  # 8 does not fit
    assert profile_shapes((3, 224, 224), 1).min == profile_shapes((3, 224, 224), 1).max == (1, 3, 224, 224)


@pytest.mark.parametrize(
    ("chw", "max_batch", "preferred", "message"),
    [
        ((3, 224), 8, (), "three positive ints"),
        ((3, 0, 224), 8, (), "three positive ints"),
        ((3, -1, 224), 8, (), "three positive ints"),
        ((3, 224, 224), 0, (), "max_batch_size must be >= 1"),
        ((3, 224, 224), 8, (4, 0), "preferred batch sizes must be >= 1"),
    ],
)
def test_profile_validation(chw: tuple[int, ...], max_batch: int, preferred: tuple[int, ...],
                            message: str) -> None:
    with pytest.raises(ConfigError, match=message):
        profile_shapes(chw, max_batch, preferred)  # type: ignore[arg-type]


# --- cache key ---------------------------------------------------------------------------------------

def test_cache_key_is_stable_hex() -> None:
    key = plan_cache_key(**KEY_ARGS)
    assert key == plan_cache_key(**dict(KEY_ARGS))
    assert len(key) == 64 and int(key, 16) >= 0
    assert key == plan_cache_key(**KEY_ARGS, calibration_sha256=None)
    # Pinned: a change of the key's recipe must be deliberate (it invalidates every built plan).
    assert key == "a430906933f7e1bb15e8c2b715e3bf3a3893f0345abf1288bd9388c9b8a2c727"


@pytest.mark.parametrize(
    ("field", "value"),
    [
        ("onnx_sha256", "cd" * 32),
        ("precision", "int8"),
        ("shapes", dataclasses.replace(SHAPES, opt=(4, 3, 224, 224))),
        ("shapes", dataclasses.replace(SHAPES, max=(32, 3, 224, 224))),
        ("shapes", dataclasses.replace(SHAPES, min=(2, 3, 224, 224))),
        ("trt_version", "10.4.0"),
        ("gpu_name", "NVIDIA A100-SXM4-80GB"),
        ("compute_capability", "8.0"),
    ],
)
def test_cache_key_changes_with_every_field(field: str, value: object) -> None:
    assert plan_cache_key(**{**KEY_ARGS, field: value}) != plan_cache_key(**KEY_ARGS)  # type: ignore[arg-type]


def test_cache_key_changes_with_calibration_data() -> None:
    with_a = plan_cache_key(**KEY_ARGS, calibration_sha256="a" * 64)
    assert with_a != plan_cache_key(**KEY_ARGS, calibration_sha256="b" * 64)
    assert with_a != plan_cache_key(**KEY_ARGS)


# --- plan record -------------------------------------------------------------------------------------

def test_plan_record_round_trip(tmp_path: Path) -> None:
    original = record()
    path = original.write(tmp_path)
    assert path == tmp_path / RECORD_FILE
    loaded = PlanRecord.read(tmp_path)
    assert loaded == original and loaded.shapes == SHAPES
    assert PlanRecord.read(tmp_path / "missing") is None


@pytest.mark.parametrize("text, why", [
    ("{not json", "Expecting property name"),
    ('{"key": "k", "trt_version": "10.3.0"}', "validation error"),  # an older schema: fields missing
    ("", "Expecting value"),
])
def test_a_corrupt_or_old_record_asks_for_a_rebuild(tmp_path: Path, text: str, why: str) -> None:
    (tmp_path / RECORD_FILE).write_text(text)
    with pytest.raises(EngineUnavailableError, match="resserve build --force") as raised:
        PlanRecord.read(tmp_path)
    assert why in str(raised.value) and RECORD_FILE in str(raised.value)


def test_plan_record_rejects_unknown_fields_and_precisions() -> None:
    with pytest.raises(ValueError, match="extra"):
        record(surprise=1)
    with pytest.raises(ValueError, match="precision"):
        record(precision="fp8")


def test_plan_matches_same_machine() -> None:
    assert plan_matches(record(), **HERE) == (True, "plan matches")
    assert plan_matches(record(), **HERE, key=plan_cache_key(**KEY_ARGS))[0]


@pytest.mark.parametrize(
    ("here", "reason"),
    [
        ({"trt_version": "10.4.0"}, "plan built with TensorRT 10.3.0, this is TensorRT 10.4.0"),
        ({"compute_capability": "8.9"}, "plan built for compute capability 9.0, this GPU has 8.9"),
        ({"gpu_name": "NVIDIA H200"}, "plan built on NVIDIA H100 80GB HBM3, this GPU is NVIDIA H200"),
    ],
)
def test_plan_mismatch_reasons(here: dict[str, str], reason: str) -> None:
    assert plan_matches(record(), **{**HERE, **here}) == (False, reason)


def test_plan_key_mismatch_means_rebuild() -> None:
    ok, why = plan_matches(record(), **HERE, key=plan_cache_key(**{**KEY_ARGS, "precision": "fp32"}))
    assert not ok and "other inputs" in why


# --- calibration batching ----------------------------------------------------------------------------

def test_calibration_batches_are_full_contiguous_float32() -> None:
    images = np.arange(10 * 3 * 2 * 2, dtype=np.float64).reshape(10, 3, 2, 2)[:, :, :, ::-1]  # not contiguous
    batches = list(calibration_batches(images, 4))
    assert [b.shape for b in batches] == [(4, 3, 2, 2), (4, 3, 2, 2)]  # the last 2 images are dropped
    for b in batches:
        assert b.dtype == np.float32 and b.flags.c_contiguous
    np.testing.assert_array_equal(np.concatenate(batches), images[:8].astype(np.float32))


def test_calibration_batches_exact_multiple_keeps_everything() -> None:
    images = np.zeros((6, 3, 4, 4), np.float32)
    assert sum(len(b) for b in calibration_batches(images, 3)) == 6


@pytest.mark.parametrize(
    ("shape", "batch", "message"),
    [((4, 3, 8), 2, r"\(N, C, H, W\)"), ((4, 3, 8, 8), 0, ">= 1"), ((3, 3, 8, 8), 4, "fewer than one batch")],
)
def test_calibration_batches_validation(shape: tuple[int, ...], batch: int, message: str) -> None:
    with pytest.raises(ConfigError, match=message):
        list(calibration_batches(np.zeros(shape, np.float32), batch))


def test_calibration_batch_size() -> None:
    assert calibration_batch_size(500, 32) == 16  # capped for memory
    assert calibration_batch_size(500, 8) == 8  # within the plan's profile
    assert calibration_batch_size(5, 32) == 5  # never more than the images


# --- this machine: no TensorRT or no CUDA ------------------------------------------------------------

@no_trt_only
def test_tensorrt_available_says_why() -> None:
    ok, why = tensorrt_available()
    assert not ok
    if importlib.util.find_spec("tensorrt") is None:
        assert "TensorRT Python package is not importable" in why and "resserve[gpu]" in why
    else:
        assert "CUDA" in why or "too old" in why


@no_trt_only
def test_build_plan_without_tensorrt_is_a_clear_error(tmp_path: Path) -> None:
    onnx_file = tmp_path / "model.onnx"
    onnx_file.write_bytes(b"not read: availability is checked first")
    with pytest.raises(EngineUnavailableError, match="cannot build a TensorRT plan: .*(TensorRT|CUDA)"):
        build_plan(onnx_file, tmp_path / "out", precision="fp16", max_batch_size=8)
    assert not (tmp_path / "out").exists()


@no_trt_only
def test_tensorrt_engine_load_without_tensorrt_is_a_clear_error(tmp_path: Path) -> None:
    (tmp_path / PLAN_FILE).write_bytes(b"plan")
    record().write(tmp_path)
    engine = TensorRTEngine(tmp_path / PLAN_FILE)
    with pytest.raises(EngineUnavailableError, match=f"cannot load the TensorRT plan .*{PLAN_FILE}"):
        engine.load()
    assert engine.describe()["engine"] == "tensorrt"  # describable before loading, for logs


# --- which TensorRT builds what ----------------------------------------------------------------------

@pytest.mark.parametrize("version", ["10.0.1", "10.3.0", "10.13.2.6", "11.0.0.1", "11.4.0"])
def test_tensorrt_10_and_11_build_every_precision(version: str) -> None:
    assert unsupported_build(version) is None


def test_an_unknown_major_or_version_is_refused() -> None:
    assert "has not been written for" in (unsupported_build("12.0.0") or "")
    assert "tensorrt>=10,<12" in (unsupported_build("9.2.0") or "")
    assert "cannot read" in (unsupported_build("nightly") or "")


def test_tensorrt_11_builds_strongly_typed_and_10_with_flags() -> None:
    assert not strongly_typed("10.13.2.6") and strongly_typed("11.0.0") and strongly_typed("11.4.0.11")
    with pytest.raises(ConfigError, match="cannot read"):
        strongly_typed("x.y")


def test_a_strongly_typed_fp32_build_parses_the_reference_itself(tmp_path: Path) -> None:
    reference = tmp_path / "model.onnx"
    assert typed_onnx(reference, tmp_path / "cache", "fp32", None) == reference
    with pytest.raises(ConfigError, match="calibration"):
        typed_onnx(reference, tmp_path / "cache", "int8", None)
    with pytest.raises(ConfigError, match="unknown TensorRT precision"):
        typed_onnx(reference, tmp_path / "cache", "bf16", None)


def test_the_gpu_extra_pins_the_supported_major() -> None:
    import tomllib

    root = Path(__file__).parents[3]
    extra = tomllib.loads((root / "pyproject.toml").read_text())["project"]["optional-dependencies"]["gpu"]
    assert "tensorrt>=10,<12" in extra and "onnxruntime-gpu>=1.27" in extra  # 1.27: the first for TensorRT 11


# --- plans kept across builds (resserve build stages each build in a fresh folder) -------------------

def _built(folder: Path, plan: bytes = b"plan bytes", **overrides: object) -> None:
    folder.mkdir(parents=True, exist_ok=True)
    (folder / PLAN_FILE).write_bytes(plan)
    record(**overrides).write(folder)


def test_a_fresh_staging_folder_reuses_the_cached_plan(tmp_path: Path) -> None:
    built, cache, staging = tmp_path / "v1", tmp_path / "cache", tmp_path / "staging"
    _built(built)
    keep_in_cache(built, cache)
    assert (cache / PLAN_FILE).read_bytes() == b"plan bytes" and PlanRecord.read(cache) == record()
    plan = reuse_plan(staging, cache, plan_cache_key(**KEY_ARGS), **HERE)
    assert plan == staging / PLAN_FILE and plan.read_bytes() == b"plan bytes"
    assert PlanRecord.read(staging) == record()


def test_a_cached_plan_for_another_key_gpu_or_version_is_not_reused(tmp_path: Path) -> None:
    cache = tmp_path / "cache"
    _built(cache)
    other_key = plan_cache_key(**{**KEY_ARGS, "precision": "int8"})
    assert reuse_plan(tmp_path / "a", cache, other_key, **HERE) is None
    assert reuse_plan(tmp_path / "b", cache, plan_cache_key(**KEY_ARGS), **{**HERE, "trt_version": "10.4.0"}) is None
    assert reuse_plan(tmp_path / "c", cache, plan_cache_key(**KEY_ARGS), **{**HERE, "compute_capability": "8.9"}) is None
    assert not (tmp_path / "a" / PLAN_FILE).exists()


def test_a_corrupt_cached_record_means_build_anew(tmp_path: Path) -> None:
    cache = tmp_path / "cache"
    _built(cache)
    (cache / RECORD_FILE).write_text("{")
    assert reuse_plan(tmp_path / "staging", cache, plan_cache_key(**KEY_ARGS), **HERE) is None
    assert reuse_plan(tmp_path / "staging", None, plan_cache_key(**KEY_ARGS), **HERE) is None

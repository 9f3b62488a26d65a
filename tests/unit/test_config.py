"""config.yaml and server settings: bad values fail at load, naming the file and the field."""

from __future__ import annotations

from pathlib import Path
from typing import get_args

import pytest
from pydantic import ValidationError

from resserve.config import (
    ENGINE_PRECISIONS,
    EngineName,
    ModelConfig,
    PrecisionName,
    ServerSettings,
    load_model_config,
)
from resserve.contract import PreprocessContract
from resserve.engines.factory import Variant
from resserve.errors import ConfigError

ONNX_SOURCE = "source: {onnx: model.onnx}\n"


def write_config(tmp_path: Path, text: str, folder: str = "m1") -> Path:
    path = tmp_path / folder / "config.yaml"
    path.parent.mkdir(parents=True, exist_ok=True)
    path.write_text(text, encoding="utf-8")
    return path


def load_error(path: Path) -> str:
    with pytest.raises(ConfigError) as info:
        load_model_config(path)
    message = str(info.value)
    assert str(path) in message, message
    return message


def test_minimal_onnx_config_gets_documented_defaults_and_folder_name(tmp_path: Path) -> None:
    config = load_model_config(write_config(tmp_path, ONNX_SOURCE, folder="resnet50"))
    assert config.name == "resnet50"
    assert config.source.onnx == "model.onnx" and config.source.arch is None
    assert config.engine == "onnxruntime" and config.device == "cpu" and config.precision == "fp32"
    assert config.max_batch_size == 16 and config.instance_count == 1
    assert config.dynamic_batching.max_queue_delay_ms == 5.0
    assert config.dynamic_batching.max_queue_size == 256
    assert config.dynamic_batching.preferred_batch_sizes == []
    assert config.preprocess is None and config.labels is None
    assert config.warmup_batch_sizes == [1]


def test_full_config_round_trips(tmp_path: Path) -> None:
    text = """
name: custom-name_1.v2
source: {arch: resnet50, weights: "torchvision:ResNet50_Weights.IMAGENET1K_V2", fallback_random: true, seed: 3}
device: auto
intra_op_threads: 2
max_batch_size: 32
instance_count: 2
dynamic_batching: {max_queue_delay_ms: 0, preferred_batch_sizes: [8, 32], max_queue_size: 10,
                   default_timeout_ms: 500}
labels: labels.txt
preprocess: {resize_size: 232, crop_size: 224, interpolation: bicubic, color_order: BGR, input_scale: "0-255",
             mean: [1, 2, 3], std: [4, 5, 6]}
warmup_batch_sizes: [1, 8]
"""
    config = load_model_config(write_config(tmp_path, text))
    # load_model_config takes an explicit name; the repository insists that it matches the folder.
    assert config.name == "custom-name_1.v2"
    assert config.source.arch == "resnet50" and config.source.fallback_random and config.source.seed == 3
    assert config.max_batch_size == 32 and config.instance_count == 2 and config.intra_op_threads == 2
    assert config.dynamic_batching.preferred_batch_sizes == [8, 32]
    assert config.dynamic_batching.max_queue_delay_ms == 0
    assert config.labels == "labels.txt"
    assert config.preprocess == PreprocessContract(resize_size=232, crop_size=224, interpolation="bicubic",
                                                   color_order="BGR", input_scale="0-255",
                                                   mean=(1, 2, 3), std=(4, 5, 6))
    assert ModelConfig.model_validate(config.model_dump(mode="json")) == config


def test_arch_with_random_weights_is_valid(tmp_path: Path) -> None:
    config = load_model_config(write_config(tmp_path, "source: {arch: resnet18, random_weights: true, seed: 7}"))
    assert config.source.random_weights and config.source.weights is None and config.source.seed == 7


@pytest.mark.parametrize(
    ("text", "field", "detail"),
    [
        (ONNX_SOURCE + "max_batch_size: 0\n", "max_batch_size", "greater than or equal to 1"),
        (ONNX_SOURCE + "max_batch_size: 4096\n", "max_batch_size", "less than or equal to 1024"),
        (ONNX_SOURCE + "max_batch_size: 4.5\n", "max_batch_size", "integer"),
        (ONNX_SOURCE + "max_batch_size: lots\n", "max_batch_size", "integer"),
        (ONNX_SOURCE + "dynamic_batching: {max_queue_delay_ms: -1}\n", "dynamic_batching.max_queue_delay_ms",
         "greater than or equal to 0"),
        (ONNX_SOURCE + "dynamic_batching: {max_queue_size: 0}\n", "dynamic_batching.max_queue_size", ""),
        (ONNX_SOURCE + "dynamic_batching: {default_timeout_ms: 0}\n", "dynamic_batching.default_timeout_ms", ""),
        (ONNX_SOURCE + "dynamic_batching: {max_delay: 3}\n", "dynamic_batching.max_delay", "Extra inputs"),
        (ONNX_SOURCE + "max_batchsize: 8\n", "max_batchsize", "Extra inputs are not permitted"),
        (ONNX_SOURCE + "engine: tensorflow\n", "engine", "onnxruntime"),
        (ONNX_SOURCE + "precision: int4\n", "precision", "int8"),
        (ONNX_SOURCE + "engine: openvino\nprecision: fp16\n", "precision", "builds bf16, fp32, int8"),
        (ONNX_SOURCE + "engine: torch\n", "engine torch", "source.arch"),
        (ONNX_SOURCE + "device: tpu\n", "device", "cpu"),
        (ONNX_SOURCE + "instance_count: 0\n", "instance_count", ""),
        (ONNX_SOURCE + "intra_op_threads: 0\n", "intra_op_threads", ""),
        ("source: {onnx: a.onnx, arch: resnet18, random_weights: true}\n", "source", "exactly one"),
        ("source: {seed: 1}\n", "source", "exactly one"),
        ("source: {arch: resnet18}\n", "source", "source.weights or source.random_weights"),
        ("source: {arch: resnet18, weights: w.pth, random_weights: true}\n", "source",
         "source.weights or source.random_weights"),
        ("source: {onnx: a.onnx, file: b.onnx}\n", "source.file", "Extra inputs"),
        ("source: {arch: resnet18, random_weights: true, num_classes: 0}\n", "source.num_classes", ""),
        ("max_batch_size: 8\n", "source", "Field required"),
        (ONNX_SOURCE + "max_batch_size: 4\ndynamic_batching: {preferred_batch_sizes: [2, 8]}\n",
         "preferred_batch_sizes", "[8] must lie in 1..max_batch_size (4)"),
        (ONNX_SOURCE + "dynamic_batching: {preferred_batch_sizes: [0]}\n", "preferred_batch_sizes", "[0]"),
        (ONNX_SOURCE + "preprocess: {crop_size: 0}\n", "preprocess", "sizes must be positive"),
        (ONNX_SOURCE + "preprocess: {resize_size: [256, 256]}\n", "preprocess", "shorter_side"),
        (ONNX_SOURCE + "preprocess: {std: [0.2, 0, 0.2]}\n", "preprocess", "std must be positive"),
        (ONNX_SOURCE + "preprocess: {mean: [0.5, 0.5]}\n", "preprocess.mean", ""),
        (ONNX_SOURCE + "preprocess: {interpolation: area}\n", "preprocess.interpolation", ""),
        (ONNX_SOURCE + "preprocess: {layout: CHW}\n", "preprocess.layout", ""),
        (ONNX_SOURCE + "preprocess: {input_scale: '0-65535'}\n", "preprocess.input_scale", ""),
        (ONNX_SOURCE + "preprocess: {crop: 224}\n", "preprocess.crop", "Extra inputs"),
        (ONNX_SOURCE + "name: ../escape\n", "name", "pattern"),
        (ONNX_SOURCE + "name: 'has space'\n", "name", "pattern"),
        (ONNX_SOURCE + "name: ''\n", "name", "pattern"),
        (ONNX_SOURCE + "name: .hidden\n", "name", "pattern"),
    ],
)
def test_bad_values_fail_at_load_naming_file_and_field(tmp_path: Path, text: str, field: str, detail: str) -> None:
    message = load_error(write_config(tmp_path, text))
    assert field in message, message
    assert detail in message, message


def test_every_problem_is_reported_at_once(tmp_path: Path) -> None:
    message = load_error(write_config(tmp_path, ONNX_SOURCE + "max_batch_size: 0\ninstance_count: 0\n"))
    assert "max_batch_size" in message and "instance_count" in message


def test_the_engine_and_precision_types_list_exactly_engine_precisions() -> None:
    # ENGINE_PRECISIONS is the one list of engines and what each builds; the Literal types pydantic
    # validates with must name the same engines and precisions, no more, no fewer.
    assert set(get_args(EngineName)) == set(ENGINE_PRECISIONS)
    assert set(get_args(PrecisionName)) == {p for precisions in ENGINE_PRECISIONS.values() for p in precisions}
    assert get_args(ModelConfig.model_fields["engine"].annotation) == ("auto", *get_args(EngineName))
    assert ModelConfig.model_fields["precision"].annotation == PrecisionName
    for engine, precisions in ENGINE_PRECISIONS.items():
        for precision in precisions:
            assert Variant(engine, precision).artifact(Path("v")).is_relative_to("v")  # raises for an unknown engine
            if engine != "torch":  # torch needs source.arch
                ModelConfig(name="m", source={"onnx": "model.onnx"}, engine=engine, precision=precision)


@pytest.mark.parametrize("folder", ["has space", "-leading-dash", "ünïcode"])
def test_folder_name_must_be_a_valid_model_name(tmp_path: Path, folder: str) -> None:
    message = load_error(write_config(tmp_path, ONNX_SOURCE, folder=folder))
    assert "name" in message


@pytest.mark.parametrize(
    ("text", "detail"),
    [
        ("- source\n- engine\n", "expected a mapping at the top level, got list"),
        ("just a string\n", "expected a mapping at the top level, got str"),
        ("42\n", "expected a mapping at the top level, got int"),
        ("source: {onnx: [\n", "cannot read YAML"),
        ("source:\n  onnx: a.onnx\n bad_indent: 1\n", "cannot read YAML"),
        ("\tsource: {onnx: a.onnx}\n", "cannot read YAML"),
    ],
)
def test_unreadable_or_non_mapping_yaml_is_a_config_error(tmp_path: Path, text: str, detail: str) -> None:
    message = load_error(write_config(tmp_path, text))
    assert detail in message, message


def test_empty_file_reports_the_missing_source(tmp_path: Path) -> None:
    message = load_error(write_config(tmp_path, ""))
    assert "source" in message and "Field required" in message


def test_missing_file_is_a_config_error(tmp_path: Path) -> None:
    path = tmp_path / "nowhere" / "config.yaml"
    message = load_error(path)
    assert "cannot read YAML" in message


def test_invalid_utf8_is_a_config_error(tmp_path: Path) -> None:
    path = tmp_path / "m1" / "config.yaml"
    path.parent.mkdir()
    path.write_bytes(b"source: {onnx: \xff\xfe.onnx}\n")
    with pytest.raises(ConfigError, match="m1"):
        load_model_config(path)


# ---- ServerSettings -------------------------------------------------------------------------------

ENV_FIELDS = ["MODEL_REPO", "HOST", "PORT", "MODELS", "PREPROCESS_THREADS", "MAX_BODY_BYTES", "MAX_IMAGE_PIXELS",
              "MAX_MULTIPART_FILES", "MAX_TOP_K", "CONTROL_TOKEN", "ALLOW_REPOSITORY_CONTROL",
              "GRACEFUL_SHUTDOWN_S", "BUILD_MISSING", "API_KEYS", "API_KEYS_FILE", "AUTH_HEALTH", "AUTH_METRICS"]


@pytest.fixture(autouse=True)
def clean_env(monkeypatch: pytest.MonkeyPatch) -> None:
    """No RESSERVE_* setting of the machine running the tests leaks in."""
    for field in ENV_FIELDS:
        monkeypatch.delenv(f"RESSERVE_{field}", raising=False)


def test_settings_defaults() -> None:
    settings = ServerSettings()
    assert settings.model_repo == Path("model_repo") and settings.host == "127.0.0.1" and settings.port == 8000
    assert settings.models is None and settings.control_token is None
    assert settings.allow_repository_control is False and settings.build_missing is True


def test_settings_read_resserve_env_vars(monkeypatch: pytest.MonkeyPatch, tmp_path: Path) -> None:
    monkeypatch.setenv("RESSERVE_MODEL_REPO", str(tmp_path))
    monkeypatch.setenv("RESSERVE_HOST", "0.0.0.0")
    monkeypatch.setenv("RESSERVE_PORT", "9001")
    monkeypatch.setenv("RESSERVE_MODELS", '["resnet50", "r18"]')
    monkeypatch.setenv("RESSERVE_PREPROCESS_THREADS", "3")
    monkeypatch.setenv("RESSERVE_MAX_BODY_BYTES", "4096")
    monkeypatch.setenv("RESSERVE_MAX_TOP_K", "5")
    monkeypatch.setenv("RESSERVE_CONTROL_TOKEN", "s3cret")
    monkeypatch.setenv("RESSERVE_ALLOW_REPOSITORY_CONTROL", "true")
    monkeypatch.setenv("RESSERVE_GRACEFUL_SHUTDOWN_S", "2.5")
    monkeypatch.setenv("RESSERVE_BUILD_MISSING", "0")
    settings = ServerSettings()
    assert settings.model_repo == tmp_path and settings.host == "0.0.0.0" and settings.port == 9001
    assert settings.models == ["resnet50", "r18"] and settings.preprocess_threads == 3
    assert settings.max_body_bytes == 4096 and settings.max_top_k == 5
    assert settings.control_token == "s3cret" and settings.allow_repository_control is True
    assert settings.graceful_shutdown_s == 2.5 and settings.build_missing is False


def test_settings_env_names_are_case_insensitive(monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setenv("resserve_port", "8123")
    assert ServerSettings().port == 8123


def test_explicit_arguments_beat_the_environment(monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setenv("RESSERVE_PORT", "9001")
    assert ServerSettings(port=9002).port == 9002


@pytest.mark.parametrize(
    ("var", "value"),
    [
        ("PORT", "70000"),
        ("PORT", "-1"),
        ("PORT", "http"),
        ("MAX_BODY_BYTES", "100"),
        ("MAX_IMAGE_PIXELS", "0"),
        ("MAX_MULTIPART_FILES", "0"),
        ("MAX_TOP_K", "0"),
        ("PREPROCESS_THREADS", "0"),
        ("GRACEFUL_SHUTDOWN_S", "-1"),
        ("ALLOW_REPOSITORY_CONTROL", "maybe"),
        ("BUILD_MISSING", "sometimes"),
        ("MODELS", "not json ["),
    ],
)
def test_settings_reject_bad_env_values_naming_the_field(monkeypatch: pytest.MonkeyPatch, var: str,
                                                        value: str) -> None:
    monkeypatch.setenv(f"RESSERVE_{var}", value)
    with pytest.raises(ValidationError) as info:
        ServerSettings()
    assert var.lower() in str(info.value)


def test_settings_reject_unknown_arguments() -> None:
    with pytest.raises(ValidationError, match="max_batchsize"):
        ServerSettings(max_batchsize=8)  # type: ignore[call-arg]


def test_unrelated_resserve_env_vars_are_ignored(monkeypatch: pytest.MonkeyPatch) -> None:
    # The weights cache and mirror share the prefix; they are not server settings and must not
    # make the server refuse to start.
    monkeypatch.setenv("RESSERVE_CACHE_DIR", "/tmp/cache")
    monkeypatch.setenv("RESSERVE_WEIGHTS_BASE_URL", "http://mirror.local/models")
    monkeypatch.setenv("RESSERVE_SLOW", "1")
    assert ServerSettings().port == 8000


# ---- Secrets: the control token and API keys ------------------------------------------------------


@pytest.mark.parametrize("token", ["", " ", "\t\n"])
def test_blank_control_token_is_refused_at_start(monkeypatch: pytest.MonkeyPatch, token: str) -> None:
    # An unset secret substituted into a manifest: it must not turn into "Bearer <nothing>" working.
    monkeypatch.setenv("RESSERVE_CONTROL_TOKEN", token)
    with pytest.raises(ValidationError, match="RESSERVE_CONTROL_TOKEN is set but blank"):
        ServerSettings()
    with pytest.raises(ValidationError, match="blank"):
        ServerSettings(control_token=token)


def test_control_token_loses_surrounding_whitespace() -> None:
    assert ServerSettings(control_token=" s3cret\n").control_token == "s3cret"


def test_api_keys_are_off_by_default() -> None:
    settings = ServerSettings()
    assert settings.api_keys == [] and settings.api_keys_file is None
    assert settings.auth_health is False and settings.auth_metrics is False


@pytest.mark.parametrize(("value", "keys"), [
    ('["k1", "k2"]', ["k1", "k2"]),
    ("k1,k2", ["k1", "k2"]),
    (" k1 , k2 ", ["k1", "k2"]),
    ("only", ["only"]),
    ("[]", []),
])
def test_api_keys_from_env_as_json_or_comma_separated(monkeypatch: pytest.MonkeyPatch, value: str,
                                                      keys: list[str]) -> None:
    monkeypatch.setenv("RESSERVE_API_KEYS", value)
    monkeypatch.setenv("RESSERVE_AUTH_HEALTH", "true")
    monkeypatch.setenv("RESSERVE_AUTH_METRICS", "1")
    settings = ServerSettings()
    assert settings.api_keys == keys and settings.auth_health and settings.auth_metrics


@pytest.mark.parametrize("value", ["", " ", "k1,", "k1,,k2", '["k1", " "]', '["k1", ""]'])
def test_blank_api_keys_are_refused_at_start(monkeypatch: pytest.MonkeyPatch, value: str) -> None:
    monkeypatch.setenv("RESSERVE_API_KEYS", value)
    with pytest.raises(ValidationError, match="blank keys are refused") as info:
        ServerSettings()
    assert "k1" not in str(info.value)  # the keys that are there are not echoed


def test_malformed_json_api_keys_are_a_clear_error(monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setenv("RESSERVE_API_KEYS", '["k1", ')
    with pytest.raises(ValidationError, match="not one") as info:
        ServerSettings()
    assert "k1" not in str(info.value)


def test_api_keys_file_adds_one_key_per_line(monkeypatch: pytest.MonkeyPatch, tmp_path: Path) -> None:
    keys = tmp_path / "keys"
    keys.write_text("file-1\n\n  file-2  \nboth\n")  # blank lines (and the trailing newline) are no keys
    monkeypatch.setenv("RESSERVE_API_KEYS_FILE", str(keys))
    monkeypatch.setenv("RESSERVE_API_KEYS", "env-1,both")
    assert ServerSettings().api_keys == ["env-1", "both", "file-1", "file-2"]


@pytest.mark.parametrize(("text", "detail"), [("", "holds no key"), ("\n  \n", "holds no key"),
                                              (None, "cannot read it")])
def test_empty_or_missing_api_keys_file_is_refused(tmp_path: Path, text: str | None, detail: str) -> None:
    keys = tmp_path / "keys"
    if text is not None:
        keys.write_text(text)
    with pytest.raises(ValidationError, match=detail):
        ServerSettings(api_keys_file=keys)

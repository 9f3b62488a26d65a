"""What a built artifact says about itself, read without torch or build code.

The ONNX file's ``metadata_props`` (:class:`ModelMetadata`: keys prefixed ``resserve.`` so they sit
beside other tools' metadata without clashing) and, for a reduced-precision variant, its
``accuracy.json`` (:class:`AccuracyReport`), and every version's ``build.json`` (:class:`BuildRecord`).
The server, the repository and ``resserve describe`` read these; the builder writes them.
"""

from __future__ import annotations

import json
from pathlib import Path
from typing import Any

import onnx
from pydantic import BaseModel, ConfigDict

from resserve.contract import PreprocessContract
from resserve.errors import AccuracyError

PREFIX = "resserve."
REPORT_FILE = "accuracy.json"


class ModelMetadata(BaseModel):
    """The facts a served model must carry: what it is, where its weights came from, how to feed it."""

    model_config = ConfigDict(extra="ignore")

    arch: str | None = None
    num_classes: int | None = None
    weights_kind: str = "unknown"  # file | torchvision | random | unknown
    weights_source: str = "unknown"
    weights_sha256: str | None = None
    random_weights: bool = False
    preprocess: PreprocessContract | None = None
    labels_name: str | None = None
    labels: list[str] | None = None
    folded: bool = False
    softmax: bool = False
    resserve_version: str | None = None
    parity: dict[str, float] | None = None

    def to_props(self) -> dict[str, str]:
        """Flatten to ONNX string key/value pairs; structured values as compact JSON."""
        props: dict[str, str] = {}
        for key, value in self.model_dump(mode="json", exclude_none=True).items():
            props[PREFIX + key] = value if isinstance(value, str) else json.dumps(value, separators=(",", ":"))
        return props

    @classmethod
    def from_props(cls, props: dict[str, str]) -> ModelMetadata:
        """Parse what :meth:`to_props` wrote; foreign keys are ignored."""
        values: dict[str, object] = {}
        for key, raw in props.items():
            if not key.startswith(PREFIX):
                continue
            name = key[len(PREFIX) :]
            field = cls.model_fields.get(name)
            if field is None:
                continue
            values[name] = raw if field.annotation in (str, str | None) else json.loads(raw)
        return cls.model_validate(values)


def write_metadata(model: onnx.ModelProto, metadata: ModelMetadata) -> None:
    """Replace resserve's keys in ``model.metadata_props``, keeping everybody else's."""
    kept = [p for p in model.metadata_props if not p.key.startswith(PREFIX)]
    del model.metadata_props[:]
    model.metadata_props.extend(kept)
    for key, value in metadata.to_props().items():
        model.metadata_props.add(key=key, value=value)


def read_metadata(path: Path) -> ModelMetadata:
    """Metadata of an ONNX file, without loading its weights."""
    model = onnx.load(str(path), load_external_data=False)
    return ModelMetadata.from_props({p.key: p.value for p in model.metadata_props})


class RuntimeRecord(BaseModel):
    """What ran when a report was measured, or what serves now (``Engine.runtime()``): the answers of a
    reduced-precision model depend on these, so they are recorded, compared at load and exported."""

    model_config = ConfigDict(extra="ignore")

    engine: str
    engine_version: str | None = None
    isa: str  # instruction-set class: amx, avx512_vnni, avx512, avx2, baseline, other
    cpu_features: list[str] = []  # the CPUID features that change the numbers (AVX2, AVX512VNNI, AMX_INT8, ...)
    precision: str | None = None
    inference_precision: str | None = None  # what the runtime says it runs non-quantized layers in
    int8_kernels: str | None = None  # ONNX Runtime's CPU int8: exact, exact (x64quantprecision), saturating
    provider: str | None = None


class AccuracyReport(BaseModel):
    """Agreement of ``variant`` with ``reference`` on ``images`` held-out images (``accuracy.json``).

    Top-1 and top-5 agreement (does the variant pick the reference's class, is the reference's
    class in the variant's top 5) and the mean cosine similarity of the logit vectors; measured by
    :func:`resserve.builder.accuracy.compare`.
    """

    variant: str
    reference: str
    images: int
    top1_agreement: float
    top5_agreement: float
    cosine_mean: float
    cosine_min: float
    method: str
    measured_on: RuntimeRecord | None = None  # None: a report from before it was recorded

    def summary(self) -> str:
        where = f" on {self.measured_on.isa}" if self.measured_on else ""
        return (f"{self.variant} vs {self.reference} on {self.images} held-out images{where}: top-1 "
                f"{self.top1_agreement:.2%}, top-5 {self.top5_agreement:.2%}, cosine {self.cosine_mean:.5f}")

    def check(self, min_top1: float) -> None:
        """Raise AccuracyError when top-1 agreement is under ``min_top1``."""
        if self.top1_agreement < min_top1:
            raise AccuracyError(f"accuracy floor {min_top1:.2%} not met: {self.summary()}")

    def write(self, folder: Path) -> Path:
        path = folder / REPORT_FILE
        path.write_text(self.model_dump_json(indent=2))
        return path

    @classmethod
    def read(cls, folder: Path) -> AccuracyReport | None:
        path = folder / REPORT_FILE
        return cls.model_validate(json.loads(path.read_text())) if path.is_file() else None


BUILD_RECORD = "build.json"


class BuildRecord(BaseModel):
    """What built a version (``build.json``): the content hash the stale check compares, the engine
    and precision (the server opens what was built, never what this machine would choose now),
    whether it fell back to random weights, its accuracy report and the config it was built from."""

    model_config = ConfigDict(extra="ignore")

    content_hash: str
    engine: str
    precision: str
    random_fallback: bool = False
    # As written; read loosely, so a report of another resserve's shape never invalidates the record.
    accuracy: dict[str, Any] | None = None
    resserve_version: str = ""
    config: dict[str, Any] = {}
    # Every file of the version folder but this record, by relative path: its sha256. A remote
    # repository's files are checked against it before they load (resserve.remote_repository).
    artifacts: dict[str, str] = {}

    def write(self, folder: Path) -> Path:
        path = folder / BUILD_RECORD
        path.write_text(self.model_dump_json(indent=2))
        return path

    @classmethod
    def read(cls, folder: Path) -> BuildRecord | None:
        """The folder's record, or None where there is none or it cannot be read (an older or
        damaged build: the caller decides whether that means stale or an error)."""
        try:
            return cls.model_validate_json((folder / BUILD_RECORD).read_bytes())
        except (OSError, ValueError):
            return None

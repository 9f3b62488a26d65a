"""What an exported ONNX file says about itself (``metadata_props``), read without torch.

The server, the repository and ``resserve describe`` read this; the exporter writes it. Keys are
prefixed ``resserve.`` so they sit beside other tools' metadata without clashing.
"""

from __future__ import annotations

import json
from pathlib import Path

import onnx
from pydantic import BaseModel, ConfigDict

from resserve.contract import PreprocessContract

PREFIX = "resserve."


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

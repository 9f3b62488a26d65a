"""torch ResNet -> folded ONNX file, checked against the source model.

Follows timm's ``utils/onnx.py``: eval mode, dynamic batch axis, the ONNX checker, then a
comparison with ONNX Runtime. Added here: BatchNorm folded in torch first (with its own parity
check), zero BatchNormalization nodes asserted in the graph, and metadata that records what the
model is, where its weights came from and how to preprocess for it.

Example::

    loaded = load_model("resnet50", random_weights=True, seed=0)
    report = export_onnx(loaded, Path("resnet50.onnx"))
"""

from __future__ import annotations

import logging
import warnings
from dataclasses import dataclass, field
from pathlib import Path

import numpy as np
import onnx
import onnxruntime as ort
import torch

from resserve import __version__
from resserve.builder.logit_parity import DEFAULT_RTOL, ParityResult, compare_logits
from resserve.errors import ExportError
from resserve.labels import default_labels
from resserve.metadata import ModelMetadata, write_metadata
from resserve.models.fold import fold_batchnorms
from resserve.models.weights import LoadedModel
from resserve.synthetic import synthetic_batch

log = logging.getLogger(__name__)

INPUT_NAME = "input"
OUTPUT_NAME = "logits"
DEFAULT_OPSET = 18


@dataclass
class ExportReport:
    """What the export did and measured."""

    path: Path
    folds: int
    parity: list[ParityResult] = field(default_factory=list)
    metadata: ModelMetadata | None = None


def parity_inputs(size: int, seed: int, batch: int = 3) -> dict[str, np.ndarray]:
    """Random normal and image-like batches: both kinds of input the checks must pass on.

    Batch 3 (not the traced 1) also proves the batch axis is really dynamic.
    """
    rng = np.random.default_rng(seed)
    return {
        "random": rng.standard_normal((batch, 3, size, size), dtype=np.float32),
        "image": synthetic_batch(batch, size, seed=seed + 1),
    }


def export_onnx(
    loaded: LoadedModel,
    output: Path,
    *,
    opset: int = DEFAULT_OPSET,
    rtol: float = DEFAULT_RTOL,
    labels: list[str] | None = None,
    labels_name: str | None = None,
    seed: int = 0,
) -> ExportReport:
    """Fold, export, check and annotate ``loaded`` as ``output``; raise on any failed check."""
    if opset < 17:
        raise ExportError(f"opset {opset} is too old; resserve exports opset >= 17")
    label_list = labels or list(default_labels(loaded.num_classes))
    if len(label_list) != loaded.num_classes:
        raise ExportError(f"{len(label_list)} labels given for a model with {loaded.num_classes} classes")
    source = loaded.model.eval()
    folded, folds = fold_batchnorms(source)
    size = loaded.contract.crop_wh[1]
    inputs = parity_inputs(size, seed)
    with torch.no_grad():
        reference = {k: source(torch.from_numpy(v)).numpy() for k, v in inputs.items()}
        folded_out = {k: folded(torch.from_numpy(v)).numpy() for k, v in inputs.items()}
    results = [compare_logits(f"fold_torch.{k}", reference[k], folded_out[k], rtol) for k in inputs]

    output.parent.mkdir(parents=True, exist_ok=True)
    _torch_export(folded, output, size, opset)
    model = onnx.load(str(output))
    batchnorms = sum(n.op_type == "BatchNormalization" for n in model.graph.node)
    if batchnorms:
        raise ExportError(f"exported graph still has {batchnorms} BatchNormalization nodes")

    session = ort.InferenceSession(model.SerializeToString(), providers=["CPUExecutionProvider"])
    for key, batch in inputs.items():
        (onnx_out,) = session.run(None, {INPUT_NAME: batch})
        results.append(compare_logits(f"onnxruntime.{key}", reference[key], onnx_out, rtol))

    metadata = ModelMetadata(
        arch=loaded.arch,
        num_classes=loaded.num_classes,
        weights_kind=loaded.source.kind,
        weights_source=loaded.source.description,
        weights_sha256=loaded.source.sha256,
        random_weights=loaded.source.is_random,
        preprocess=loaded.contract,
        labels_name=labels_name or ("imagenet-1k" if loaded.num_classes == 1000 and not labels else "custom"),
        labels=label_list,
        folded=True,
        softmax=False,
        resserve_version=__version__,
        parity={k: v for r in results for k, v in r.as_dict().items()},
    )
    write_metadata(model, metadata)
    model.doc_string = f"{loaded.arch} exported by resserve {__version__}; weights: {loaded.source.description}"
    onnx.save(model, str(output))
    try:
        onnx.checker.check_model(str(output), full_check=True)
    except onnx.checker.ValidationError as exc:
        raise ExportError(f"{output} fails the ONNX checker: {exc}") from exc
    worst = max(r.relative_max_diff for r in results)
    log.info("exported %s to %s: %d BatchNorms folded, worst parity %.2e", loaded.arch, output, folds, worst)
    return ExportReport(output, folds, results, metadata)


def _torch_export(model: torch.nn.Module, output: Path, size: int, opset: int) -> None:
    """The torch.export-based exporter with a symbolic batch dimension."""
    example = (torch.randn(1, 3, size, size),)
    batch = torch.export.Dim("batch", min=1, max=4096)
    with warnings.catch_warnings():
        # The exporter warns about its own internals (pytree deprecations) on every call.
        warnings.simplefilter("ignore")
        try:
            torch.onnx.export(
                model,
                example,
                str(output),
                input_names=[INPUT_NAME],
                output_names=[OUTPUT_NAME],
                opset_version=opset,
                dynamic_shapes={"x": {0: batch}},
                dynamo=True,
                external_data=False,
                verbose=False,
            )
        except Exception as exc:
            raise ExportError(f"torch.onnx.export failed: {exc}") from exc

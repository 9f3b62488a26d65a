"""Run under an emulated CPU by test_int8_emulated_avx2.py: open a built model as the server does
and run its load-time check; print one JSON line with what ran and the verdict.

    qemu-x86_64 -cpu EPYC-Milan python emulated_load_check.py REPO MODEL EXACT_KERNELS FLOOR
"""

from __future__ import annotations

import json
import sys
from pathlib import Path

from resserve.config import OnnxRuntimeConfig
from resserve.engines.hardware import isa_class
from resserve.errors import AccuracyError
from resserve.repository import ModelRepository, ModelVersion
from resserve.serving.load_check import load_check
from resserve.serving.manager import serving_engine


def main(repo: str, model: str, exact_kernels: str, floor: str) -> None:
    version = ModelRepository(Path(repo)).version(model)
    config = version.config.model_copy(update={
        "onnxruntime": OnnxRuntimeConfig(int8_exact_kernels=exact_kernels),  # type: ignore[arg-type]
        "calibration": version.config.calibration.model_copy(update={"min_top1_agreement": float(floor)}),
    })
    version = ModelVersion(config, version.folder, version.version, version.metadata, version.variant)
    engine = serving_engine(version)
    result: dict[str, object] = {"isa": isa_class(), "runtime": engine.runtime()}
    try:
        check = load_check(version, engine)
        result.update(passed=True, check=check.model_dump() if check else None)
    except AccuracyError as exc:
        result.update(passed=False, reason=str(exc))
    print("RESULT " + json.dumps(result), flush=True)


if __name__ == "__main__":
    main(*sys.argv[1:5])

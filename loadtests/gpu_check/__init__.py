"""``make gpu-check``: one short run on a lent GPU machine, one table at the end.

    python3 loadtests/gpu_check [--wheels gpu-wheels] [--budget-s 460] [--stages tests,engine,...]

(``python3 -m loadtests.gpu_check`` from the repository root is the same.)

Stages, each in a child process of its own with a time limit (a hang or a crash in one is that
stage's failure, never the whole check's), each skipped with the reason where what it needs is
missing:

1. ``tests``: the GPU-marked tests, twice: the TensorRT, ONNX Runtime GPU and cuda-python tests
   with torch made unimportable (what the GPU runtime image carries: no torch), on a ResNet-18
   ONNX file exported first; then the torch tests (TensorRT and ONNX Runtime CUDA skip as always
   where those are absent).
2. ``engine``: the torch engine on CUDA through ``bench_engine`` (what ``resserve bench engine``
   runs): ResNet-50 fp16 and bf16, channels-last, eager and with a CUDA graph per batch size, then
   ResNet-18 fp16, at batch 1..256, seeded random weights.
3. ``preprocess``: the CPU path (``bench_preprocess``, one core) against nvJPEG decode plus resize,
   crop and normalize on the GPU (``GpuPreprocessor``), on synthetic 500x375 and 1600x1200 JPEGs,
   with the GPU tensor's deviation from the CPU path's.
4. ``server``: ``resserve serve`` on one torch-CUDA fp16 ResNet-50 built here, loaded by the
   project's load generator (closed loop, 64 clients by default), once per ``--workers`` value.
   The server decodes on the CPU, then once more with the model's ``gpu_decode: true`` (nvJPEG
   and GPU preprocessing in the server) at the first worker count. The resserve a stage runs is
   always this checkout's (see below; gpu-wheels holds no resserve), so nothing probes its options.

The lent machine's ``python3`` has CUDA torch and torchvision but few of resserve's dependencies
and no network: ``make gpu-wheels`` (here) downloads them into ``gpu-wheels/``, which travels
with the run, and the check first installs, into a temporary folder put on the children's
``PYTHONPATH``, each wheel whose package is missing there or older. The repository root goes on
that path too (nothing is pip-installed). Results: ``$OUT/gpu-check.json`` (or ``./``, or
``--json``) and every child's output in ``gpu-check.log`` beside it.

Modules, one job each: ``cli`` (the flags; the parent's run and a child's), ``wheels``,
``supervisor`` (a stage's child, its environment and time limit), ``table``, ``stages`` (which
stage needs what, and why one is skipped) with one module per stage, and ``resserve_modules``
(every resserve module a stage imports, by name, in one place). Every module imports the standard
library alone (``tests/unit/test_gpu_check_package.py``) until a stage's child imports what it
needs.
"""

from __future__ import annotations

from pathlib import Path

PACKAGE = Path(__file__).resolve().parent
ROOT = PACKAGE.parents[1]  # the checkout: the lent machine has no installed resserve, this is the package
DESCRIPTION = (__doc__ or "").split("\n\n")[0]

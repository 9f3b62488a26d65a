"""loadtests/peer_baseline.py, the same-machine peer: it must do the work resserve does, or the
"2.5x the best peer" ratio would compare unlike things."""

from __future__ import annotations

import sys
from pathlib import Path

import httpx
import numpy as np
import onnxruntime as ort
import pytest

from resserve.perf.server_process import server_process
from resserve.contract import PreprocessContract
from resserve.preprocess import preprocess
from tests.server_harness import jpeg

LOADTESTS = Path(__file__).parents[3] / "loadtests"


@pytest.fixture(scope="module")
def peer():
    sys.path.insert(0, str(LOADTESTS))
    try:
        import peer_baseline
    finally:
        sys.path.remove(str(LOADTESTS))
    return peer_baseline


def test_peer_preprocessing_is_resserves_exact_path(peer) -> None:
    for size in ((500, 375), (375, 500), (1280, 960)):
        data = jpeg(*size)
        ours = preprocess(data, PreprocessContract())
        theirs = peer.preprocess(data)[0]
        assert theirs.shape == ours.shape == (3, 224, 224)
        np.testing.assert_allclose(theirs, ours, atol=1e-5)  # same decode, resize, crop, normalize


def test_peer_classifies_through_http_like_a_direct_session(model_onnx: Path, tmp_path: Path) -> None:
    data = jpeg(500, 375, seed=1)
    command = [sys.executable, str(LOADTESTS / "peer_baseline.py"), str(model_onnx), "--port", "{port}", "--threads", "1"]
    with server_process(None, command=command, log_dir=tmp_path, ready_timeout_s=60) as server:
        response = httpx.post(f"{server.url}/v2/models/peer/classify", content=data,
                              headers={"content-type": "image/jpeg"}, timeout=30)
    assert response.status_code == 200, response.text
    predictions = response.json()["results"][0]["predictions"]
    session = ort.InferenceSession(str(model_onnx), providers=["CPUExecutionProvider"])
    logits = session.run(None, {session.get_inputs()[0].name: preprocess(data, PreprocessContract())[None]})[0][0]
    assert [p["index"] for p in predictions] == list(np.argsort(-logits)[:5])

"""The peer baseline, run on the same machine as resserve: plain FastAPI, one ONNX Runtime run per
request, no batching.

`shared/notes/cpu_performance.md` measured peer servers on a Sapphire Rapids machine; the best of
them was this shape (33 rps ResNet-50 fp32, 83 rps int8, ahead of LitServe). Absolute numbers do
not carry from one machine to another, so issue 8's "at least 2.5x the best peer" is measured here
as a ratio in one run: this app and resserve, the same ONNX files, the same load generator.

It is what a user writes in an afternoon, done properly: Pillow decode, torchvision's resize 256 /
crop 224 / normalize, the session run in FastAPI's thread pool so the event loop stays free, all
cores to ONNX Runtime's intra-op pool. Raw image bodies (cheaper than the multipart the notes used).

    python loadtests/peer_baseline.py model_repo/resnet50/1/model.onnx --port 8200
    resserve loadtest run http://127.0.0.1:8200 --model peer --concurrency 16
"""

from __future__ import annotations

import argparse
import io
from pathlib import Path

import numpy as np
import onnxruntime as ort
from fastapi import FastAPI, Request
from fastapi.concurrency import run_in_threadpool
from fastapi.responses import JSONResponse
from PIL import Image

MEAN = np.array([0.485, 0.456, 0.406], dtype=np.float32)
STD = np.array([0.229, 0.224, 0.225], dtype=np.float32)


def preprocess(data: bytes) -> np.ndarray:
    """torchvision's ImageNet eval preset on a PIL image: resize 256 (bilinear, antialiased), crop 224."""
    image = Image.open(io.BytesIO(data)).convert("RGB")
    width, height = image.size
    scale = 256 / min(width, height)
    image = image.resize((round(width * scale), round(height * scale)), Image.Resampling.BILINEAR)
    left, top = (image.width - 224) // 2, (image.height - 224) // 2
    pixels = np.asarray(image.crop((left, top, left + 224, top + 224)), dtype=np.float32) / 255.0
    return ((pixels - MEAN) / STD).transpose(2, 0, 1)[np.newaxis]


def create_app(model: Path, threads: int | None = None) -> FastAPI:
    """One session, one run per request, top-5 as JSON."""
    options = ort.SessionOptions()
    if threads:
        options.intra_op_num_threads = threads
    session = ort.InferenceSession(str(model), options, providers=["CPUExecutionProvider"])
    input_name = session.get_inputs()[0].name
    app = FastAPI()

    def infer(data: bytes) -> list[dict[str, float]]:
        logits = session.run(None, {input_name: preprocess(data)})[0][0]
        best = np.argsort(-logits)[:5]
        return [{"index": int(i), "score": float(logits[i])} for i in best]

    @app.post("/v2/models/{name}/classify")
    async def classify(name: str, request: Request) -> JSONResponse:
        return JSONResponse({"model_name": name, "results": [{"predictions": await run_in_threadpool(
            infer, await request.body())}]})

    @app.get("/v2/health/ready")
    async def ready() -> dict[str, bool]:
        return {"ready": True}

    return app


def main() -> None:
    import uvicorn

    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("model", type=Path)
    parser.add_argument("--port", type=int, default=8200)
    parser.add_argument("--threads", type=int, default=None, help="intra-op threads (default: all cores)")
    args = parser.parse_args()
    uvicorn.run(create_app(args.model, args.threads), host="127.0.0.1", port=args.port, log_level="warning")


if __name__ == "__main__":
    main()

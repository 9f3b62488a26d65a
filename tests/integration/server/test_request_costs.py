"""Every request costs what it is allowed to cost (issue 14): limits before decode, on every
protocol, one pipeline; parsing off the event loop; dead work cancelled; truthful metadata."""

from __future__ import annotations

import gzip
import json
import socket
import struct
import threading
from collections.abc import Iterator
from pathlib import Path

import httpx
import numpy as np
import orjson
import pytest
from PIL import Image

from resserve.config import ServerSettings
from tests.server_harness import RunningServer, encode, jpeg, serve_in_thread, wait_for, write_model

tritonclient_http = pytest.importorskip("tritonclient.http", reason="tritonclient[http] is a test dependency")
from tritonclient.utils import InferenceServerException

TINY_GIF = encode(Image.new("L", (1, 1)), "GIF")


@pytest.fixture(scope="module")
def server(model_onnx: Path, tmp_path_factory: pytest.TempPathFactory) -> Iterator[RunningServer]:
    repo = tmp_path_factory.mktemp("repo")
    write_model(repo, "r18", model_onnx)
    # Every batch sleeps 1.5 s: requests queue up behind it, so the queue can be watched.
    write_model(repo, "slow", model_onnx, max_batch_size=1,
                dynamic_batching={"max_queue_delay_ms": 0, "max_queue_size": 8},
                fault_injection={"hang_every_n_batches": 1, "hang_s": 1.5}, engine_timeout_s=30)
    settings = ServerSettings(model_repo=repo, max_images_per_request=16, max_decompressed_bytes=4 * 1024 * 1024)
    with serve_in_thread(settings) as running:
        yield running


def decoded(server: RunningServer, model: str) -> float:
    return server.metric("resserve_preprocess_decode_seconds_count", {"model": model})


def infer(server: RunningServer, model: str, body: dict | bytes, **headers: str) -> httpx.Response:
    content = body if isinstance(body, bytes) else json.dumps(body).encode()  # json: 400-digit ints too
    return httpx.post(f"{server.url}/v2/models/{model}/infer", content=content, headers=headers, timeout=30)


def bytes_tensor(items: list[bytes]) -> bytes:
    return b"".join(struct.pack("<I", len(item)) + item for item in items)


def test_two_thousand_tiny_gifs_are_one_413_before_any_decode(server: RunningServer) -> None:
    """The finding: 2,000 x 43-byte GIF in one BYTES request grew RSS by 1.1 GB, then got a 503
    (which clients retry for ever). Now: 413 naming the limit, nothing decoded."""
    before = decoded(server, "r18")
    client = tritonclient_http.InferenceServerClient(server.url.removeprefix("http://"))
    image = tritonclient_http.InferInput("image", [2000], "BYTES")
    image.set_data_from_numpy(np.array([TINY_GIF] * 2000, dtype=np.object_), binary_data=True)
    with pytest.raises(InferenceServerException) as info:
        client.infer("r18", [image])
    assert info.value.status() == "413"
    assert "declares 2000 images; at most 16 per request" in info.value.message()
    client.close()
    # JSON (base64) framing is refused the same way, on the declared shape.
    body = {"inputs": [{"name": "image", "shape": [2000], "datatype": "BYTES", "data": ["R0lG"] * 2000}]}
    r = infer(server, "r18", body)
    assert r.status_code == 413 and "max_images_per_request" in r.json()["error"]
    assert decoded(server, "r18") == before


def test_image_limit_on_every_protocol(server: RunningServer) -> None:
    before = decoded(server, "r18")
    files = [("file", (f"{i}.gif", TINY_GIF, "image/gif")) for i in range(17)]
    r = httpx.post(f"{server.url}/v2/models/r18/classify", files=files, timeout=30)
    assert r.status_code == 413 and "more than 16 images" in r.json()["error"]
    rows = np.zeros((17, 3, 224, 224), np.float32)
    header = orjson.dumps({"inputs": [{"name": "input", "shape": list(rows.shape), "datatype": "FP32",
                                       "parameters": {"binary_data_size": rows.nbytes}}]})
    r = infer(server, "r18", header + rows.tobytes(), **{"Inference-Header-Content-Length": str(len(header))})
    assert r.status_code == 413 and "declares 17 images; at most 16" in r.json()["error"]
    assert decoded(server, "r18") == before
    # At the limit both work, and their images are counted alike.
    ok = server.metric("resserve_http_images_total", {"model": "r18", "status": "ok"})
    small = encode(Image.new("RGB", (40, 30), "red"), "PNG")
    r = httpx.post(f"{server.url}/v2/models/r18/classify", timeout=60,
                   files=[("file", (f"{i}.png", small, "image/png")) for i in range(16)])
    assert r.status_code == 200 and len(r.json()["results"]) == 16
    assert server.metric("resserve_http_images_total", {"model": "r18", "status": "ok"}) == ok + 16


def test_compressed_bodies(server: RunningServer) -> None:
    # A gzip body that inflates past max_decompressed_bytes (4 MiB here): 413, cheaply.
    bomb = gzip.compress(b"\x00" * (8 * 1024 * 1024))
    assert len(bomb) < 20_000
    r = infer(server, "r18", bomb, **{"Content-Encoding": "gzip", "Inference-Header-Content-Length": "10"})
    assert r.status_code == 413 and "max_decompressed_bytes" in r.json()["error"]
    # ~3.9 MiB of empty BYTES elements behind a shape of [1]: framing stops after one element.
    header = orjson.dumps({"inputs": [{"name": "image", "shape": [1], "datatype": "BYTES",
                                       "parameters": {"binary_data_size": 4_000_000}}]})
    body = gzip.compress(header + b"\x00" * 4_000_000)
    r = infer(server, "r18", body, **{"Content-Encoding": "gzip", "Inference-Header-Content-Length": str(len(header))})
    assert r.status_code == 400 and "left over after the 1 elements" in r.json()["error"]
    # classify takes Content-Encoding too (it was OIP only): same pipeline, same answer.
    image = jpeg(seed=3)
    plain = httpx.post(f"{server.url}/v2/models/r18/classify", content=image,
                       headers={"content-type": "image/jpeg"}, timeout=30)
    packed = httpx.post(f"{server.url}/v2/models/r18/classify", content=gzip.compress(image),
                        headers={"content-type": "image/jpeg", "content-encoding": "gzip"}, timeout=30)
    assert plain.status_code == packed.status_code == 200 and plain.json() == packed.json()
    form = httpx.Request("POST", "http://x", files=[("file", ("a.jpg", image, "image/jpeg"))])
    multipart = httpx.post(f"{server.url}/v2/models/r18/classify", content=gzip.compress(form.read()), timeout=30,
                           headers={"content-type": form.headers["content-type"], "content-encoding": "gzip"})
    assert multipart.status_code == 200 and multipart.json() == plain.json()
    bad = httpx.post(f"{server.url}/v2/models/r18/classify", content=b"\x1f\x8bnot gzip", timeout=30,
                     headers={"content-type": "image/jpeg", "content-encoding": "gzip"})
    assert bad.status_code == 400 and "cannot decompress" in bad.json()["error"]


@pytest.mark.parametrize(("inputs", "parameters", "match"), [
    ([{"name": "image", "shape": [1], "datatype": "BYTES", "data": ["aGk="]}], {"timeout": 10**400},
     "parameters.timeout must be a positive number"),
    ([{"name": "image", "shape": [1], "datatype": "BYTES", "data": ["aGk="]}], {"timeout": -5},
     "parameters.timeout must be a positive number"),
    ([{"name": "image", "shape": [0], "datatype": "BYTES", "data": []}], {}, "holds no images"),
    ([{"name": "input", "shape": [0, 3, 224, 224], "datatype": "FP32", "data": []}], {}, "unexpected shape"),
    ([{"name": "input", "shape": [10**30, 3, 224, 224], "datatype": "FP32", "data": []}], {}, "above 2147483647"),
    ([{"name": "input", "shape": [2**20, 2**20, 2**20], "datatype": "FP32", "data": []}], {}, "more than the limit"),
    ([{"name": "input", "shape": [1, 2], "datatype": "FP32", "data": [0.0] * 2},
      {"name": "image", "shape": [1], "datatype": "BYTES", "data": ["aGk="]}], {}, "send either the tensor"),
])
def test_hostile_numbers_and_shapes_are_4xx(server: RunningServer, inputs: list, parameters: dict,
                                            match: str) -> None:
    r = infer(server, "r18", {"inputs": inputs, "parameters": parameters})
    assert r.status_code == 400 and match in r.json()["error"], r.text


def test_infinite_json_timeout_and_query_timeout(server: RunningServer) -> None:
    body = b'{"inputs":[{"name":"image","shape":[1],"datatype":"BYTES","data":["aGk="]}],"parameters":{"timeout":1e400}}'
    r = infer(server, "r18", body)
    assert r.status_code == 400 and "parameters.timeout" in r.json()["error"]
    r = httpx.post(f"{server.url}/v2/models/r18/classify?timeout_ms=1e400", content=jpeg(),
                   headers={"content-type": "image/jpeg"}, timeout=30)
    assert r.status_code == 400


def test_metadata_lists_only_inputs_a_client_can_send_together(server: RunningServer) -> None:
    """perf_analyzer-style: send every input the metadata lists, with data of the listed shape."""
    client = tritonclient_http.InferenceServerClient(server.url.removeprefix("http://"))
    meta = client.get_model_metadata("r18")
    inputs = []
    for spec in meta["inputs"]:
        shape = [1 if d < 0 else d for d in spec["shape"]]
        tensor = tritonclient_http.InferInput(spec["name"], shape, spec["datatype"])
        tensor.set_data_from_numpy(np.random.default_rng(0).standard_normal(shape).astype(np.float32))
        inputs.append(tensor)
    assert client.infer("r18", inputs).as_numpy(meta["outputs"][0]["name"]).shape == (1, 1000)
    assert [i["name"] for i in meta["resserve"]["alternative_inputs"]] == ["image"]
    client.close()


def _queue_depth(server: RunningServer) -> float:
    return server.metric("resserve_batcher_queue_depth", {"model": "slow", "version": "1"})


def test_a_disconnected_client_is_cancelled_and_its_entry_skipped(server: RunningServer) -> None:
    """uvicorn does not cancel handlers; the pipeline watches http.disconnect itself."""
    batches = {"model": "slow", "version": "1"}
    before_batches = server.metric("resserve_batcher_batch_size_count", batches)
    before_499 = server.metric("resserve_http_requests_total", {"model": "slow", "endpoint": "classify",
                                                                 "status": "499"})
    dequeued = server.metric("resserve_batcher_queue_wait_seconds_count", batches)
    first: list[int] = []
    worker = threading.Thread(target=lambda: first.append(httpx.post(
        f"{server.url}/v2/models/slow/classify", content=jpeg(), headers={"content-type": "image/jpeg"},
        timeout=30).status_code))
    worker.start()
    # Taken off the queue into a batch: the first request is in the engine now, sleeping.
    assert wait_for(lambda: server.metric("resserve_batcher_queue_wait_seconds_count", batches) > dequeued)
    body = jpeg(seed=5)
    host, port = server.url.removeprefix("http://").split(":")
    sock = socket.create_connection((host, int(port)), timeout=5)
    sock.sendall(b"POST /v2/models/slow/classify HTTP/1.1\r\nHost: x\r\nContent-Type: image/jpeg\r\n"
                 + f"Content-Length: {len(body)}\r\n\r\n".encode() + body)
    assert wait_for(lambda: _queue_depth(server) == 1), "the second request never queued"
    sock.close()
    assert wait_for(lambda: _queue_depth(server) == 0, timeout_s=1.0), "the dead entry stayed in the queue"
    assert wait_for(lambda: server.metric("resserve_http_requests_total", {
        "model": "slow", "endpoint": "classify", "status": "499"}) == before_499 + 1)
    worker.join(30)
    assert first == [200]
    # Nothing in flight and nothing queued: no batch can still be on its way.
    assert wait_for(lambda: server.metric("resserve_http_in_flight_requests") == 0 and _queue_depth(server) == 0)
    # Only the first request's batch ran: the engine never saw the abandoned one.
    assert server.metric("resserve_batcher_batch_size_count", batches) == before_batches + 1


def test_deadline_counts_from_arrival(server: RunningServer) -> None:
    """A request whose deadline passes while an engine batch runs is a 504, and leaves the queue."""
    dequeued = server.metric("resserve_batcher_queue_wait_seconds_count", {"model": "slow", "version": "1"})
    worker = threading.Thread(target=lambda: httpx.post(
        f"{server.url}/v2/models/slow/classify", content=jpeg(), headers={"content-type": "image/jpeg"}, timeout=30))
    worker.start()
    # The first request's batch is running (1.5 s) before the second arrives.
    assert wait_for(lambda: server.metric("resserve_batcher_queue_wait_seconds_count",
                                       {"model": "slow", "version": "1"}) > dequeued)
    r = httpx.post(f"{server.url}/v2/models/slow/classify?timeout_ms=300", content=jpeg(seed=2),
                   headers={"content-type": "image/jpeg"}, timeout=30)
    assert r.status_code == 504
    assert _queue_depth(server) == 0
    worker.join(30)


def test_a_tensor_without_room_is_refused_before_its_numbers_are_converted(
        server: RunningServer, monkeypatch: pytest.MonkeyPatch) -> None:
    """The model's places are taken for what a request's header declares, before any element is
    converted (issue 30: a JSON tensor was parsed, every number turned into an array, and only
    then refused 503 for want of room)."""
    from resserve.server.oip import wire

    converted: list[str] = []
    convert = wire._decode_json
    monkeypatch.setattr(wire, "_decode_json", lambda spec: converted.append(spec.name) or convert(spec))
    dequeued = server.metric("resserve_batcher_queue_wait_seconds_count", {"model": "slow", "version": "1"})
    send = lambda seed: httpx.post(f"{server.url}/v2/models/slow/classify", content=jpeg(seed=seed),  # noqa: E731
                                   headers={"content-type": "image/jpeg"}, timeout=30)
    workers = [threading.Thread(target=send, args=(seed,)) for seed in (1, 2)]
    workers[0].start()  # in the engine for 1.5 s ...
    assert wait_for(lambda: server.metric("resserve_batcher_queue_wait_seconds_count",
                                       {"model": "slow", "version": "1"}) > dequeued)
    workers[1].start()  # ... and one queued behind it: 2 of the model's 9 places (8 queued + 1 batch)
    assert wait_for(lambda: _queue_depth(server) == 1)
    rows = {"inputs": [{"name": "input", "shape": [8, 3, 224, 224], "datatype": "FP32",
                        "data": [0] * (8 * 3 * 224 * 224)}]}
    r = infer(server, "slow", orjson.dumps(rows))
    assert r.status_code == 503 and "queue full" in r.json()["error"] and r.headers["retry-after"]
    assert converted == []  # refused on the declared shape: no number was converted
    for worker in workers:
        worker.join(30)
    one = {"inputs": [{"name": "input", "shape": [1, 3, 224, 224], "datatype": "FP32", "data": [0] * (3 * 224 * 224)}]}
    assert infer(server, "r18", orjson.dumps(one)).status_code == 200
    assert converted == ["input"]  # with room, the same path converts and serves


def test_server_stays_live_during_a_large_parse(server: RunningServer) -> None:
    """A 4 MiB JSON body of numbers parses in a worker thread; liveness answers meanwhile."""
    data = np.zeros(3 * 224 * 224 * 4).tolist()
    body = orjson.dumps({"inputs": [{"name": "input", "shape": [4, 3, 224, 224], "datatype": "FP32", "data": data}]})
    results: list[int] = []
    sender = threading.Thread(target=lambda: results.append(infer(server, "r18", body).status_code))
    sender.start()
    live = [httpx.get(f"{server.url}/v2/health/live", timeout=5).status_code for _ in range(5)]
    sender.join(60)
    assert live == [200] * 5 and results == [200]


@pytest.fixture(scope="module")
def strict_server(model_onnx: Path, tmp_path_factory: pytest.TempPathFactory) -> Iterator[RunningServer]:
    repo = tmp_path_factory.mktemp("repo")
    write_model(repo, "tiny", model_onnx, max_batch_size=1, dynamic_batching={"max_queue_size": 1})
    with serve_in_thread(ServerSettings(model_repo=repo, body_timeout_s=1.5)) as running:
        yield running


def _slow_upload(url: str, path: str, total: int) -> socket.socket:
    host, port = url.removeprefix("http://").split(":")
    sock = socket.create_connection((host, int(port)), timeout=10)
    sock.sendall(f"POST {path} HTTP/1.1\r\nHost: x\r\nContent-Type: image/jpeg\r\n"
                 f"Content-Length: {total}\r\n\r\n".encode() + b"\xff\xd8")
    return sock


def test_slow_uploads_hold_no_places_and_end_in_408(strict_server: RunningServer) -> None:
    """Uploads that trickle in do not fill a model's admission (capacity 2 here): a normal request
    still gets in, and the slow ones are answered 408 after body_timeout_s."""
    url = strict_server.url
    before = strict_server.metric("resserve_http_in_flight_requests")
    slow = [_slow_upload(url, "/v2/models/tiny/classify", 100_000) for _ in range(4)]
    # All four are being read (headers parsed, bodies trickling) before the normal request comes.
    assert wait_for(lambda: strict_server.metric("resserve_http_in_flight_requests") >= before + 4)
    r = httpx.post(f"{url}/v2/models/tiny/classify", content=jpeg(), headers={"content-type": "image/jpeg"},
                   timeout=30)
    assert r.status_code == 200, r.text
    for sock in slow:
        answer = sock.recv(4096)
        assert answer.startswith(b"HTTP/1.1 408"), answer[:100]
        assert b"body_timeout_s" in answer
        sock.close()


def test_a_client_gone_mid_upload_is_499_not_500(strict_server: RunningServer, caplog: pytest.LogCaptureFixture) -> None:
    labels = {"model": "tiny", "endpoint": "infer", "status": "499"}
    before = strict_server.metric("resserve_http_requests_total", labels)
    in_flight = strict_server.metric("resserve_http_in_flight_requests")
    sock = _slow_upload(strict_server.url, "/v2/models/tiny/infer", 50_000)
    assert wait_for(lambda: strict_server.metric("resserve_http_in_flight_requests") > in_flight)  # being read
    sock.close()
    assert wait_for(lambda: strict_server.metric("resserve_http_requests_total", labels) == before + 1)
    assert strict_server.metric("resserve_http_requests_total",
                                {"model": "tiny", "endpoint": "infer", "status": "500"}) == 0
    assert not [r for r in caplog.records if r.levelname == "ERROR"]

"""The load generator over gRPC: Open Inference Protocol v2 ``ModelInfer`` with the image as BYTES.

The same closed and open loops as :class:`~resserve.perf.generator.LoadGenerator` (it is a
subclass: only the send differs), so HTTP and gRPC figures come from one measurement. Each
payload's request message is built once, the encoded image in ``raw_input_contents`` (one BYTES
element: a 4-byte little-endian length, then the bytes), and the top classes asked for through
the classification extension, as a Triton client would; one ``grpc.aio`` channel carries every
call (HTTP/2 multiplexes them).

Statuses: an answered call is ``"200"``, as over HTTP, so reports count successes alike; any other
outcome keeps its gRPC code's name (``RESOURCE_EXHAUSTED``, ``DEADLINE_EXCEEDED``, ...).
"""

from __future__ import annotations

import struct
import time
from collections.abc import Sequence

import grpc
from tritonclient.grpc import service_pb2, service_pb2_grpc

from resserve.perf.generator import CONNECTION_ERROR, TIMEOUT, LoadGenerator, Sample
from resserve.perf.images import Payload

OK = "200"


def infer_request(model: str, payload: Payload, input_name: str, output_name: str,
                  class_count: int) -> service_pb2.ModelInferRequest:
    """One image as an OIP v2 ``ModelInferRequest``: a BYTES input of shape [1], top classes out."""
    request = service_pb2.ModelInferRequest(model_name=model)
    request.inputs.add(name=input_name, datatype="BYTES", shape=[1])
    request.raw_input_contents.append(struct.pack("<I", len(payload.body)) + payload.body)
    output = request.outputs.add(name=output_name)
    if class_count > 0:
        output.parameters["classification"].int64_param = class_count
    return request


class GrpcLoadGenerator(LoadGenerator):
    """Sends payloads to ``model`` on a gRPC OIP v2 server; ``http_url`` still serves /metrics scrapes.

    Example::

        async with GrpcLoadGenerator("127.0.0.1:8001", "resnet50", payloads, "http://127.0.0.1:8000") as gen:
            await gen.send(payloads[0])
    """

    def __init__(self, target: str, model: str, payloads: Sequence[Payload], http_url: str, *,
                 input_name: str = "image", output_name: str | None = None, class_count: int = 5,
                 timeout_s: float = 60.0, max_outstanding: int = 1024, max_message_bytes: int = 64 << 20) -> None:
        super().__init__(http_url, payloads, timeout_s=timeout_s, max_outstanding=max_outstanding)
        self.target = target
        self.model = model
        self.input_name = input_name
        self.output_name = output_name
        self.class_count = class_count
        self.max_message_bytes = max_message_bytes
        self._channel: grpc.aio.Channel | None = None
        self._stub: service_pb2_grpc.GRPCInferenceServiceStub | None = None
        self._requests: dict[int, service_pb2.ModelInferRequest] = {}

    async def __aenter__(self) -> GrpcLoadGenerator:
        await super().__aenter__()
        options = [("grpc.max_send_message_length", self.max_message_bytes),
                   ("grpc.max_receive_message_length", self.max_message_bytes)]
        self._channel = grpc.aio.insecure_channel(self.target, options=options)
        self._stub = service_pb2_grpc.GRPCInferenceServiceStub(self._channel)
        if self.output_name is None:  # the model's first output, as its metadata says
            metadata = await self._stub.ModelMetadata(service_pb2.ModelMetadataRequest(name=self.model),
                                                      timeout=self.timeout_s)
            self.output_name = metadata.outputs[0].name
        self._requests = {id(p): infer_request(self.model, p, self.input_name, self.output_name, self.class_count)
                          for p in self.payloads}
        return self

    async def __aexit__(self, *exc: object) -> None:
        if self._channel is not None:
            await self._channel.close()
            self._channel = None
        await super().__aexit__(*exc)

    async def send(self, payload: Payload, scheduled: float | None = None) -> Sample:
        """One ``ModelInfer`` call; every outcome, no answer included, becomes a sample."""
        if self._stub is None:
            raise RuntimeError("use GrpcLoadGenerator inside `async with`")
        request = self._requests.get(id(payload)) or infer_request(
            self.model, payload, self.input_name, self.output_name or "", self.class_count)
        sent = time.perf_counter()
        scheduled = sent if scheduled is None else scheduled
        try:
            await self._stub.ModelInfer(request, timeout=self.timeout_s)
            status = OK
        except grpc.aio.AioRpcError as exc:
            status = _status(exc, time.perf_counter() - sent >= self.timeout_s)
        sample = Sample(scheduled, sent, time.perf_counter(), status)
        self.samples.append(sample)
        return sample


def _status(exc: grpc.aio.AioRpcError, past_timeout: bool) -> str:
    """The sample's status: the generator's own timeout and a refused connection are named as over
    HTTP; a server's answer keeps its code's name (its 504 is DEADLINE_EXCEEDED before the timeout)."""
    code = exc.code()
    if code == grpc.StatusCode.DEADLINE_EXCEEDED and past_timeout:
        return TIMEOUT
    if code == grpc.StatusCode.UNAVAILABLE and "connect" in (exc.details() or "").lower():
        return CONNECTION_ERROR
    return str(code.name)

"""``inference.GRPCInferenceService`` (KServe's ``grpc_predict_v2.proto`` plus Triton's repository
extension), with the stubs ``tritonclient[grpc]`` ships: the same service, package and messages.

Every RPC goes through :func:`_rpc`: the request id (``x-request-id`` metadata, echoed in the
initial metadata, on every log record), API keys from the call's metadata (as HTTP reads headers),
errors mapped once (:mod:`.grpc_status`), and a counter and a duration per method, model and code.
"""

from __future__ import annotations

import asyncio
import functools
import time
from collections.abc import Awaitable, Callable
from typing import Any, TypeVar

import grpc
from google.protobuf import json_format
from opentelemetry.trace import Span, Status, StatusCode
from tritonclient.grpc import service_pb2, service_pb2_grpc

from resserve import __version__
from resserve.errors import DeadlineExceededError, ResserveError
from resserve.logs import request_id
from resserve.server.oip import wire as oip
from resserve.server.oip.grpc_access import endpoint_of
from resserve.server.model_operations import load_model, model_statistics, repository_index, unload_model
from resserve.server.oip.grpc_codec import decode_request, encode_response
from resserve.server.oip.model_config import triton_config_message
from resserve.server.oip.grpc_status import grpc_status
from resserve.server.oip.infer import (
    EXTENSIONS,
    PLATFORM,
    output_meta,
    output_tensors,
    requested_outputs,
    run_request,
    tensor_input,
)
from resserve.server.middleware.request_id import HEADER, request_id_from
from resserve.server.app_state import AppState
from resserve.serving.manager import ServedModel

Reply = TypeVar("Reply")
Handler = Callable[[Any, Any, grpc.aio.ServicerContext], Awaitable[Reply]]
SERVICE = "inference.GRPCInferenceService"
# Codes that are the server's fault (OpenTelemetry's rule for SERVER spans); a client's bad input is not an error.
SERVER_FAULTS = frozenset({grpc.StatusCode.UNKNOWN, grpc.StatusCode.DEADLINE_EXCEEDED, grpc.StatusCode.UNIMPLEMENTED,
                           grpc.StatusCode.INTERNAL, grpc.StatusCode.UNAVAILABLE, grpc.StatusCode.DATA_LOSS})


def _rpc(method: Handler[Reply]) -> Handler[Reply]:
    """Authenticate, run, map any error to its status, and count the call."""
    name = method.__name__

    @functools.wraps(method)
    async def handler(self: InferenceServicer, request: Any, context: grpc.aio.ServicerContext) -> Reply:
        started = time.perf_counter()
        model = getattr(request, "model_name", "") or getattr(request, "name", "")
        code, counted = "OK", False
        metadata = _metadata(context)
        rid = request_id_from(metadata)
        token = request_id.set(rid)
        attributes: dict[str, Any] = {"rpc.system": "grpc", "rpc.service": SERVICE, "rpc.method": name,
                                      "request_id": rid}
        if model:
            attributes["model"] = model
        try:
            await context.send_initial_metadata(((HEADER.decode(), rid),))
            try:
                # Before any span: an unauthenticated call neither joins the trace its traceparent
                # names nor forces one to be exported.
                self.authenticate(name, context)
            except Exception as exc:
                status, message, trailers = grpc_status(exc)
                code = status.name
            else:
                # The abort below raises; it comes after the span ends, so a refusal is not recorded
                # as the server's exception.
                with self.state.pipeline.tracing.server_span(f"{SERVICE}/{name}", metadata, attributes) as span:
                    try:
                        reply = await method(self, request, context)
                        _end_span(span, grpc.StatusCode.OK)
                        return reply
                    except asyncio.CancelledError:
                        code = "CANCELLED"
                        raise
                    except Exception as exc:
                        status, message, trailers = grpc_status(exc)
                        code = status.name
                        _end_span(span, status, message)
            # Counted before abort, which sends the status at once: a client that has it sees it counted.
            self.count(name, model, code, started)
            counted = True
            if trailers:
                context.set_trailing_metadata(trailers)
            await context.abort(status, message)
            raise AssertionError("unreachable")  # abort raises; type checkers cannot know it
        finally:
            request_id.reset(token)
            if not counted:
                self.count(name, model, code, started)

    return handler


def _end_span(span: Span | None, status: grpc.StatusCode, message: str = "") -> None:
    """The call's status on its span; only the server's own faults mark it an error."""
    if span is None:
        return
    span.set_attribute("rpc.grpc.status_code", status.value[0])
    if status in SERVER_FAULTS:
        span.set_status(Status(StatusCode.ERROR, message))


def _metadata(context: grpc.aio.ServicerContext) -> list[tuple[bytes, bytes]]:
    return [(key.lower().encode(), value.encode() if isinstance(value, str) else value)
            for key, value in context.invocation_metadata() or ()]


class InferenceServicer(service_pb2_grpc.GRPCInferenceServiceServicer):  # type: ignore[misc]
    """The RPCs resserve serves; the rest (shared memory, tracing, logs) answer UNIMPLEMENTED."""

    def __init__(self, state: AppState) -> None:
        self.state = state

    def count(self, method: str, model: str, code: str, started: float) -> None:
        """One call in ``resserve_grpc_requests_total`` and its duration."""
        known = model if self.state.repository.has(model) else ""  # no label per made-up name
        self.state.metrics.grpc_requests.labels(method, known, code).inc()
        self.state.metrics.grpc_duration.labels(method, known, code).observe(time.perf_counter() - started)

    def authenticate(self, method: str, context: grpc.aio.ServicerContext) -> None:
        """The access policy again, inside the method (the interceptor asked it first, before the
        message was read): a servicer mounted without the interceptor is never open."""
        self.state.access.check(endpoint_of(f"/{SERVICE}/{method}"), _metadata(context), carrier="metadata")

    @_rpc
    async def ServerLive(self, request: Any, context: grpc.aio.ServicerContext) -> Any:
        return service_pb2.ServerLiveResponse(live=True)

    @_rpc
    async def ServerReady(self, request: Any, context: grpc.aio.ServicerContext) -> Any:
        return service_pb2.ServerReadyResponse(ready=self.state.ready)

    @_rpc
    async def ModelReady(self, request: Any, context: grpc.aio.ServicerContext) -> Any:
        try:
            self.state.manager.get(request.name, request.version or None)
        except ResserveError:  # unknown, still loading or broken: not ready, as Triton answers
            return service_pb2.ModelReadyResponse(ready=False)
        return service_pb2.ModelReadyResponse(ready=True)

    @_rpc
    async def ServerMetadata(self, request: Any, context: grpc.aio.ServicerContext) -> Any:
        return service_pb2.ServerMetadataResponse(name="resserve", version=__version__, extensions=EXTENSIONS)

    @_rpc
    async def ModelMetadata(self, request: Any, context: grpc.aio.ServicerContext) -> Any:
        served = self.state.manager.get(request.name, request.version or None)

        def meta(m: oip.TensorMeta) -> Any:
            return service_pb2.ModelMetadataResponse.TensorMetadata(name=m.name, datatype=m.datatype,
                                                                    shape=[int(d) for d in m.shape])

        versions = [served.version] if request.version else self.state.manager.serving_versions(request.name)
        return service_pb2.ModelMetadataResponse(name=served.name, versions=versions, platform=PLATFORM,
                                                 inputs=[meta(tensor_input(served))],
                                                 outputs=[meta(output_meta(served))])

    @_rpc
    async def ModelConfig(self, request: Any, context: grpc.aio.ServicerContext) -> Any:
        """Triton's model configuration (perf_analyzer stops without it): as HTTP's config."""
        served = self.state.manager.get(request.name, request.version or None)
        return service_pb2.ModelConfigResponse(config=triton_config_message(served))

    @_rpc
    async def ModelInfer(self, request: Any, context: grpc.aio.ServicerContext) -> Any:
        pipeline = self.state.pipeline
        remaining = context.time_remaining()
        deadline_ms = None if remaining is None else max(remaining, 0.0) * 1000.0

        def found(_served: ServedModel) -> None:  # an unknown model is NOT_FOUND even past the deadline
            if deadline_ms is not None and deadline_ms <= 0:
                raise DeadlineExceededError("the call's deadline had passed when it arrived")

        with pipeline.request(request.model_name, request.model_version or None, "grpc", found=found) as ticket:
            served = ticket.served
            # The model's places for what the inputs declare, before any is decoded; then framing
            # BYTES and converting typed contents, CPU work, off the event loop on the parse slots.
            pipeline.reserve(ticket, sum(oip.declared_images(tensor.datatype, tensor.shape)
                                         for tensor in request.inputs[:oip.DEFAULT_MAX_INPUTS + 1]))
            parsed = await pipeline.parse(decode_request, request, max_images=pipeline.max_images(served))
            requested = requested_outputs(served, parsed)
            outputs = await run_request(pipeline, ticket, parsed, deadline_ms)
        results = output_tensors(served, requested, outputs)
        return encode_response(served.name, served.version, parsed.id, results)

    @_rpc
    async def ModelStatistics(self, request: Any, context: grpc.aio.ServicerContext) -> Any:
        document = model_statistics(self.state, request.name or None, request.version or None)
        return json_format.ParseDict(document, service_pb2.ModelStatisticsResponse())

    @_rpc
    async def RepositoryIndex(self, request: Any, context: grpc.aio.ServicerContext) -> Any:
        entries = await repository_index(self.state)
        if request.ready:
            entries = [e for e in entries if e.get("state") == "READY"]
        index = service_pb2.RepositoryIndexResponse.ModelIndex
        return service_pb2.RepositoryIndexResponse(models=[
            index(name=e["name"], version=e.get("version", ""), state=e.get("state", ""), reason=e.get("reason", ""))
            for e in entries])

    @_rpc
    async def RepositoryModelLoad(self, request: Any, context: grpc.aio.ServicerContext) -> Any:
        await load_model(self.state, request.model_name)
        return service_pb2.RepositoryModelLoadResponse()

    @_rpc
    async def RepositoryModelUnload(self, request: Any, context: grpc.aio.ServicerContext) -> Any:
        await unload_model(self.state, request.model_name)
        return service_pb2.RepositoryModelUnloadResponse()


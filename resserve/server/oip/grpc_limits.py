"""What a gRPC call may hold, checked in a server interceptor before its message is read.

grpc.aio's ``maximum_concurrent_rpcs`` counts health checks with everything else, and a call that
opened its stream but never sent its message was held for ever: 512 such streams on one
connection made every new call wait, the kubelet's health check included (issue 30). Here:

- **calls in flight**: at most ``max_connections`` calls other than the health checks
  (``grpc.health.v1.Health/Check``, ``ServerLive``, ``ServerReady``), which are never counted and
  never refused; beyond it RESOURCE_EXHAUSTED with ``retry-after``, before the message is read;
- **the message must arrive**: within ``body_timeout_s`` of the call's start (HTTP's limit for a
  body), else DEADLINE_EXCEEDED; the call's place is given back either way;
- **the body budget** (:mod:`resserve.server.body_budget`): before its message is read a call
  waits (within that deadline) until the budget has room for ``max_body_bytes``, then keeps what
  its message needs.

Per-connection limits (streams per connection, keepalive, idle, age) are the server's channel
options (:func:`server_options`).
"""

from __future__ import annotations

import asyncio
from collections.abc import AsyncIterator, Awaitable, Callable
from typing import Any

import grpc

from resserve.config import ServerSettings
from resserve.metrics import Metrics
from resserve.server.body_budget import GRPC_COPIES, BodyBudget, BodyBudgetFullError, Reservation

HEALTH_CHECK = "/grpc.health.v1.Health/Check"
UNCOUNTED = frozenset({HEALTH_CHECK, "/inference.GRPCInferenceService/ServerLive",
                       "/inference.GRPCInferenceService/ServerReady"})


def server_options(settings: ServerSettings, reuse_port: bool) -> list[tuple[str, int]]:
    """grpc core's channel arguments: message sizes, streams per connection, keepalive, idle, age."""
    return [
        ("grpc.max_receive_message_length", settings.max_body_bytes),
        ("grpc.max_send_message_length", settings.max_body_bytes),
        ("grpc.max_concurrent_streams", settings.grpc_max_streams_per_connection),
        ("grpc.max_connection_idle_ms", int(settings.grpc_max_connection_idle_s * 1000)),
        ("grpc.max_connection_age_ms", int(settings.grpc_max_connection_age_s * 1000)),
        ("grpc.max_connection_age_grace_ms", int(settings.graceful_shutdown_s * 1000)),
        # Ping a silent client every 2 min; a dead one is gone 20 s later.
        ("grpc.keepalive_time_ms", 120_000),
        ("grpc.keepalive_timeout_ms", 20_000),
        # A client pinging more often than every 10 s without calls is told GOAWAY on its 3rd strike.
        ("grpc.http2.min_ping_interval_without_data_ms", 10_000),
        ("grpc.http2.max_ping_strikes", 2),
        # Off: a second server on a taken port fails rather than sharing it unseen; on only
        # between workers, which share it on purpose (the kernel spreads connections).
        ("grpc.so_reuseport", int(reuse_port)),
    ]


class CallLimitInterceptor(grpc.aio.ServerInterceptor):  # type: ignore[misc]
    """Count calls in flight and bound the wait for each call's message (see the module)."""

    def __init__(self, max_calls: int, message_timeout_s: float, metrics: Metrics,
                 budget: BodyBudget | None = None, max_message_bytes: int = 0) -> None:
        self.max_calls = max_calls
        self.message_timeout_s = message_timeout_s
        self.metrics = metrics
        self.budget = budget
        self.max_message_bytes = max_message_bytes
        self.in_flight = 0

    async def intercept_service(self, continuation: Callable[[Any], Awaitable[Any]],
                                handler_call_details: grpc.HandlerCallDetails) -> Any:
        full_method = handler_call_details.method
        if full_method in UNCOUNTED:
            return await continuation(handler_call_details)
        if self.in_flight >= self.max_calls:
            return self._busy(full_method)
        handler = await continuation(handler_call_details)
        if handler is None:  # unknown method: grpc answers UNIMPLEMENTED
            return None
        self.in_flight += 1  # given back when the handler ends, or if it never runs (below)
        try:
            return self._bounded(handler)
        except BaseException:
            self.in_flight -= 1
            raise

    def _busy(self, full_method: str) -> grpc.RpcMethodHandler:
        method = full_method.rpartition("/")[2]
        self.metrics.grpc_requests.labels(method, "", grpc.StatusCode.RESOURCE_EXHAUSTED.name).inc()
        message = f"server busy: {self.max_calls} calls in flight (max_connections); retry"

        async def refuse(_requests: Any, context: grpc.aio.ServicerContext) -> None:
            context.set_trailing_metadata((("retry-after", "1"),))
            await context.abort(grpc.StatusCode.RESOURCE_EXHAUSTED, message)

        return grpc.stream_unary_rpc_method_handler(refuse)

    def _bounded(self, handler: grpc.RpcMethodHandler) -> grpc.RpcMethodHandler:
        """The handler, as a stream handler that waits for the first message at most
        ``message_timeout_s``, within the body budget; client-streaming methods are counted only."""
        if handler.unary_unary is None and handler.unary_stream is None:
            self._release()  # none of ours; not held here
            return handler
        sizes: list[int] = []
        deserialize = handler.request_deserializer

        def measured(raw: bytes) -> Any:
            sizes.append(len(raw))
            return deserialize(raw) if deserialize is not None else raw

        if handler.unary_unary is not None:
            behaviour = handler.unary_unary

            async def unary(requests: AsyncIterator[Any], context: grpc.aio.ServicerContext) -> Any:
                reservation = None
                try:
                    request, reservation = await self._first(requests, context, sizes)
                    return await behaviour(request, context)
                finally:
                    self._done(reservation)

            return grpc.stream_unary_rpc_method_handler(
                unary, request_deserializer=measured, response_serializer=handler.response_serializer)
        streaming = handler.unary_stream

        async def unary_stream(requests: AsyncIterator[Any], context: grpc.aio.ServicerContext) -> Any:
            reservation = None
            try:
                request, reservation = await self._first(requests, context, sizes)
                async for response in streaming(request, context):
                    yield response
            finally:
                self._done(reservation)

        return grpc.stream_stream_rpc_method_handler(
            unary_stream, request_deserializer=measured, response_serializer=handler.response_serializer)

    def _release(self) -> None:
        self.in_flight -= 1

    def _done(self, reservation: Reservation | None) -> None:
        self.in_flight -= 1
        if reservation is not None:
            reservation.release()

    async def _first(self, requests: AsyncIterator[Any], context: grpc.aio.ServicerContext,
                     sizes: list[int]) -> tuple[Any, Reservation | None]:
        """The call's message and its share of the budget (the message's size times its copies)."""
        timeout_s = self.message_timeout_s
        reservation = None
        try:
            async with asyncio.timeout(timeout_s):  # no task of its own, unlike wait_for
                if self.budget is not None:
                    reservation = await self.budget.wait_take(self.max_message_bytes)
                request = await anext(aiter(requests))
        except TimeoutError:
            if reservation is not None:
                reservation.release()
            await context.abort(grpc.StatusCode.DEADLINE_EXCEEDED,
                                f"request message not received within {timeout_s:g} s (body_timeout_s)")
        except StopAsyncIteration:
            if reservation is not None:
                reservation.release()
            await context.abort(grpc.StatusCode.INVALID_ARGUMENT, "the call ended without a request message")
        if reservation is not None:
            try:
                reservation.resize(sizes[-1] * GRPC_COPIES if sizes else 0)
            except BodyBudgetFullError:
                pass  # the message is here already: keep what was reserved for it
        return request, reservation

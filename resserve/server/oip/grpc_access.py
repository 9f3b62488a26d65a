"""The access policy at gRPC's door: a server interceptor that refuses before the message is read.

A servicer method runs only after grpc.aio has received and deserialized the whole request; a
check there let 48 unauthenticated 19 MiB messages hold 1.4 GB (issue 30). The interceptor sees
the method name and the metadata only, and a refused call gets a handler that never asks for
the message: HTTP/2 flow control then keeps all but one window of it on the client's side.
"""

from __future__ import annotations

from collections.abc import Awaitable, Callable
from typing import Any

import grpc

from resserve.errors import ForbiddenError, UnauthorizedError
from resserve.metrics import Metrics
from resserve.server.access_policy import AccessPolicy, Endpoint

INFERENCE_SERVICE = "inference.GRPCInferenceService"
HEALTH_SERVICE = "grpc.health.v1.Health"
# Open as HTTP's /v2/health/* are (unless auth_health); ModelReady, like HTTP's per-model ready,
# says which models exist, so it needs a key where keys are set.
HEALTH_METHODS = frozenset({"ServerLive", "ServerReady"})
# Load and unload change what is served; RepositoryIndex only reads (inference's rules, as HTTP's index).
REPOSITORY_METHODS = frozenset({"RepositoryModelLoad", "RepositoryModelUnload"})


def endpoint_of(full_method: str) -> Endpoint:
    """The kind of endpoint a ``/package.Service/Method`` is, as the access policy names them."""
    service, _, method = full_method.lstrip("/").rpartition("/")
    if service == INFERENCE_SERVICE and method in HEALTH_METHODS:
        return "health"
    if service == INFERENCE_SERVICE and method in REPOSITORY_METHODS:
        return "control"
    return "inference"


def metadata_headers(metadata: Any) -> list[tuple[bytes, bytes]]:
    """gRPC metadata as HTTP-style header pairs (lower-case names, bytes)."""
    return [(key.lower().encode(), value.encode() if isinstance(value, str) else value)
            for key, value in metadata or ()]


class AccessInterceptor(grpc.aio.ServerInterceptor):  # type: ignore[misc]
    """Ask the access policy with the call's metadata; a refusal never reads the request."""

    def __init__(self, policy: AccessPolicy, metrics: Metrics) -> None:
        self.policy = policy
        self.metrics = metrics

    async def intercept_service(self, continuation: Callable[[Any], Awaitable[Any]],
                                handler_call_details: grpc.HandlerCallDetails) -> Any:
        full_method = handler_call_details.method
        if full_method.lstrip("/").startswith(HEALTH_SERVICE + "/"):
            # The kubelet's gRPC probe sends no metadata: always open, it says SERVING or not.
            return await continuation(handler_call_details)
        try:
            self.policy.check(endpoint_of(full_method), metadata_headers(handler_call_details.invocation_metadata),
                              carrier="metadata")
        except UnauthorizedError as refused:
            return self._refusal(full_method, grpc.StatusCode.UNAUTHENTICATED, str(refused))
        except ForbiddenError as refused:
            return self._refusal(full_method, grpc.StatusCode.PERMISSION_DENIED, str(refused))
        return await continuation(handler_call_details)

    def _refusal(self, full_method: str, code: grpc.StatusCode, message: str) -> grpc.RpcMethodHandler:
        method = full_method.rpartition("/")[2]
        self.metrics.grpc_requests.labels(method, "", code.name).inc()

        async def refuse(_requests: Any, context: grpc.aio.ServicerContext) -> None:
            # The request iterator is never read: the message stays unread, undeserialized.
            await context.abort(code, message)

        # Stream-unary whatever the method is: a stream handler reads messages only when asked.
        return grpc.stream_unary_rpc_method_handler(refuse)

"""What the app holds while it runs, reachable from any request."""

from __future__ import annotations

from collections.abc import Callable
from dataclasses import dataclass

from starlette.requests import Request

from resserve.config import ServerSettings
from resserve.metrics import Metrics
from resserve.remote_repository import RemoteRepository
from resserve.repository import ModelRepository
from resserve.server.access_policy import AccessPolicy
from resserve.server.body_budget import BodyBudget
from resserve.server.request_pipeline import RequestPipeline
from resserve.server.workers import WorkerIdentity, peers_not_ready
from resserve.serving.manager import ModelManager, ServedModel


@dataclass
class AppState:
    """Settings, metrics, models and the preprocessing pool; ``draining`` flips on SIGTERM. Each
    model's lifecycle is the manager's (``manager.lifecycle``)."""

    settings: ServerSettings
    metrics: Metrics
    repository: ModelRepository
    manager: ModelManager
    pipeline: RequestPipeline
    access: AccessPolicy  # who may call what, HTTP and gRPC alike
    body_budget: BodyBudget  # bytes the bodies in flight may hold, HTTP and gRPC alike
    started: bool = False  # every configured model has been built and loaded, or has failed
    draining: bool = False
    worker: WorkerIdentity | None = None  # one of ``resserve serve --workers N``; None: the only process
    remote: RemoteRepository | None = None  # model_repo is a URL: its local mirror is ``repository``

    @property
    def serving_everything(self) -> bool:
        """This process serves every configured model and is not draining (its own readiness)."""
        lifecycle = self.manager.lifecycle
        return self.started and not self.draining and not lifecycle.unserved_failures() and lifecycle.all_serving()

    @property
    def ready(self) -> bool:
        """Every configured model serves (strict, as Triton): a broken model keeps the pod out; with
        workers, in every worker, since a probe reaches only one of them."""
        return self.serving_everything and not self._workers_not_ready()

    def _workers_not_ready(self) -> list[int]:
        if self.worker is None:
            return []
        return [i for i in peers_not_ready(self.worker) if i != self.worker.index]

    def not_ready_reason(self, detailed: bool = True) -> str:
        """Why the server is not ready. ``detailed=False`` for a caller the access policy cannot
        identify: the kind of reason, never a model's name or an error's type."""
        lifecycle = self.manager.lifecycle
        if self.draining:
            return "draining"
        if not self.started:
            pending = "; ".join(f"model {r.name} {r.describe()}" for r in lifecycle.pending())
            return "starting: " + pending if detailed else "models are starting"
        if failed := lifecycle.unserved_failures():
            if not detailed:
                return f"{len(failed)} model(s) failed to load"
            return "; ".join(f"model {name} failed to load: {why}" for name, why in failed.items())
        if stuck := lifecycle.not_answering():
            return "; ".join(stuck) if detailed else f"{len(stuck)} model(s) not answering"
        if peers := self._workers_not_ready():
            assert self.worker is not None
            return f"worker {', '.join(map(str, peers))} of {self.worker.count} not ready"
        return "no model is loaded"


def get_state(request: Request) -> AppState:
    state: AppState = request.app.state.resserve
    return state


def labelled(request: Request) -> Callable[[ServedModel], None]:
    """What an HTTP adapter passes as ``found``: the model and version label its request's metrics."""

    def found(served: ServedModel) -> None:
        request.state.model, request.state.version = served.name, served.version

    return found

"""What the app holds while it runs, reachable from any request."""

from __future__ import annotations

from dataclasses import dataclass, field

from starlette.requests import Request

from resserve.config import ServerSettings
from resserve.metrics import Metrics
from resserve.repository import ModelRepository
from resserve.runtime import ModelManager
from resserve.server.inference import InferenceService


@dataclass
class AppState:
    """Settings, metrics, models and the preprocessing pool; ``draining`` flips on SIGTERM."""

    settings: ServerSettings
    metrics: Metrics
    repository: ModelRepository
    manager: ModelManager
    service: InferenceService
    started: bool = False
    draining: bool = False
    failed: dict[str, str] = field(default_factory=dict)  # model -> why it did not load

    @property
    def ready(self) -> bool:
        """Every configured model serves (strict, as Triton): a broken model keeps the pod out."""
        return self.started and not self.draining and not self.failed and self.manager.all_ready()

    def not_ready_reason(self) -> str:
        if self.draining:
            return "draining"
        if not self.started:
            return "loading"
        if self.failed:
            return "; ".join(f"model {name} failed to load: {why}" for name, why in self.failed.items())
        if stuck := self.manager.not_serving():
            return "; ".join(stuck)
        return "no model is loaded"


def get_state(request: Request) -> AppState:
    state: AppState = request.app.state.resserve
    return state

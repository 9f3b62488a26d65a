"""What the app holds while it runs, reachable from any request."""

from __future__ import annotations

from dataclasses import dataclass

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

    @property
    def ready(self) -> bool:
        return self.started and not self.draining and self.manager.all_ready()


def get_state(request: Request) -> AppState:
    state: AppState = request.app.state.resserve
    return state

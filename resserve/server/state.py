"""What the app holds while it runs, reachable from any request."""

from __future__ import annotations

from dataclasses import dataclass, field

from starlette.requests import Request

from resserve.config import ServerSettings
from resserve.metrics import Metrics
from resserve.repository import ModelRepository
from resserve.server.pipeline import RequestPipeline
from resserve.serving.manager import ModelManager
from resserve.serving.states import ModelStates


@dataclass
class AppState:
    """Settings, metrics, models and the preprocessing pool; ``draining`` flips on SIGTERM."""

    settings: ServerSettings
    metrics: Metrics
    repository: ModelRepository
    manager: ModelManager
    pipeline: RequestPipeline
    states: ModelStates = field(default_factory=lambda: ModelStates([]))  # what each model is doing
    started: bool = False  # every configured model has been built and loaded, or has failed
    draining: bool = False
    failed: dict[str, str] = field(default_factory=dict)  # model -> why its last load failed (no paths)

    @property
    def ready(self) -> bool:
        """Every configured model serves (strict, as Triton): a broken model keeps the pod out."""
        return self.started and not self.draining and not self.unserved_failures() and self.manager.all_ready()

    def unserved_failures(self) -> dict[str, str]:
        """Models whose load failed and that serve no version: a failed reload, which leaves the
        previous version serving, does not take the pod out (the repository index shows it)."""
        serving = {m.name for m in self.manager.loaded()}
        return {name: why for name, why in self.failed.items() if name not in serving}

    def not_ready_reason(self) -> str:
        if self.draining:
            return "draining"
        if not self.started:
            return "starting: " + "; ".join(f"model {name} {self.states.get(name).describe()}"  # type: ignore[union-attr]
                                            for name in self.states.pending())
        if failed := self.unserved_failures():
            return "; ".join(f"model {name} failed to load: {why}" for name, why in failed.items())
        if stuck := self.manager.not_serving():
            return "; ".join(stuck)
        return "no model is loaded"


def get_state(request: Request) -> AppState:
    state: AppState = request.app.state.resserve
    return state

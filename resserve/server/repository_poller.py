"""Repository polling (``repository_poll_s``): the server follows the repository folder.

Every poll reads each model's ``config.yaml`` and built versions again: a version that enters the
``version_policy`` is loaded, versions that left it are drained and released once every version
in it serves (no request is lost: queued requests finish, new ones go to what serves), traffic
settings and ``release.json`` decisions are applied, a new model folder is loaded and a removed
one unloaded. It never builds: versions come from ``resserve build --new-version`` (a CI job, a
Kubernetes Job). With ``--workers`` every worker polls the same folder on its own; the policy is
a function of the folder, so all of them converge on the same versions within one poll.
"""

from __future__ import annotations

import asyncio
import logging

from resserve.errors import ResserveError
from resserve.server.app_state import AppState

log = logging.getLogger(__name__)


class RepositoryPoller:
    """Brings the loaded versions in line with the repository, once per :meth:`poll`."""

    def __init__(self, state: AppState, names: list[str] | None) -> None:
        self.state = state
        self.fixed_names = names  # settings.models: only these, never a new folder
        # A version that failed to load is tried again only once its folder changed.
        self.failed: dict[tuple[str, str], float] = {}

    async def run(self, interval_s: float) -> None:
        while True:
            await asyncio.sleep(interval_s)
            if not self.state.started:
                continue
            try:
                await self.poll()
            except asyncio.CancelledError:
                raise
            except Exception:  # one bad poll is logged; the next one tries again
                log.exception("repository poll failed")

    async def poll(self) -> None:
        repository, manager = self.state.repository, self.state.manager
        repository.refresh()
        names = self.fixed_names or await asyncio.to_thread(repository.names)
        for name in names:
            await self._sync(name)
        if self.fixed_names is None:  # a model folder removed (its config.yaml gone): unload it
            for gone in [n for n in manager.lifecycle.names() if n not in names and manager.serving_versions(n)]:
                log.info("model %s left the repository: unloading it", gone)
                await manager.unload(gone)

    async def _sync(self, name: str) -> None:
        manager = self.state.manager
        records = manager.lifecycle.records(name)
        if any(r.phase in ("PENDING", "BUILDING", "LOADING") for r in records):
            return  # startup or a load is on it
        try:
            config, built = await asyncio.to_thread(manager.policy_of, name)
        except ResserveError as exc:
            log.error("repository poll: model %s: %s", name, exc)
            return
        wanted = config.version_policy.choose(built)
        manager.configure_release(name, config)
        serving = set(manager.serving_versions(name))
        for version in wanted:
            if version in serving:
                continue
            changed = await asyncio.to_thread(self._folder_time, name, version)
            if self.failed.get((name, version)) == changed:
                continue
            log.info("repository poll: model %s version %s is in the version policy: loading it", name, version)
            try:
                await manager.load(name, version)
                self.failed.pop((name, version), None)
            except Exception:  # recorded by the manager; tried again once the folder changes
                self.failed[(name, version)] = changed
        if wanted and set(wanted) <= set(manager.serving_versions(name)):
            await manager.retire_outside(name, set(wanted))

    def _folder_time(self, name: str, version: str) -> float:
        folder = self.state.repository.root / name / version
        try:
            return max(p.stat().st_mtime for p in [folder, *folder.iterdir()])
        except OSError:
            return 0.0

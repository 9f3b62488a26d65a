"""Repository polling (``repository_poll_s``): the server follows the repository folder.

Every poll reads each model's ``config.yaml`` and built versions again: a version that enters the
``version_policy`` is loaded, versions that left it are drained and released once every version
in it serves (no request is lost: queued requests finish, new ones go to what serves), traffic
settings and ``release.json`` decisions are applied, a new model folder is loaded and a removed
one unloaded. It never builds: versions come from ``resserve build --new-version`` (a CI job, a
Kubernetes Job). A remote repository (``model_repo`` as a URL) is mirrored first
(:mod:`resserve.remote_repository`). With ``--workers`` every worker polls the same folder on its own; the policy is
a function of the folder, so all of them converge on the same versions within one poll.
"""

from __future__ import annotations

import asyncio
import contextlib
import logging

from resserve.server.app_state import AppState

log = logging.getLogger(__name__)


class RepositoryPoller:
    """Brings the loaded versions in line with the repository, once per :meth:`poll`."""

    def __init__(self, state: AppState, names: list[str] | None) -> None:
        self.state = state
        self.fixed_names = names  # settings.models: only these, never a new folder
        # A version that failed to load is tried again only once its folder or config changed.
        self.failed: dict[tuple[str, str], tuple[float, float]] = {}
        self.missing: set[str] = set()  # loaded models whose config.yaml was gone at the last poll
        self.stopping = asyncio.Event()

    async def run(self, interval_s: float) -> None:
        """Poll every ``interval_s`` until :meth:`stop`; a poll in progress is finished, not cut."""
        while not self.stopping.is_set():
            with contextlib.suppress(TimeoutError):
                await asyncio.wait_for(self.stopping.wait(), interval_s)
            if self.stopping.is_set():
                return
            if self.state.started:
                try:
                    await self.poll()
                except Exception:  # logged; the next poll tries again
                    log.exception("repository poll failed")

    def stop(self) -> None:
        self.stopping.set()

    async def poll(self) -> None:
        repository, manager = self.state.repository, self.state.manager
        if self.state.remote is not None:  # mirror the remote repository first (its own errors logged)
            await asyncio.to_thread(self.state.remote.sync)
        repository.refresh()
        try:
            names = self.fixed_names or await asyncio.to_thread(repository.names)
        except Exception:
            log.exception("repository poll: cannot list %s", repository.root)
            return
        for name in names:
            if self.stopping.is_set():
                return
            if name in manager.unloaded:  # unloaded on request: stays so until loaded on request
                continue
            try:
                await self._sync(name)
            except Exception:  # one model's trouble never stops the others' polling
                log.exception("repository poll: model %s", name)
        if self.fixed_names is None:
            await self._unload_removed(names)

    async def _unload_removed(self, names: list[str]) -> None:
        """A model whose config.yaml is gone at two polls in a row is unloaded (one miss may be an
        editor's save or a ConfigMap's link swap)."""
        manager = self.state.manager
        gone = {n for n in manager.lifecycle.names() if n not in names and manager.serving_versions(n)}
        for name in gone & self.missing:
            log.info("model %s left the repository: unloading it", name)
            await manager.unload(name)
            manager.unloaded.discard(name)  # a folder that comes back is loaded again
        self.missing = gone - self.missing

    async def _sync(self, name: str) -> None:
        manager = self.state.manager
        records = manager.lifecycle.records(name)
        if any(r.phase in ("PENDING", "BUILDING", "LOADING") for r in records):
            return  # startup or a load is on it
        config, built = await asyncio.to_thread(manager.policy_of, name)
        wanted = config.version_policy.choose(built)
        manager.configure_release(name, config)
        serving = set(manager.serving_versions(name))
        for version in wanted:
            if version in serving:
                continue
            changed = await asyncio.to_thread(self._changed, name, version)
            if self.failed.get((name, version)) == changed:
                continue
            log.info("repository poll: model %s version %s is in the version policy: loading it", name, version)
            try:
                await manager.load(name, version)
                self.failed.pop((name, version), None)
            except Exception:  # recorded by the manager; tried again once the folder or config changes
                self.failed[(name, version)] = changed
        if wanted and set(wanted) <= set(manager.serving_versions(name)):
            await manager.retire_outside(name, set(wanted))

    def _changed(self, name: str, version: str) -> tuple[float, float]:
        """When the version's folder (its newest file) and the model's config.yaml last changed."""
        model = self.state.repository.root / name
        folder = model / version
        try:
            built = max(p.stat().st_mtime for p in [folder, *folder.iterdir()])
        except OSError:
            built = 0.0
        try:
            config = (model / "config.yaml").stat().st_mtime
        except OSError:
            config = 0.0
        return built, config

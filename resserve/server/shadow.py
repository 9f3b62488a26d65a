"""Shadow traffic: a drawn share of a model's requests is run again on a candidate, after the
primary has answered, and the two answers are compared (no labels needed).

The client's answer never waits for the shadow: the candidate's run is a background task started
once the primary's outputs exist, on the same preprocessed rows (no second decode). It is dropped,
and counted as dropped, before it could cost the primary anything: when the primary or the
candidate is past half its admission capacity, when the candidate does not serve, or when it
takes other tensors or labels. The comparison (:class:`resserve.serving.release.Comparison`)
feeds the canary's decision and the ``resserve_shadow_*`` metrics.
"""

from __future__ import annotations

import asyncio
import logging
import time
from collections.abc import Callable

import numpy as np

from resserve.errors import ResserveError
from resserve.metrics import Metrics
from resserve.server.scores import model_scores
from resserve.serving.manager import ModelManager, ServedModel
from resserve.serving.release import Comparison, Release

log = logging.getLogger(__name__)


def compare_scores(primary: np.ndarray, candidate: np.ndarray) -> tuple[np.ndarray, np.ndarray, np.ndarray]:
    """Per row: top-1 agreement, classes shared by the two top 5s, L1 distance of the probabilities."""
    top1 = primary.argmax(axis=1) == candidate.argmax(axis=1)
    k = min(5, primary.shape[1])
    top_p = np.argpartition(-primary, k - 1, axis=1)[:, :k]
    top_c = np.argpartition(-candidate, k - 1, axis=1)[:, :k]
    overlap = np.array([len(set(a.tolist()) & set(b.tolist())) for a, b in zip(top_p, top_c, strict=True)])
    l1 = np.abs(primary.astype(np.float64) - candidate.astype(np.float64)).sum(axis=1)
    return top1, overlap, l1


class Shadow:
    """Mirrors drawn requests to their model's shadow candidate and records the comparison."""

    def __init__(self, manager: ModelManager, metrics: Metrics) -> None:
        self.manager = manager
        self.metrics = metrics
        self.tasks: set[asyncio.Task[None]] = set()
        self.closed = False  # draining: no new shadow starts
        self.judging = False

    def wanted(self, primary: ServedModel) -> bool:
        """Whether requests to ``primary`` may be mirrored now (its model has a shadow still judged)."""
        release = self.manager.releases.get(primary.name) if self.manager is not None else None
        shadow = release.traffic.shadow if release is not None else None
        return (not self.closed and release is not None and shadow is not None
                and shadow.target != primary.version and shadow.target not in release.decided)

    def mirror(self, primary: ServedModel, rows: Callable[[], np.ndarray], outputs: np.ndarray,
               primary_s: float) -> None:
        """Run ``rows`` (made only when drawn) on the candidate in the background, if this request is
        drawn for shadowing and nothing says to drop it. ``primary_s``: the primary's queue and engine time."""
        release = self.manager.releases.get(primary.name)
        if self.closed or release is None or (target := release.shadow_target(primary.version)) is None:
            return
        comparison = release.comparison(primary.version, target)
        candidate = self._candidate(primary, target)
        count = outputs.shape[0]
        reason = None
        if candidate is None:
            reason = "not_serving"
        elif not _compatible(primary, candidate):
            reason = "incompatible"
        elif primary.admitted > primary.capacity // 2 or candidate.admitted + count > candidate.capacity // 2:
            reason = "saturated"  # shadows go first: the primary's own requests keep every place
        if reason is not None:
            self._dropped(primary, comparison, reason)
            return
        assert candidate is not None
        # Its places are taken now, not when the task first runs: every request that finishes in
        # the same turn of the loop sees the shadows already started.
        candidate.admitted += count
        task = asyncio.get_running_loop().create_task(
            self._run(release, comparison, primary, candidate, rows(), outputs, primary_s),
            name=f"shadow-{primary.name}")
        self.tasks.add(task)

        def done(finished: asyncio.Task[None]) -> None:
            candidate.admitted -= count  # also when cancelled before it ran
            self.tasks.discard(finished)

        task.add_done_callback(done)

    def _candidate(self, primary: ServedModel, target: str) -> ServedModel | None:
        if target.startswith("model:"):
            try:
                return self.manager.get(target.removeprefix("model:"))
            except ResserveError:
                return None
        return self.manager.version_served(primary.name, target)

    def _dropped(self, primary: ServedModel, comparison: Comparison, reason: str) -> None:
        comparison.dropped[reason] += 1
        self.metrics.shadow_dropped.labels(primary.name, comparison.primary, comparison.candidate, reason).inc()

    async def _run(self, release: Release, comparison: Comparison, primary: ServedModel, candidate: ServedModel,
                   rows: np.ndarray, outputs: np.ndarray, primary_s: float) -> None:
        count = rows.shape[0]
        started = time.monotonic()
        deadline = started + candidate.config.dynamic_batching.default_timeout_ms / 1000.0
        ok = False
        try:
            answer = await candidate.queue.submit(rows, deadline, started)
            ok = True
        except Exception as exc:  # the candidate's failure is the candidate's: the client has its answer
            log.debug("shadow of %s on %s failed: %s", primary.name, comparison.candidate, exc)
            self._dropped(primary, comparison, "failed")
            return
        finally:
            candidate.observers.request_done(ok, time.monotonic() - started, count, "shadow")
        candidate_s = time.monotonic() - started
        top1, overlap, l1 = compare_scores(model_scores(primary, outputs), model_scores(candidate, answer))
        comparison.add(top1, overlap, l1, primary_s, candidate_s)
        labels = (primary.name, comparison.primary, comparison.candidate)
        self.metrics.shadow_compared.labels(*labels).inc(count)
        self.metrics.shadow_top1_agreements.labels(*labels).inc(int(top1.sum()))
        for shared, distance in zip(overlap.tolist(), l1.tolist(), strict=True):
            self.metrics.shadow_top5_overlap.labels(*labels).observe(shared)
            self.metrics.shadow_prob_l1.labels(*labels).observe(distance)
        self.metrics.shadow_latency.labels(*labels, primary.version).observe(primary_s)
        ran = candidate.version if candidate.name == primary.name else f"{candidate.name}:{candidate.version}"
        self.metrics.shadow_latency.labels(*labels, ran).observe(candidate_s)
        if release.traffic.promote is not None and comparison.compared >= release.traffic.promote.min_compared \
                and not self.judging:
            self.judging = True  # one decision at a time; the file lock and fsync run off the event loop
            try:
                await asyncio.to_thread(release.judge, comparison)
            finally:
                self.judging = False

    async def drain(self) -> None:
        """Wait for the shadows in flight (tests, and a clean drain)."""
        while self.tasks:
            await asyncio.gather(*list(self.tasks), return_exceptions=True)

    def cancel(self) -> None:
        """Stop every shadow and start no other (the drain's time is the clients')."""
        self.closed = True
        for task in list(self.tasks):
            task.cancel()


def _compatible(primary: ServedModel, candidate: ServedModel) -> bool:
    """The candidate takes the rows the primary's preprocessing made and answers the same classes."""
    return (primary.contract == candidate.contract
            and primary.input_spec == candidate.input_spec
            and primary.labels == candidate.labels)

"""Engine instances on threads of their own, each call watched for hangs.

An engine call cannot be interrupted (a thread cannot be killed), so a stuck call is answered
instead: after ``engine_timeout_s`` its batch fails with :class:`EngineHungError`, the instance
takes no new batch until the call returns, and while every instance of a model is stuck the
:class:`Watchdog` says so (``hung``; its health callback tells the model's lifecycle record, so
the model reads not ready, and the batch queue refuses new requests with 503) until one answers
again.

Example::

    watchdog = Watchdog("resnet50", timeout_s=30, on_health=lambda healthy: ...)
    instance = EngineThread(engine.infer, "resnet50", 0, watchdog)
    ran = await instance.run([rows_a, rows_b])
"""

from __future__ import annotations

import asyncio
import logging
import math
import time
from collections.abc import Callable, Sequence
from concurrent.futures import ThreadPoolExecutor
from dataclasses import dataclass

import numpy as np

from resserve.errors import EngineError, EngineHungError, ModelNotReadyError
from resserve.threads import ENGINE_PREFIX, set_os_thread_name

log = logging.getLogger(__name__)

Runner = Callable[[np.ndarray], np.ndarray]


@dataclass(frozen=True)
class Ran:
    """An engine call's outputs, with the seconds spent concatenating and inferring."""

    outputs: np.ndarray
    concat_s: float
    infer_s: float


class Watchdog:
    """A model's hang detector, shared by its instances: unhealthy while all of them are stuck."""

    def __init__(self, model: str, timeout_s: float | None,
                 on_health: Callable[[bool], None] | None = None) -> None:
        self.model = model
        self.timeout_s = timeout_s
        self.on_health = on_health  # told when every instance gets stuck, and when one answers again
        self.instances = 0  # the EngineThreads it watches register themselves
        self._stuck = 0

    def register(self) -> None:
        """One more instance to watch (an EngineThread's constructor calls it)."""
        self.instances += 1

    @property
    def hung(self) -> bool:
        """Every watched instance is stuck in a call past ``timeout_s``."""
        return self.instances > 0 and self._stuck >= self.instances

    def not_answering(self) -> ModelNotReadyError:
        """The one answer while every instance is stuck: 503, retry after about one ``timeout_s``
        (the stuck call ends by then or trips the watchdog again)."""
        return ModelNotReadyError(f"model {self.model}: the engine is not answering (watchdog)",
                                  retry_after_s=max(1, math.ceil(self.timeout_s or 1)))

    def stuck(self) -> None:
        self._stuck += 1
        if self.hung and self.on_health:
            self.on_health(False)

    def recovered(self) -> None:
        was_hung = self.hung
        self._stuck -= 1
        if was_hung and self.on_health:
            self.on_health(True)


class EngineThread:
    """One engine instance: its runner on a single thread of its own, each call under the watchdog."""

    def __init__(self, runner: Runner, model: str, index: int, watchdog: Watchdog | None = None) -> None:
        self.runner = runner
        self.model = model
        self.index = index
        self.watchdog = watchdog
        if watchdog is not None:
            watchdog.register()
        self._executor = ThreadPoolExecutor(max_workers=1, thread_name_prefix=f"engine-{model}-{index}",
                                            initializer=set_os_thread_name, initargs=(f"{ENGINE_PREFIX}-{index}",))
        self._stuck: asyncio.Task[None] | None = None

    async def free(self) -> None:
        """Return once the instance can take a batch: at once, or when its stuck call returns."""
        if self._stuck is not None:
            await asyncio.shield(self._stuck)

    async def run(self, parts: Sequence[np.ndarray]) -> Ran:
        """Concatenate ``parts`` and run them. Raises what the engine raised, EngineError when it
        changed the row count, EngineHungError when the call outlives the watchdog's limit."""
        loop = asyncio.get_running_loop()
        call = loop.run_in_executor(self._executor, _run_batch, self.runner, list(parts))
        timeout_s = self.watchdog.timeout_s if self.watchdog is not None else None
        if timeout_s is not None:
            done, _ = await asyncio.wait({call}, timeout=timeout_s)
            if not done:
                self._stuck = asyncio.create_task(self._recover(call))
                raise EngineHungError(f"model {self.model}: the engine did not answer within {timeout_s:g} s")
        return await call

    async def _recover(self, call: asyncio.Future[Ran]) -> None:
        assert self.watchdog is not None
        log.error("model %s: engine instance %d has not finished a batch in %.1f s; it takes no batch until "
                  "it does", self.model, self.index, self.watchdog.timeout_s)
        try:
            self.watchdog.stuck()  # inside: whatever its health callback does, recovered() follows
            await call
        except Exception as exc:  # the batch is already answered; only the recovery matters
            log.warning("model %s: the stuck batch ended with %s", self.model, exc)
        finally:
            self.watchdog.recovered()
            self._stuck = None
            log.info("model %s: engine instance %d answered again after the watchdog fired", self.model, self.index)

    def close(self, finalizer: Callable[[], object] | None) -> asyncio.Future[None]:
        """Run ``finalizer`` (the engine's close) on this thread after the call it may still be
        making has returned, never on the event loop; the future ends when it has run."""
        done = asyncio.get_running_loop().run_in_executor(self._executor, _finalize, finalizer, self.model, self.index)
        self._executor.shutdown(wait=False)  # the finalizer queued behind the running call still runs
        return done


def _finalize(finalizer: Callable[[], object] | None, model: str, index: int) -> None:
    """Run on an engine thread after its last batch: an engine's close, whose failure is only logged."""
    if finalizer is None:
        return
    try:
        finalizer()
    except Exception:
        log.exception("model %s: closing engine instance %d failed", model, index)


def _run_batch(runner: Runner, parts: list[np.ndarray]) -> Ran:
    """Concatenate, run, and check the engine kept one output row per input row; with the seconds
    each step took (the statistics extension's compute_input and compute_infer)."""
    started = time.perf_counter()
    batch = parts[0] if len(parts) == 1 else np.concatenate(parts)
    ran = time.perf_counter()
    outputs = runner(batch)
    if outputs.shape[0] != batch.shape[0]:
        raise EngineError(f"engine returned {outputs.shape[0]} rows for a batch of {batch.shape[0]}")
    return Ran(outputs, ran - started, time.perf_counter() - ran)

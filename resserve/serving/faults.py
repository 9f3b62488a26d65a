"""Fault injection: an engine runner that fails or hangs on chosen batches, configured per model.

The reliability tests (and operators rehearsing an incident) need a real server whose engine
misbehaves on cue; wrapping the real runner keeps everything else (batching, metrics, HTTP)
exactly as in production. Enabled only by ``fault_injection:`` in a model's config.yaml, and
announced in the log at load.
"""

from __future__ import annotations

import threading
import time
from collections.abc import Callable

import numpy as np

from resserve.config import FaultInjectionConfig
from resserve.errors import EngineError

Runner = Callable[[np.ndarray], np.ndarray]


class FaultyRunner:
    """Calls ``runner``, except that every n-th batch raises or first sleeps (counted from 1)."""

    def __init__(self, runner: Runner, faults: FaultInjectionConfig) -> None:
        self.runner = runner
        self.faults = faults
        self.batches = 0
        self._lock = threading.Lock()

    def __call__(self, batch: np.ndarray) -> np.ndarray:
        with self._lock:
            self.batches += 1
            number = self.batches
        hang, fail = self.faults.hang_every_n_batches, self.faults.fail_every_n_batches
        if hang and number % hang == 0:
            time.sleep(self.faults.hang_s)
        if fail and number % fail == 0:
            raise EngineError(f"injected engine failure on batch {number}")
        return self.runner(batch)

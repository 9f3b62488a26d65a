"""SLO-aware adaptive batching: choose batch size and wait online to meet a latency target.

A fixed ``max_queue_delay_ms`` is a guess that is wrong at every load but one: at low load it
adds delay for batches that never fill, at high load it lets batches grow until their engine time
breaks the latency target. Given a per-model p99 target, this policy learns what the engine costs
per batch size (``t(b) ~ a + c*b``, fitted online from the batches it runs) and how fast requests
arrive, and for every batch decides:

- the **cap**: the largest batch whose engine time still fits the target after the oldest waiting
  request's age (bigger batches are cheaper per image, so fill up to the cap when possible);
- the **wait**: how long to hold for more requests. Only when the batch at hand is too small for
  the engine instances to keep up with the arrival rate (``rate * t(b) / (b * instances)`` above
  ``TARGET_UTILIZATION``): then until the batch is big enough to keep up, and never longer than
  the oldest request can afford. When the engine keeps up anyway, waiting would only add
  latency, so the batch leaves at once.

Ages run from when the request reached the server, so preprocessing time counts against the
target too. Decisions are exported as metrics (cap, wait) so an operator sees what it does.
"""

from __future__ import annotations

import math
import time
from dataclasses import dataclass, field

from resserve.serving.batch_policy import QueueView

# Share of the target the batcher plans for: the rest absorbs engine-time variance, HTTP and
# response encoding (p99 is a tail, the fit predicts a mean).
DEFAULT_HEADROOM = 0.7
EWMA = 0.2
# Batch up only as far as it takes for the engine to serve the arrival rate with this much spare.
TARGET_UTILIZATION = 0.85
# Draining a late backlog: the smallest batch whose engine time per row is within this much of the
# cheapest per-row time. On CPUs t(b)/b flattens early, so near-best throughput comes at a
# fraction of the largest batch's latency (figures: docs/engines-and-precision.md).
EFFICIENT_SLACK = 0.05


@dataclass
class EngineTimeModel:
    """Engine seconds per batch of ``b`` rows, learned online: per-size EWMA, then a linear fit."""

    by_size: dict[int, float] = field(default_factory=dict)
    counts: dict[int, int] = field(default_factory=dict)
    # The fit changes only when a batch is observed; decisions ask for it per row count per arrival.
    _fit: tuple[float, float] | None = field(default=None, repr=False)
    _fit_stale: bool = field(default=True, repr=False)

    def observe(self, rows: int, seconds: float) -> None:
        self._fit_stale = True
        old = self.by_size.get(rows)
        self.by_size[rows] = seconds if old is None else (1 - EWMA) * old + EWMA * seconds
        self.counts[rows] = self.counts.get(rows, 0) + 1

    def fit(self) -> tuple[float, float] | None:
        """(a, c) of ``t(b) = a + c*b`` by weighted least squares; None before two distinct sizes."""
        if self._fit_stale:
            self._fit, self._fit_stale = self._least_squares(), False
        return self._fit

    def _least_squares(self) -> tuple[float, float] | None:
        if len(self.by_size) < 2:
            return None
        weights = {b: min(n, 20) for b, n in self.counts.items()}
        total = sum(weights.values())
        mean_b = sum(w * b for b, w in weights.items()) / total
        mean_t = sum(w * self.by_size[b] for b, w in weights.items()) / total
        var = sum(w * (b - mean_b) ** 2 for b, w in weights.items())
        if var <= 0:
            return None
        slope = sum(w * (b - mean_b) * (self.by_size[b] - mean_t) for b, w in weights.items()) / var
        slope = max(slope, 0.0)
        return max(mean_t - slope * mean_b, 0.0), slope

    def predict(self, rows: int) -> float | None:
        """Expected seconds for a batch of ``rows``; None while nothing is known."""
        if rows in self.by_size and self.counts[rows] >= 3:
            return self.by_size[rows]
        fit = self.fit()
        if fit is not None:
            return fit[0] + fit[1] * rows
        if self.by_size:  # one size seen: assume time proportional to rows (pessimistic for growth)
            (size, seconds), = self.by_size.items()
            return seconds * max(rows, size) / size
        return None


@dataclass
class ArrivalRate:
    """Requests per second, as an exponentially weighted mean of inter-arrival gaps."""

    mean_gap_s: float | None = None
    last: float | None = None

    def observe(self, now: float) -> None:
        if self.last is not None:
            gap = max(now - self.last, 1e-6)
            self.mean_gap_s = gap if self.mean_gap_s is None else (1 - EWMA) * self.mean_gap_s + EWMA * gap
        self.last = now

    def per_second(self, now: float) -> float:
        if self.mean_gap_s is None or self.last is None:
            return 0.0
        # A long silence since the last arrival lowers the estimate at once.
        return 1.0 / max(self.mean_gap_s, now - self.last)


@dataclass(frozen=True)
class Decision:
    cap: int          # dispatch at most this many rows
    wait_s: float     # hold the batch this long for more rows (0: go now)
    why: str


@dataclass
class SloBatchPolicy:
    """Decides cap and wait for each batch against ``target_s`` (the model's p99 latency target)."""

    target_s: float
    max_batch_size: int
    max_wait_s: float
    instances: int = 1
    headroom: float = DEFAULT_HEADROOM
    engine: EngineTimeModel = field(default_factory=EngineTimeModel)
    arrivals: ArrivalRate = field(default_factory=ArrivalRate)

    reports = True  # its cap and hold are exported as metrics

    @property
    def budget_s(self) -> float:
        return self.target_s * self.headroom

    def arrived(self, now: float) -> None:
        self.arrivals.observe(now)

    def ran(self, rows: int, seconds: float) -> None:
        self.engine.observe(rows, seconds)

    async def hold(self, queue: QueueView) -> int | None:
        """Re-decide on every arrival until the decision says go; the cap it settled on, or None
        when another instance's worker took what was waiting meanwhile."""
        while (oldest := queue.oldest()) is not None:
            decision = self.decide(time.monotonic(), oldest[1], queue.queued_rows())
            if queue.closed or decision.wait_s <= 0 or queue.queued_rows(decision.cap) >= decision.cap:
                return decision.cap
            if not await queue.wait_for_arrival(decision.wait_s):
                return decision.cap
        return None

    def cap(self, oldest_age_s: float) -> int:
        """The largest batch whose predicted engine time fits what is left of the oldest's budget.

        When not even a batch of one fits, the oldest request has missed its target whatever
        happens: the backlog then drains in :meth:`efficient_rows` (capping at one there lowered
        throughput exactly when the queue was long and never recovered; the largest batch a fresh
        request could afford made every request in it wait for the whole batch, and the p50 at
        capacity was worse than the fixed batcher's).
        """
        left = self.budget_s - oldest_age_s
        one = self.engine.predict(1)
        if one is not None and one > left:
            return self.efficient_rows(self.cap(0.0)) if oldest_age_s > 0.0 else 1
        best = 1
        for rows in range(1, self.max_batch_size + 1):
            predicted = self.engine.predict(rows)
            if predicted is None:
                return self.max_batch_size  # nothing learned yet: behave like the fixed batcher
            if predicted <= left:
                best = rows
        return best

    def efficient_rows(self, cap: int) -> int:
        """The smallest batch (at most ``cap``) within EFFICIENT_SLACK of the cheapest time per row.

        Before two batch sizes have been seen, ``cap`` itself: with one size known the model assumes
        time proportional to rows, which makes every size look equally efficient, so a backlog that
        only ever ran batches of one kept choosing one and never learned that bigger batches are
        cheaper (under closed-loop load every batch stayed at one, queueing for hundreds of ms).
        """
        if self.engine.fit() is None:
            return cap
        # With a fit, predict() answers for every row count.
        per_row = {rows: t / rows for rows in range(1, cap + 1) if (t := self.engine.predict(rows)) is not None}
        best = min(per_row.values())
        return min(rows for rows, t in per_row.items() if t <= best * (1 + EFFICIENT_SLACK))

    def rows_to_keep_up(self, rate: float, cap: int) -> int:
        """The smallest batch at which the instances serve ``rate`` at TARGET_UTILIZATION (cap at most)."""
        for rows in range(1, cap + 1):
            predicted = self.engine.predict(rows)
            if predicted is None:
                return 1
            if rate * predicted / (rows * self.instances) <= TARGET_UTILIZATION:
                return rows
        return cap

    def decide(self, now: float, oldest_received: float, queued_rows: int) -> Decision:
        """Dispatch now or hold for more rows, and how many rows at most."""
        age = now - oldest_received
        cap = self.cap(age)
        if queued_rows >= cap:
            return Decision(cap, 0.0, "full")
        rate = self.arrivals.per_second(now)
        needed = self.rows_to_keep_up(rate, cap)
        if queued_rows >= needed:
            return Decision(cap, 0.0, "keeps up")
        fit = self.engine.fit()
        # Behind the load: a bigger batch helps only if the rows that arrive while the engine
        # idles are worth its fixed cost. Waiting w for rate*w more rows lowers the time per image
        # iff queued_rows < a * rate (t(b) = a + c*b); otherwise go now and let the queue fill
        # while the engine runs.
        worth = fit[0] * rate if fit is not None else float(needed)
        if queued_rows >= worth:
            return Decision(cap, 0.0, "engine-bound")
        needed = min(needed, max(queued_rows + 1, math.ceil(worth)))
        if fit is not None:
            # Longest wait w with age + w + t(rows + rate*w) <= budget, for t(b) = a + c*b: the
            # batch grows while it waits, and so does its engine time.
            a, c = fit
            slack = (self.budget_s - age - a - c * queued_rows) / (1.0 + c * rate)
        else:
            slack = self.budget_s - age - (self.engine.predict(cap) or 0.0)
        if slack <= 0:
            return Decision(cap, 0.0, "no slack")
        fill_s = (needed - queued_rows) / rate if rate > 0 else math.inf
        wait = min(slack, fill_s, self.max_wait_s)
        if rate * wait < 1.0:  # not even one more request expected: waiting only adds latency
            return Decision(cap, 0.0, "low load")
        return Decision(cap, wait, "filling")

"""An async HTTP load generator: closed loop at fixed concurrency, open loop at a fixed rate.

Why aiohttp and one event loop: on a 2-core machine the generator shares the CPU with the server,
so what it costs per request is what it steals from the measurement. Keep-alive connections, the
bodies preloaded in memory, and a sample appended per completed request are all it does
(``resserve loadtest overhead`` measures that cost).

Open-loop latency runs from the *scheduled* send time, not the actual one: if the generator (or
the connection pool) falls behind, the delay is charged to latency instead of silently lowering
the offered rate (no coordinated omission). The lag between schedule and send is kept per sample
so a lagging generator shows in the report.
"""

from __future__ import annotations

import asyncio
import random
import time
from collections.abc import Iterator, Sequence
from dataclasses import dataclass
from typing import Literal

import aiohttp

from resserve.perf.images import Payload

Arrival = Literal["constant", "poisson"]
# Statuses that are not HTTP codes: the request never got an answer, or was never sent.
TIMEOUT = "timeout"
CONNECTION_ERROR = "connection_error"
CLIENT_OVERFLOW = "client_overflow"


@dataclass(frozen=True, slots=True)
class Sample:
    """One request: when it was due, sent and answered (perf_counter seconds), and how it ended."""

    scheduled: float
    sent: float
    done: float
    status: str
    images: int = 1

    @property
    def latency_s(self) -> float:
        return self.done - self.scheduled

    @property
    def ok(self) -> bool:
        return self.status == "200"


def arrival_intervals(rate: float, arrival: Arrival, seed: int = 0) -> Iterator[float]:
    """Seconds between consecutive sends: ``1/rate`` each (constant) or exponential (Poisson)."""
    if rate <= 0:
        raise ValueError(f"rate must be positive, got {rate}")
    if arrival == "constant":
        while True:
            yield 1.0 / rate
    elif arrival == "poisson":
        rng = random.Random(seed)
        while True:
            yield rng.expovariate(rate)
    else:
        raise ValueError(f"unknown arrival process {arrival!r}; choose constant or poisson")


# Below every server keep-alive timeout we measure against (resserve and uvicorn: 5 s).
CLIENT_KEEPALIVE_S = 2.0


class LoadGenerator:
    """Sends payloads to one URL and records a :class:`Sample` per request.

    Example::

        async with LoadGenerator(url, payloads) as gen:
            stop = asyncio.Event()
            task = asyncio.create_task(gen.closed_loop(8, stop))
            await asyncio.sleep(10); stop.set(); await task
            print(len(gen.samples))
    """

    def __init__(self, url: str, payloads: Sequence[Payload], *, timeout_s: float = 60.0,
                 max_outstanding: int = 1024) -> None:
        if not payloads:
            raise ValueError("a load test needs at least one payload")
        self.url = url
        self.payloads = list(payloads)
        self.timeout_s = timeout_s
        self.max_outstanding = max_outstanding
        self.samples: list[Sample] = []
        self._session: aiohttp.ClientSession | None = None

    async def __aenter__(self) -> LoadGenerator:
        # Idle connections are dropped by the client before any server's keep-alive closes them
        # (resserve's and uvicorn's 5 s): reusing one the server is closing that instant fails the
        # request as a connection error, and an overload probe leaves hundreds of them idle.
        connector = aiohttp.TCPConnector(limit=self.max_outstanding, limit_per_host=self.max_outstanding,
                                         keepalive_timeout=CLIENT_KEEPALIVE_S)
        self._session = aiohttp.ClientSession(
            connector=connector, timeout=aiohttp.ClientTimeout(total=self.timeout_s),
            skip_auto_headers=("User-Agent",))
        return self

    async def __aexit__(self, *exc: object) -> None:
        if self._session is not None:
            await self._session.close()
            self._session = None

    @property
    def session(self) -> aiohttp.ClientSession:
        if self._session is None:
            raise RuntimeError("use LoadGenerator inside `async with`")
        return self._session

    async def get_text(self, url: str) -> str:
        """A GET on the same connection pool (the server's /metrics between windows)."""
        async with self.session.get(url) as response:
            response.raise_for_status()
            return await response.text()

    async def send(self, payload: Payload, scheduled: float | None = None) -> Sample:
        """One request; every outcome, including no answer at all, becomes a sample.

        ``scheduled``: when it was due (open loop); None means now (closed loop).
        """
        sent = time.perf_counter()
        scheduled = sent if scheduled is None else scheduled
        try:
            async with self.session.post(self.url, data=payload.body,
                                         headers={"Content-Type": payload.content_type}) as response:
                await response.read()
                status = str(response.status)
        except TimeoutError:
            status = TIMEOUT
        except aiohttp.ClientError:
            status = CONNECTION_ERROR
        sample = Sample(scheduled, sent, time.perf_counter(), status)
        self.samples.append(sample)
        return sample

    async def closed_loop(self, concurrency: int, stop: asyncio.Event) -> None:
        """``concurrency`` clients, each sending its next image as soon as the last answer came."""
        if concurrency < 1:
            raise ValueError(f"concurrency must be >= 1, got {concurrency}")
        count = len(self.payloads)

        async def client(index: int) -> None:
            k = index
            while not stop.is_set():
                await self.send(self.payloads[k % count])
                k += concurrency

        await asyncio.gather(*(client(i) for i in range(concurrency)))

    async def open_loop(self, rate: float, stop: asyncio.Event, arrival: Arrival = "poisson",
                        seed: int = 0) -> None:
        """Send at ``rate`` requests/s whatever the answers do, until ``stop``; then await the rest.

        More than ``max_outstanding`` unanswered requests are not sent but recorded as
        ``client_overflow``: a bounded generator, and the overload still visible in the counts.
        """
        intervals = arrival_intervals(rate, arrival, seed)
        pending: set[asyncio.Task[Sample]] = set()
        count, k = len(self.payloads), 0
        due = time.perf_counter()
        while not stop.is_set():
            due += next(intervals)
            # sleep(0) when behind schedule still yields, so the sends already created get to run.
            await asyncio.sleep(max(due - time.perf_counter(), 0.0))
            if stop.is_set():
                break
            if len(pending) >= self.max_outstanding:
                now = time.perf_counter()
                self.samples.append(Sample(due, now, now, CLIENT_OVERFLOW))
                continue
            task = asyncio.create_task(self.send(self.payloads[k % count], due))
            k += 1
            pending.add(task)
            task.add_done_callback(pending.discard)
        if pending:
            await asyncio.gather(*pending)

"""Server benchmark: the engine as served, preprocessing per core and end-to-end HTTP, in one run.

The parts are measured one after another on the same machine, so their ratios mean something even
where absolute numbers drift by 2x over minutes. The bound is what the cores could deliver if
nothing but preprocessing and inference cost CPU::

    bound = cores / (cores / engine_img_s + preprocess_s_per_image_one_core)

``engine_img_s`` is every engine instance of the model running at once on all cores, as the
server runs them; preprocessing is one core's rate. Each round measures the engine, preprocessing
and then the server (one window per image size), so the bound and the end-to-end rate it is
compared with come from the same minute; the server's stage breakdown is read off ``/metrics``
for exactly the measured windows.
"""

from __future__ import annotations

import asyncio
import statistics
import threading
import time
from collections import Counter
from dataclasses import asdict, dataclass, field
from pathlib import Path
from typing import Any

import numpy as np

from resserve.perf.bench_engine import environment
from resserve.perf.server_process import server_process
from resserve.perf.stats import latency_summary_ms
from resserve.builder.build_pipeline import BuildPipeline
from resserve.engines.hardware import available_cores
from resserve.perf.generator import LoadGenerator
from resserve.perf.images import Payload, load_folder
from resserve.perf.server_metrics import Snapshot, breakdown, parse
from resserve.perf.thread_cpu import ServerCpu
from resserve.preprocess import DecodeOptions, preprocess
from resserve.repository import ModelRepository, ModelVersion
from resserve.serving.manager import serving_engine
from resserve.synthetic import synthetic_jpegs


@dataclass
class SizeResult:
    """One upload size (or a folder of real photos): its preprocessing cost, the bound it implies
    and what HTTP delivered."""

    image_size: tuple[int, int]  # for photos: the median width and height
    preprocess_ms_one_core: float
    bound_img_s: float
    e2e_img_s: float  # median over the interleaved windows; answers (200) completed inside a window / its length
    e2e_img_s_windows: list[float]  # one per round
    ratio: float  # median over rounds of that round's e2e / bound
    bound_img_s_rounds: list[float] = field(default_factory=list)
    latency_ms: dict[str, float] = field(default_factory=dict)
    statuses: dict[str, int] = field(default_factory=dict)
    server_stage_ms: dict[str, float] = field(default_factory=dict)
    server_request_ms: float = 0.0
    mean_batch_size: float = 0.0
    label: str = ""  # "500x375", or "photos: <folder> (<count>)"
    cpu_ms_per_image: dict[str, float] = field(default_factory=dict)  # by thread group, over the windows
    cores_used: dict[str, float] = field(default_factory=dict)  # the same as cores busy on average


@dataclass
class ServerBenchResult:
    """Everything one run measured."""

    model: str
    concurrency: int
    cores: int
    engine_instances: int
    engine_batch_size: int
    engine_img_s: float  # median over rounds
    sizes: list[SizeResult]
    engine_img_s_rounds: list[float] = field(default_factory=list)
    environment: dict[str, Any] = field(default_factory=dict)
    workers: int = 1

    def size(self, width: int, height: int) -> SizeResult:
        return next(s for s in self.sizes if s.image_size == (width, height) and not s.label.startswith("photos"))

    def photos(self) -> SizeResult:
        return next(s for s in self.sizes if s.label.startswith("photos"))


def bound_img_s(engine_img_s: float, preprocess_s_per_image: float, cores: int) -> float:
    """Images/s if the cores did only inference and preprocessing, perfectly overlapped."""
    return cores / (cores / engine_img_s + preprocess_s_per_image)


def preprocess_seconds(images: list[bytes], version: ModelVersion, seconds: float = 3.0,
                       uint8_pixels: bool = False) -> float:
    """Seconds per image through the server's decode+preprocess path on one thread (one core)."""
    config = version.config
    options = DecodeOptions(fast_jpeg_draft=config.fast_jpeg_decode, fast_transform=config.fast_preprocess,
                            uint8_pixels=uint8_pixels)
    for data in images[:4]:
        preprocess(data, version.contract, options)
    done, start = 0, time.perf_counter()
    while time.perf_counter() - start < seconds:
        preprocess(images[done % len(images)], version.contract, options)
        done += 1
    return (time.perf_counter() - start) / done


class ServedEngines:
    """All ``instance_count`` engine instances of a model, driven the way the server drives them:
    each runs whole batches on its own thread, all at once. Their joint rate is the engine's share
    of the machine as served."""

    def __init__(self, version: ModelVersion, batch: int) -> None:
        config = version.config
        self.batch = batch
        self.engines = [serving_engine(version) for _ in range(config.instance_count)]
        self.example = self.engines[0].input_spec.example(batch, 0)
        self.pixels = self.example.dtype == np.uint8  # uint8_input: preprocessing stops at pixels
        for engine in self.engines:
            for _ in range(3):
                engine.infer(self.example)

    def rate(self, seconds: float) -> float:
        """Images/s of all instances together over ``seconds``."""
        done = [0] * len(self.engines)
        stop = threading.Event()

        def drive(index: int) -> None:
            while not stop.is_set():
                self.engines[index].infer(self.example)
                done[index] += self.batch

        threads = [threading.Thread(target=drive, args=(i,)) for i in range(len(self.engines))]
        start = time.perf_counter()
        for thread in threads:
            thread.start()
        time.sleep(seconds)
        stop.set()
        for thread in threads:
            thread.join()
        return sum(done) / (time.perf_counter() - start)

    def close(self) -> None:
        for engine in self.engines:
            engine.close()


@dataclass
class Window:
    """One closed-loop window: what was answered inside it, the server's metrics around it and,
    where asked, the server's CPU by thread group (``resserve.perf.thread_cpu``)."""

    latencies: list[float]
    statuses: Counter[str]
    before: Snapshot
    after: Snapshot
    seconds: float
    served: int  # images answered 200 inside the window
    cpu_s: dict[str, float] = field(default_factory=dict)

    @property
    def img_s(self) -> float:
        return self.served / self.seconds


async def closed_window(generator: LoadGenerator, metrics_url: str, model: str, concurrency: int,
                        warmup_s: float, duration_s: float, server_pid: int | None = None) -> Window:
    """Warm up, scrape, measure, scrape: the requests answered inside the window count.
    With ``server_pid``, the server's CPU per thread group over the window is read from /proc."""
    generator.samples.clear()
    stop = asyncio.Event()
    load = asyncio.create_task(generator.closed_loop(concurrency, stop))
    await asyncio.sleep(warmup_s)
    before = parse(await generator.get_text(metrics_url), model)
    cpu = ServerCpu(server_pid) if server_pid else None
    if cpu:
        cpu.start()
    measure_from = time.perf_counter()
    await asyncio.sleep(duration_s)
    stop_at = time.perf_counter()
    cpu_s = cpu.stop() if cpu else {}
    after = parse(await generator.get_text(metrics_url), model)
    stop.set()
    await load
    # Every request answered inside the window counts, whenever it was sent: in a closed loop with
    # latency L, counting only requests sent inside the window too drops the first L seconds of
    # answers, and undercounts a 1.2 s-latency model by a fifth over a 6 s window.
    counted = [s for s in generator.samples if measure_from <= s.done <= stop_at]
    statuses = Counter(s.status for s in counted)
    return Window([s.latency_s for s in counted], statuses, before, after, stop_at - measure_from,
                  statuses.get("200", 0), cpu_s)


@dataclass
class _Round:
    engine_img_s: float
    preprocess_s: dict[str, float]
    windows: dict[str, Window]


async def _rounds(url: str, model: str, version: ModelVersion, engines: ServedEngines,
                  image_sets: dict[str, list[Payload]], concurrency: int, rounds: int, warmup_s: float,
                  window_s: float, engine_s: float, preprocess_s: float,
                  server_pid: int | None = None) -> list[_Round]:
    """Each round measures the bare engine, preprocessing per image set and the server per image
    set, back to back, so each round's bound and end-to-end rate share the machine's state of that
    minute."""
    measured = []
    for _ in range(rounds):
        # Blocking on purpose: nothing else runs while the engine and preprocessing are timed.
        engine_img_s = engines.rate(engine_s)
        pre = {label: preprocess_seconds([p.body for p in payloads], version, preprocess_s, engines.pixels)
               for label, payloads in image_sets.items()}
        windows = {}
        for label, payloads in image_sets.items():
            async with LoadGenerator(f"{url}/v2/models/{model}/classify", payloads,
                                     max_outstanding=concurrency + 1) as generator:  # + the /metrics scrape
                windows[label] = await closed_window(generator, f"{url}/metrics", model, concurrency,
                                                      warmup_s, window_s, server_pid)
        measured.append(_Round(engine_img_s, pre, windows))
    return measured


def _cpu_per_image(windows: list[Window]) -> tuple[dict[str, float], dict[str, float]]:
    """CPU ms per served image and cores busy, by thread group, over all of a set's windows."""
    seconds = sum(w.seconds for w in windows)
    served = sum(w.served for w in windows)
    if not seconds or not served or not any(w.cpu_s for w in windows):
        return {}, {}
    groups = list(dict.fromkeys(g for w in windows for g in w.cpu_s))
    total = {g: sum(w.cpu_s.get(g, 0.0) for w in windows) for g in groups}
    return ({g: 1000.0 * v / served for g, v in total.items() if g != "idle"},
            {g: v / seconds for g, v in total.items()})


def _summed_breakdown(windows: list[Window]) -> tuple[dict[str, float], float, float]:
    """Stage means over all of a size's windows (histogram deltas add up)."""
    total: dict[tuple[str, str], float] = {}
    for window in windows:
        for key in set(window.before.values) | set(window.after.values):
            total[key] = total.get(key, 0.0) + window.after.values.get(key, 0.0) - window.before.values.get(key, 0.0)
    result = breakdown(Snapshot({}), Snapshot(total))
    return result.stage_ms, result.request_ms, result.mean_batch_size


def _image_sets(image_sizes: tuple[tuple[int, int], ...], images: Path | None,
                photos_limit: int | None) -> dict[str, list[Payload]]:
    """Synthetic JPEGs per size (16 each), then the folder of real photos if one is given."""
    sets = {f"{w}x{h}": [Payload(f"{i}.jpg", data, "image/jpeg", w, h)
                         for i, data in enumerate(synthetic_jpegs(16, ((w, h),)))] for w, h in image_sizes}
    if images is not None:
        photos = load_folder(images, photos_limit)
        sets[f"photos: {Path(images).name} ({len(photos)})"] = photos
    return sets


def _median_size(payloads: list[Payload]) -> tuple[int, int]:
    return (int(statistics.median(p.width for p in payloads)), int(statistics.median(p.height for p in payloads)))


def run_server_bench(
    model_repo: Path,
    model: str,
    *,
    concurrency: int = 16,
    image_sizes: tuple[tuple[int, int], ...] = ((500, 375),),
    images: Path | None = None,
    photos_limit: int | None = None,
    rounds: int = 3,
    window_s: float = 8.0,
    warmup_s: float = 2.0,
    engine_s: float = 3.0,
    preprocess_s: float = 2.0,
    workers: int = 1,
    thread_cpu: bool = True,
) -> ServerBenchResult:
    """Measure the engine as served, preprocessing per image set and the served model per image
    set, in ``rounds`` interleaved rounds; medians over rounds, the ratio as the median of per-round
    ratios. ``images``: a folder of real photos measured as one more set, beside the synthetic
    sizes. ``workers``: the server runs that many worker processes; the bound stays the machine's.
    ``thread_cpu``: read the server's CPU per thread group over each window from /proc (Linux)."""
    repository = ModelRepository(model_repo)
    builder = BuildPipeline(repository)
    if builder.is_stale(model):
        builder.build(model)
    version = repository.version(model)
    config = version.config
    batch = min(max(config.dynamic_batching.preferred_batch_sizes or [config.max_batch_size]),
                config.max_batch_size)
    cores = available_cores()
    image_sets = _image_sets(image_sizes, images, photos_limit)
    engines = ServedEngines(version, batch)
    track = thread_cpu and Path("/proc/self/task").is_dir()
    try:
        with server_process(model_repo, "--model", model, "--no-build-missing", "--workers", str(workers),
                            log_level="warning") as server:
            measured = asyncio.run(_rounds(server.url, model, version, engines, image_sets, concurrency, rounds,
                                           warmup_s, window_s, engine_s, preprocess_s,
                                           server.process.pid if track else None))
    finally:
        engines.close()

    sizes = []
    for label, payloads in image_sets.items():
        windows = [r.windows[label] for r in measured]
        bounds = [bound_img_s(r.engine_img_s, r.preprocess_s[label], cores) for r in measured]
        rates = [w.img_s for w in windows]
        latencies = [latency for w in windows for latency in w.latencies]
        statuses: Counter[str] = Counter()
        for w in windows:
            statuses.update(w.statuses)
        stage_ms, request_ms, mean_batch = _summed_breakdown(windows)
        cpu_ms, cores_used = _cpu_per_image(windows)
        sizes.append(SizeResult(
            image_size=_median_size(payloads), label=label,
            preprocess_ms_one_core=1000.0 * statistics.median(r.preprocess_s[label] for r in measured),
            bound_img_s=statistics.median(bounds), e2e_img_s=statistics.median(rates), e2e_img_s_windows=rates,
            ratio=statistics.median(rate / bound for rate, bound in zip(rates, bounds, strict=True)),
            bound_img_s_rounds=bounds,
            latency_ms=latency_summary_ms(latencies) if latencies else {}, statuses=dict(statuses),
            server_stage_ms=stage_ms, server_request_ms=request_ms, mean_batch_size=mean_batch,
            cpu_ms_per_image=cpu_ms, cores_used=cores_used))
    return ServerBenchResult(model=model, concurrency=concurrency, cores=cores, workers=workers,
                             engine_instances=config.instance_count, engine_batch_size=batch,
                             engine_img_s=statistics.median(r.engine_img_s for r in measured),
                             engine_img_s_rounds=[r.engine_img_s for r in measured], sizes=sizes,
                             environment=environment())


def as_dict(result: ServerBenchResult) -> dict[str, Any]:
    return asdict(result)

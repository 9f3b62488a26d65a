"""The request pipeline's admission: images (not requests) are the unit, limits come before decode."""

from __future__ import annotations

from types import SimpleNamespace
from typing import Any

import numpy as np
import pytest

from resserve.config import ModelConfig, ServerSettings
from resserve.errors import InvalidRequestError, QueueFullError, TooManyImagesError
from resserve.metrics import Metrics
from resserve.server.request_pipeline import MAX_TIMEOUT_MS, RequestPipeline
from resserve.serving.manager import capacity_of
from resserve.serving.batching import BatchQueue


def served_model(max_queue_size: int = 8, max_batch_size: int = 2, instances: int = 1) -> Any:
    config = ModelConfig.model_validate({
        "name": "m", "source": {"onnx": "model.onnx"}, "max_batch_size": max_batch_size,
        "instance_count": instances, "dynamic_batching": {"max_queue_size": max_queue_size}})
    queue = BatchQueue([lambda batch: batch], max_batch_size=max_batch_size, max_queue_delay_ms=0,
                       max_queue_size=max_queue_size)
    return SimpleNamespace(name="m", config=config, queue=queue, admitted=0, requests=0, capacity=capacity_of(config))


@pytest.fixture
def pipeline() -> Any:
    pipeline = RequestPipeline(ServerSettings(max_images_per_request=4, preprocess_threads=1), Metrics(), None)  # type: ignore[arg-type]
    yield pipeline
    pipeline.close()


def test_images_are_the_unit_of_admission(pipeline: RequestPipeline) -> None:
    served = served_model(max_queue_size=8, max_batch_size=2)  # capacity 8 + 2 = 10 images
    with pipeline.admit(served, 0.0) as a:
        pipeline.reserve(a, 4)
        with pipeline.admit(served, 0.0) as b:
            pipeline.reserve(b, 4)
            assert served.admitted == 8
            with pipeline.admit(served, 0.0) as c:  # two more images still fit ...
                assert served.admitted == 8  # (admission alone takes no place: the body is unread)
                with pytest.raises(QueueFullError, match="queue full \\(8 of 10 images in progress\\)"):
                    pipeline.reserve(c, 3)  # ... but not three: refused, nothing taken
                assert served.admitted == 8
                pipeline.reserve(c, 2)
                assert served.admitted == 10
            pipeline.reserve(b, 1)  # shrinking gives places back
            assert served.admitted == 5
    assert served.admitted == 0


def test_full_model_refuses_before_the_body_is_read(pipeline: RequestPipeline) -> None:
    served = served_model(max_queue_size=1, max_batch_size=1)
    with pipeline.admit(served, 0.0) as a, pipeline.admit(served, 0.0) as b:
        pipeline.reserve(a, 1)
        pipeline.reserve(b, 1)
        with pytest.raises(QueueFullError) as info, pipeline.admit(served, 0.0):
            pass
        assert info.value.retry_after_s >= 1
    assert served.admitted == 0


def test_too_many_images_is_413_not_503(pipeline: RequestPipeline) -> None:
    served = served_model(max_queue_size=64)
    with pipeline.admit(served, 0.0) as ticket:
        with pytest.raises(TooManyImagesError, match="carries 5 images; at most 4 per request"):
            pipeline.reserve(ticket, 5)
    # The limit never exceeds the model's queue: a request the queue could never hold is a 413 too.
    small = served_model(max_queue_size=3, max_batch_size=1)
    assert pipeline.max_images(small) == 3
    with pipeline.admit(small, 0.0) as ticket, pytest.raises(TooManyImagesError, match="at most 3"):
        pipeline.reserve(ticket, 4)


def test_deadline_counts_from_arrival_and_is_bounded(pipeline: RequestPipeline) -> None:
    served = served_model()
    with pipeline.admit(served, 100.0) as ticket:
        assert pipeline.deadline(ticket, 250.0) == pytest.approx(100.25)
        assert pipeline.deadline(ticket, None) == pytest.approx(100.0 + 30.0)
        for bad in (0.0, -1.0, float("inf"), float("nan"), MAX_TIMEOUT_MS * 2):
            with pytest.raises(InvalidRequestError, match="timeout must be in"):
                pipeline.deadline(ticket, bad)


async def test_tensor_rows_count_as_images(pipeline: RequestPipeline) -> None:
    served = served_model()
    with pipeline.admit(served, 0.0) as ticket, pytest.raises(TooManyImagesError, match="carries 5 images"):
        await pipeline.run_tensor(ticket, np.zeros((5, 3), dtype=np.float32), None)
    with pipeline.admit(served, 0.0) as ticket, pytest.raises(InvalidRequestError, match="holds no images"):
        await pipeline.run_images(ticket, [], None)


async def test_the_deadline_bounds_each_images_wait_and_decode(pipeline: RequestPipeline) -> None:
    """The attack (issue 30): slow decodes ahead of a request made it wait 85 s for a 504 with a
    30 s deadline, checked only when its tensor reached the queue. Now the deadline is checked
    before each image's decode and bounds the wait: 504 at the deadline, the other images never
    decoded (one preprocessing thread here, each decode 1 s)."""
    import threading
    import time

    from resserve.errors import DeadlineExceededError
    from resserve.serving.observers import NO_OBSERVER

    decoded: list[int] = []
    release = threading.Event()

    def slow_decoder(data: bytes) -> tuple[np.ndarray, float, float]:
        decoded.append(len(data))
        release.wait(1.0)
        return np.zeros((3, 4, 4), np.float32), 1.0, 0.0

    served = served_model(max_queue_size=8)
    served.gpu_decoder, served.observers = slow_decoder, NO_OBSERVER
    with pipeline.admit(served, time.monotonic()) as ticket, pytest.raises(DeadlineExceededError,
                                                                           match="deadline passed"):
        await pipeline.run_images(ticket, [b"a", b"bb", b"ccc"], timeout_ms=200)
    release.set()
    assert decoded == [1]  # the first image's decode began; the two behind it never did
    with pipeline.admit(served, time.monotonic() - 1.0) as ticket, pytest.raises(DeadlineExceededError,
                                                                                 match="before the image"):
        await pipeline.run_images(ticket, [b"d"], timeout_ms=500)  # arrived 1 s ago: past before any decode
    assert decoded == [1]


async def test_parsing_takes_at_most_threads_workers_and_leaves_the_rest(pipeline: RequestPipeline) -> None:
    """Costly bodies parse at most ``threads`` at once (issue 30: six 40,000-output bodies held
    asyncio's default executor and another client's infer waited 47 s); what else runs on that
    executor (model loads, inflating) still gets a thread meanwhile."""
    import asyncio
    import threading

    release = threading.Event()
    running: list[int] = []
    most = 0

    def costly_parse(i: int) -> int:
        nonlocal most
        running.append(i)
        most = max(most, len(running))
        release.wait(5.0)
        running.remove(i)
        return i

    parses = [asyncio.create_task(pipeline.parse(costly_parse, i)) for i in range(4)]
    for _ in range(100):
        if running:
            break
        await asyncio.sleep(0.01)
    assert await asyncio.wait_for(asyncio.to_thread(lambda: "loaded"), 2.0) == "loaded"
    assert len(running) == pipeline.threads == 1  # the other three wait for a slot, not a thread
    release.set()
    assert await asyncio.gather(*parses) == [0, 1, 2, 3]
    assert most == 1



async def test_small_images_are_decoded_on_the_loop_and_others_in_the_pool() -> None:
    """A thread hand-off costs more CPU than a small image's decode (issue 33): an image of at most
    ``inline_preprocess_max_pixels`` is decoded on the event loop, any other in the pool. The pool
    is shut down here, so an image sent there fails."""
    import time

    from resserve.contract import PreprocessContract
    from resserve.preprocess import DecodeOptions
    from resserve.serving.observers import NO_OBSERVER
    from resserve.synthetic import synthetic_jpegs

    small, large = synthetic_jpegs(2, ((48, 36), (200, 150)))
    served = served_model()
    served.gpu_decoder, served.observers = None, NO_OBSERVER
    served.contract, served.decode_options = PreprocessContract(resize_size=32, crop_size=32), DecodeOptions()
    await served.queue.start()
    for pixels, inline in ((16384, [True, False]), (0, [False, False])):
        pipeline = RequestPipeline(ServerSettings(preprocess_threads=1, inline_preprocess_max_pixels=pixels),
                                   Metrics(), None)  # type: ignore[arg-type]
        pipeline.close()
        for image, on_loop in zip((small, large), inline, strict=True):
            with pipeline.admit(served, time.monotonic()) as ticket:
                if on_loop:
                    outputs = await pipeline.run_images(ticket, [image], timeout_ms=5000)
                    assert outputs.shape == (1, 3, 32, 32)
                else:
                    with pytest.raises(RuntimeError, match="shutdown"):
                        await pipeline.run_images(ticket, [image], timeout_ms=5000)
    await served.queue.close()

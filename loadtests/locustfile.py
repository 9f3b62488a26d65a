"""Locust load test for resserve, for users who prefer Locust's UI or its distributed mode.

    pip install locust
    resserve loadtest images /tmp/resserve-images            # or any folder of JPEG/PNG/WebP files
    RESSERVE_IMAGES=/tmp/resserve-images RESSERVE_MODEL=resnet50 \\
        locust -f loadtests/locustfile.py --host http://127.0.0.1:8000

Each user posts the next image of the folder to ``/v2/models/<model>/classify`` as fast as
answers come (a closed loop; ``RESSERVE_WAIT_S`` adds think time). A 503 (queue full) is a
failure in Locust's statistics, as it is in `resserve loadtest`. Locust spends far more CPU per
request than `resserve loadtest` (gevent, per-request stats), so on a 2-core machine shared with
the server prefer the built-in generator for numbers you publish.
"""

from __future__ import annotations

import itertools
import os
from pathlib import Path

from locust import FastHttpUser, between, constant, task

from resserve.perf.images import Payload, generate, load_folder

MODEL = os.environ.get("RESSERVE_MODEL", "resnet50")
IMAGES_DIR = os.environ.get("RESSERVE_IMAGES")
WAIT_S = float(os.environ.get("RESSERVE_WAIT_S", "0"))

PAYLOADS: list[Payload] = load_folder(Path(IMAGES_DIR)) if IMAGES_DIR else generate()
_next_payload = itertools.cycle(PAYLOADS)


class ClassifyUser(FastHttpUser):
    """One client of the plain image endpoint."""

    wait_time = constant(0) if WAIT_S == 0 else between(WAIT_S / 2, WAIT_S * 1.5)

    @task
    def classify(self) -> None:
        payload = next(_next_payload)
        # One stats entry per image size: big uploads cost more to decode.
        name = f"/v2/models/{MODEL}/classify [{payload.width}x{payload.height}]"
        with self.client.post(f"/v2/models/{MODEL}/classify", data=payload.body, name=name,
                              headers={"Content-Type": payload.content_type}, catch_response=True) as response:
            if response.status_code != 200:
                response.failure(f"HTTP {response.status_code}")
            elif "predictions" not in response.text:
                response.failure("answer without predictions")

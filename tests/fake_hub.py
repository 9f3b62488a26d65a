"""A Hub on 127.0.0.1 that answers as huggingface.co does for a model file.

The resolve URL redirects (302) to the bytes and carries their sha256 in ``X-Linked-Etag``, as
the Hub does for files stored with Git LFS; tests point ``HF_ENDPOINT`` at it.
"""

from __future__ import annotations

import hashlib
import http.server
import threading
from collections.abc import Iterator
from contextlib import contextmanager
from dataclasses import dataclass, field


@dataclass
class Hub:
    url: str
    files: dict[str, bytes] = field(default_factory=dict)  # repo id -> model.safetensors bytes
    advertised: dict[str, str | None] = field(default_factory=dict)  # repo id -> X-Linked-Etag override
    requests: list[str] = field(default_factory=list)


@contextmanager
def serve_hub() -> Iterator[Hub]:
    """A running Hub; its ``url`` is set once it listens."""
    state = Hub("")

    class Handler(http.server.BaseHTTPRequestHandler):
        def _answer(self, body: bool) -> None:
            state.requests.append(f"{self.command} {self.path}")
            if self.path.startswith("/blobs/"):
                data = next((d for d in state.files.values() if hashlib.sha256(d).hexdigest() == self.path[7:]), None)
                if data is None:
                    self.send_error(404)
                    return
                self.send_response(200)
                self.send_header("Content-Length", str(len(data)))
                self.end_headers()
                if body:
                    self.wfile.write(data)
                return
            repo = self.path.removeprefix("/").removesuffix("/resolve/main/model.safetensors")
            if repo not in state.files:
                self.send_error(404)
                return
            digest = hashlib.sha256(state.files[repo]).hexdigest()
            self.send_response(302)
            self.send_header("Location", f"/blobs/{digest}")
            etag = state.advertised.get(repo, digest)
            if etag is not None:
                self.send_header("X-Linked-Etag", f'"{etag}"')
            self.send_header("Content-Length", "0")
            self.end_headers()

        def do_HEAD(self) -> None:
            self._answer(body=False)

        def do_GET(self) -> None:
            self._answer(body=True)

        def log_message(self, *args: object) -> None:
            pass

    server = http.server.ThreadingHTTPServer(("127.0.0.1", 0), Handler)
    thread = threading.Thread(target=server.serve_forever, daemon=True)
    thread.start()
    state.url = f"http://127.0.0.1:{server.server_address[1]}"
    try:
        yield state
    finally:
        server.shutdown()
        server.server_close()

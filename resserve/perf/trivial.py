"""A trivial HTTP server: the yardstick for the load generator's own cost, and its test target.

``POST /ok`` reads the body and answers 200; ``/delay/{ms}`` answers after a sleep;
``/every/{n}/{code}`` answers ``code`` to every n-th request (200 otherwise), so error accounting
can be checked against a known pattern. Run: ``python -m resserve.perf.trivial --port 8080``.
"""

from __future__ import annotations

import argparse
import asyncio
import itertools

from aiohttp import web


def make_app() -> web.Application:
    counter = itertools.count(1)

    async def ready(_: web.Request) -> web.Response:
        return web.Response(text="ready")

    async def ok(request: web.Request) -> web.Response:
        await request.read()
        return web.json_response({"ok": True})

    async def delay(request: web.Request) -> web.Response:
        await request.read()
        await asyncio.sleep(int(request.match_info["ms"]) / 1000.0)
        return web.json_response({"ok": True})

    async def every(request: web.Request) -> web.Response:
        await request.read()
        n, code = int(request.match_info["n"]), int(request.match_info["code"])
        if next(counter) % n == 0:
            return web.Response(status=code, text="injected", headers={"Retry-After": "1"})
        return web.json_response({"ok": True})

    app = web.Application(client_max_size=64 * 1024 * 1024)
    app.router.add_get("/v2/health/ready", ready)
    app.router.add_post("/ok", ok)
    app.router.add_post("/delay/{ms:\\d+}", delay)
    app.router.add_post("/every/{n:\\d+}/{code:\\d+}", every)
    return app


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--port", type=int, required=True)
    args = parser.parse_args()
    web.run_app(make_app(), host="127.0.0.1", port=args.port, print=None, access_log=None)


if __name__ == "__main__":
    main()

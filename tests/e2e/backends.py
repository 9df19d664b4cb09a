"""Echo model servers for end-to-end tests: real HTTP on 127.0.0.1, each records what reached it."""

from __future__ import annotations

import asyncio
import threading
from dataclasses import dataclass, field

import orjson
from aiohttp import web


@dataclass
class Received:
    port: int
    path: str
    headers: dict[str, str]
    body: bytes


@dataclass
class EchoBackends:
    """N servers in one background event loop. Responses are OpenAI-shaped JSON (or SSE when asked)."""

    ports: list[int]
    received: list[Received] = field(default_factory=list)
    _loop: asyncio.AbstractEventLoop | None = None
    _thread: threading.Thread | None = None
    _runners: list[web.AppRunner] = field(default_factory=list)

    async def _metrics(self, request: web.Request) -> web.StreamResponse:
        """A minimal vLLM-style page so the EPP's scrape plane sees an idle server (not recorded)."""
        page = (
            'vllm:num_requests_waiting{model_name="m"} 0.0\n'
            'vllm:num_requests_running{model_name="m"} 0.0\n'
            'vllm:kv_cache_usage_perc{model_name="m"} 0.0\n'
        )
        return web.Response(text=page, content_type="text/plain")

    async def _handle(self, request: web.Request) -> web.StreamResponse:
        port = request.transport.get_extra_info("sockname")[1] if request.transport else 0
        body = await request.read()
        self.received.append(Received(port, request.path, dict(request.headers), body))
        model = ""
        stream = False
        try:
            document = orjson.loads(body) if body else {}
            model, stream = document.get("model", ""), document.get("stream") is True
        except orjson.JSONDecodeError:
            pass
        usage = {"prompt_tokens": max(len(body) // 4, 1), "completion_tokens": 5, "total_tokens": 0}
        usage["total_tokens"] = usage["prompt_tokens"] + 5
        headers = {"x-backend-port": str(port)}
        if not stream:
            document = {"id": "cmpl-1", "object": "text_completion", "model": model, "backend": port, "usage": usage}
            return web.json_response(document, headers=headers, dumps=lambda d: orjson.dumps(d).decode())
        response = web.StreamResponse(headers={**headers, "content-type": "text/event-stream"})
        await response.prepare(request)
        for i in range(3):
            chunk = {"object": "text_completion", "model": model, "choices": [{"text": f"t{i}"}], "backend": port}
            await response.write(b"data: " + orjson.dumps(chunk) + b"\n\n")
        final = {"object": "text_completion", "model": model, "choices": [], "usage": usage}
        await response.write(b"data: " + orjson.dumps(final) + b"\n\ndata: [DONE]\n\n")
        await response.write_eof()
        return response

    def start(self) -> None:
        ready = threading.Event()

        def run() -> None:
            loop = asyncio.new_event_loop()
            self._loop = loop
            asyncio.set_event_loop(loop)
            app = web.Application()
            app.router.add_get("/metrics", self._metrics)
            app.router.add_route("*", "/{tail:.*}", self._handle)
            for port in self.ports:
                runner = web.AppRunner(app, access_log=None)
                loop.run_until_complete(runner.setup())
                loop.run_until_complete(web.TCPSite(runner, "127.0.0.1", port).start())
                self._runners.append(runner)
            ready.set()
            loop.run_forever()
            for runner in self._runners:
                loop.run_until_complete(runner.cleanup())
            loop.close()

        self._thread = threading.Thread(target=run, daemon=True)
        self._thread.start()
        if not ready.wait(10):
            raise TimeoutError("echo backends did not start")

    def stop(self) -> None:
        if self._loop is not None and self._thread is not None:
            self._loop.call_soon_threadsafe(self._loop.stop)
            self._thread.join(10)

    def ports_hit(self) -> list[int]:
        return [r.port for r in self.received]

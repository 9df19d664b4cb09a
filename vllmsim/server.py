"""One simulated vLLM server: the OpenAI HTTP surface over an Engine stepped on the event loop."""

from __future__ import annotations

import asyncio
import time
import uuid
from collections import deque
from dataclasses import dataclass, field
from typing import Any

import orjson
import xxhash
from aiohttp import web

from vllmsim.engine import CHARS_PER_TOKEN, Engine, EngineConfig, Sequence, tokens_of
from vllmsim.metrics import RequestHistograms, render

SERVED_BY_HEADER = "x-vllm-sim-port"
#: largest request body accepted
MAX_REQUEST_BYTES = 1 << 30
MAX_LAG = 0.05  # seconds of wall clock
ENGINE_TTFTS_KEPT = 200_000  # finished requests whose engine TTFT GET /sim/ttft returns
VOCAB = 128_256  # Llama 3's vocabulary size: /tokenize ids are below it


@dataclass
class _Pending:
    sequence: Sequence
    arrived: float
    ready: asyncio.Event = field(default_factory=asyncio.Event)
    produced: int = 0  # tokens the engine has generated for this request
    finished: bool = False
    scheduled_at: float = 0.0
    first_token_at: float = 0.0
    first_written_at: float = 0.0  # when the chunk with the first token was handed to the connection

    async def next_batch(self, sent: int, interval: int) -> int:
        """Wait until tokens are due to the client; returns how many have been produced (vLLM's
        --stream-interval: the first token goes out at once, later ones in groups of `interval`)."""
        while True:
            if self.finished or self.produced - sent >= (1 if sent == 0 else interval):
                return self.produced
            self.ready.clear()
            await self.ready.wait()


@dataclass
class SimServer:
    model: str
    port: int
    config: EngineConfig
    time_scale: float = 1.0
    adapters: tuple[str, ...] = ()
    host: str = "127.0.0.1"
    stream_interval: int = 1
    engine: Engine = field(init=False)
    histograms: RequestHistograms = field(default_factory=RequestHistograms)
    #: each finished request's time to first token as the engine measured it (arrival to first token, model
    #: seconds), newest last, for GET /sim/ttft; bounded so a long run cannot grow it without end
    engine_ttfts: deque[float] = field(default_factory=lambda: deque(maxlen=ENGINE_TTFTS_KEPT))
    #: the same requests' arrival to the first token's chunk handed to the connection (None: not streamed)
    written_ttfts: deque[float | None] = field(default_factory=lambda: deque(maxlen=ENGINE_TTFTS_KEPT))

    def __post_init__(self) -> None:
        self.engine = Engine(self.config)
        self._pending: dict[int, _Pending] = {}
        self._wake = asyncio.Event()
        self._runner: web.AppRunner | None = None
        self._loop_task: asyncio.Task[None] | None = None
        self._lora_stamp = 0.0
        self._lora_seen: tuple[list[str], list[str]] | None = None

    # --- lifecycle -------------------------------------------------------------------------

    async def start(self) -> None:
        # vLLM's HTTP server takes bodies of any size (a long prompt, images); aiohttp's default cap of 1 MiB
        # answered 413 to them
        app = web.Application(client_max_size=MAX_REQUEST_BYTES)
        app.router.add_post("/v1/completions", self._completions)
        app.router.add_post("/v1/chat/completions", self._chat)
        app.router.add_get("/v1/models", self._models)
        app.router.add_get("/health", self._health)
        app.router.add_post("/tokenize", self._tokenize)
        app.router.add_get("/metrics", self._metrics)
        app.router.add_get("/sim/speed", self._speed)
        app.router.add_post("/sim/speed", self._speed)
        app.router.add_get("/sim/ttft", self._ttfts)
        self._runner = web.AppRunner(app, access_log=None, shutdown_timeout=2.0, handler_cancellation=True)
        await self._runner.setup()
        await web.TCPSite(self._runner, self.host, self.port).start()
        self._loop_task = asyncio.get_running_loop().create_task(self._engine_loop())

    async def stop(self) -> None:
        if self._loop_task is not None:
            self._loop_task.cancel()
        for pending in self._pending.values():  # end in-flight responses instead of waiting on a stopped engine
            pending.finished = True
            pending.ready.set()
        if self._runner is not None:
            await self._runner.cleanup()

    async def _engine_loop(self) -> None:
        """Steps run back to back on a schedule: each ends `duration / time_scale` after the previous one ended
        (not after this loop's own work), so Python overhead and scheduling jitter do not stretch model time.
        A backlog of more than MAX_LAG is forgotten rather than caught up in a burst."""
        engine = self.engine
        clock = time.monotonic()
        while True:
            if not engine.has_work():
                self._wake.clear()
                await self._wake.wait()
                clock = time.monotonic()
            duration = engine.step()
            if engine.first_scheduled:
                scheduled = time.monotonic()
                for sequence in engine.first_scheduled:
                    waiting = self._pending.get(sequence.request_id)
                    if waiting is not None:
                        waiting.scheduled_at = scheduled
            if duration == 0.0:
                self._wake.clear()
                await self._wake.wait()
                clock = time.monotonic()
                continue
            clock = max(clock, time.monotonic() - MAX_LAG) + duration / self.time_scale
            await asyncio.sleep(max(0.0, clock - time.monotonic()))
            produced, finished = engine.finish_step()
            now = time.monotonic()
            for sequence in produced:
                pending = self._pending.get(sequence.request_id)
                if pending is not None:
                    if not pending.first_token_at:
                        pending.first_token_at = now
                    pending.produced += 1
                    pending.ready.set()
            for sequence in finished:
                pending = self._pending.get(sequence.request_id)
                if pending is not None:
                    pending.finished = True
                    pending.ready.set()

    # --- OpenAI API --------------------------------------------------------------------------

    def _check_model(self, body: dict[str, Any]) -> str | web.Response:
        model = body.get("model", self.model)
        if model != self.model and model not in self.adapters:
            error = {
                "object": "error",
                "message": f"The model `{model}` does not exist.",
                "type": "NotFoundError",
                "param": None,
                "code": 404,
            }
            return web.json_response(error, status=404)
        return str(model)

    async def _json_body(self, request: web.Request) -> dict[str, Any] | web.Response:
        """The request's JSON object, or vLLM's 400 validation error for anything else (empty, not JSON)."""
        raw = await request.read()
        try:
            body = orjson.loads(raw)
        except orjson.JSONDecodeError as exc:
            return _bad_request(f"JSON decode error: {exc}")
        if not isinstance(body, dict):
            return _bad_request(f"Input should be a valid dictionary or object, got {type(body).__name__}")
        return body

    async def _completions(self, request: web.Request) -> web.StreamResponse:
        body = await self._json_body(request)
        if isinstance(body, web.Response):
            return body
        return await self._generate(request, body, prompt_text(body), chat=False)

    async def _chat(self, request: web.Request) -> web.StreamResponse:
        body = await self._json_body(request)
        if isinstance(body, web.Response):
            return body
        return await self._generate(request, body, prompt_text(body), chat=True)

    async def _generate(
        self, request: web.Request, body: dict[str, Any], prompt: str, chat: bool
    ) -> web.StreamResponse:
        model = self._check_model(body)
        if isinstance(model, web.Response):
            return model
        max_tokens = int(body.get("max_tokens") or body.get("max_completion_tokens") or 16)
        adapter = model if model != self.model else ""
        arrived = time.monotonic()
        sequence = self.engine.add(prompt, max_tokens, seed=model, adapter=adapter)
        pending = _Pending(sequence, arrived)
        self._pending[sequence.request_id] = pending
        self._wake.set()
        request_id = f"{'chatcmpl' if chat else 'cmpl'}-{uuid.uuid4().hex}"
        created = int(time.time())
        kind = "chat.completion" if chat else "text_completion"
        headers = {SERVED_BY_HEADER: str(self.port)}
        try:
            if body.get("stream"):
                response = web.StreamResponse(headers={**headers, "content-type": "text/event-stream"})
                await response.prepare(request)
                sent = 0
                while True:
                    produced = await pending.next_batch(sent, self.stream_interval)
                    if produced == sent:
                        break
                    text = "".join(f" tok{i}" for i in range(sent, produced))
                    sent = produced
                    choice: dict[str, Any] = {"index": 0, "finish_reason": None}
                    if chat:
                        choice["delta"] = {"content": text}
                    else:
                        choice["text"] = text
                    chunk = {
                        "id": request_id,
                        "object": f"{kind}.chunk" if chat else kind,
                        "created": created,
                        "model": model,
                        "choices": [choice],
                    }
                    if not pending.first_written_at:  # the write hands the bytes over at once, then may wait
                        pending.first_written_at = time.monotonic()
                    await response.write(b"data: " + orjson.dumps(chunk) + b"\n\n")
                options = body.get("stream_options") or {}
                if options.get("include_usage"):
                    final = {
                        "id": request_id,
                        "object": f"{kind}.chunk" if chat else kind,
                        "created": created,
                        "model": model,
                        "choices": [],
                        "usage": self._usage(sequence),
                    }
                    await response.write(b"data: " + orjson.dumps(final) + b"\n\n")
                await response.write(b"data: [DONE]\n\n")
                await response.write_eof()
                self._record(pending)
                return response
            while not pending.finished:
                pending.ready.clear()
                await pending.ready.wait()
            self._record(pending)
            text = "".join(f" tok{i}" for i in range(sequence.generated))
            choice = {"index": 0, "finish_reason": "length"}
            choice.update({"message": {"role": "assistant", "content": text}} if chat else {"text": text})
            document = {
                "id": request_id,
                "object": kind,
                "created": created,
                "model": model,
                "choices": [choice],
                "usage": self._usage(sequence),
            }
            return web.Response(body=orjson.dumps(document), content_type="application/json", headers=headers)
        finally:
            if not sequence.done:
                self.engine.abort(sequence)  # client went away
            self._pending.pop(sequence.request_id, None)

    def _usage(self, sequence: Sequence) -> dict[str, Any]:
        return {
            "prompt_tokens": sequence.prompt_tokens,
            "completion_tokens": sequence.generated,
            "total_tokens": sequence.prompt_tokens + sequence.generated,
            "prompt_tokens_details": {"cached_tokens": sequence.cached},
        }

    def _record(self, pending: _Pending) -> None:
        now = time.monotonic()
        scale = self.time_scale  # histograms are in model time, as the real engine would report
        histograms = self.histograms
        histograms.success += 1
        if pending.first_token_at:
            ttft = (pending.first_token_at - pending.arrived) * scale
            histograms.ttft.observe(ttft)
            self.engine_ttfts.append(ttft)
            written = pending.first_written_at
            self.written_ttfts.append((written - pending.arrived) * scale if written else None)
        histograms.e2e.observe((now - pending.arrived) * scale)
        if pending.scheduled_at:
            histograms.queue.observe((pending.scheduled_at - pending.arrived) * scale)
        histograms.prompt_tokens.observe(pending.sequence.prompt_tokens)
        histograms.generation_tokens.observe(pending.sequence.generated)

    async def _models(self, request: web.Request) -> web.Response:
        models = [
            {
                "id": name,
                "object": "model",
                "owned_by": "vllm",
                "root": self.model,
                "parent": None if name == self.model else self.model,
            }
            for name in (self.model, *self.adapters)
        ]
        return web.json_response({"object": "list", "data": models})

    async def _health(self, request: web.Request) -> web.Response:
        return web.Response(status=200)

    async def _tokenize(self, request: web.Request) -> web.Response:
        """vLLM's /tokenize for a `prompt` or chat `messages`: the token count the engine uses and one id per
        4-character token, derived from its text, so equal prefixes have equal ids (a router that matches
        token prefixes, as vllm-router's cache_aware does, sees what the engine's prefix cache sees)."""
        body = await self._json_body(request)
        if isinstance(body, web.Response):
            return body
        text = prompt_text(body)
        count = tokens_of(text)
        raw = text.encode()
        width = CHARS_PER_TOKEN
        tokens = [xxhash.xxh32_intdigest(raw[i * width : (i + 1) * width]) % VOCAB for i in range(count)]
        return web.json_response({"count": count, "max_model_len": 131072, "tokens": tokens})

    async def _speed(self, request: web.Request) -> web.Response:
        """Simulator admin (not part of vLLM): GET reads this server's speed factor, POST {"factor": F} sets it.
        Steps scheduled from then on last 1/F of their roofline time (F=0.33: three times slower)."""
        if request.method == "POST":
            body = await self._json_body(request)
            if isinstance(body, web.Response):
                return body
            factor = body.get("factor")
            if isinstance(factor, bool) or not isinstance(factor, int | float):
                return _bad_request("factor must be a number")
            try:
                self.engine.set_speed(float(factor))
            except ValueError as exc:
                return _bad_request(str(exc))
        return web.json_response({"factor": self.engine.speed})

    async def _ttfts(self, request: web.Request) -> web.Response:
        """Simulator admin (not part of vLLM): every finished request's TTFT as this engine saw it, from its arrival
        at the server to its first token (`ttft`), and to that token's chunk handed to the connection (`written`,
        null for a request that did not stream), in model seconds, oldest first, the last ENGINE_TTFTS_KEPT. A
        client's TTFT minus `written` is what lies between it and the server: the router, the gateway, the way back."""
        document = {"ttft": list(self.engine_ttfts), "written": list(self.written_ttfts)}
        return web.Response(body=orjson.dumps(document), content_type="application/json")

    async def _metrics(self, request: web.Request) -> web.Response:
        engine = self.engine
        lora = None
        if self.adapters:
            running, waiting = sorted(engine.active_adapters()), sorted(engine.waiting_adapters())
            if (running, waiting) != self._lora_seen:
                self._lora_seen, self._lora_stamp = (running, waiting), time.time()
            lora = (self.config.max_loras, running, waiting, self._lora_stamp)
        page = render(
            self.model,
            len(engine.waiting),
            len(engine.running),
            engine.kv_usage,
            self.config.block_size,
            self.config.num_gpu_blocks,
            engine.prefix_queries,
            engine.prefix_hits,
            engine.prompt_tokens_total,
            engine.generation_tokens_total,
            engine.preemptions,
            self.histograms,
            lora,
        )
        return web.Response(text=page, content_type="text/plain")


def prompt_text(body: dict[str, Any]) -> str:
    """The text the engine sees: a completion's `prompt`, or chat `messages` rendered as `<|role|>content`."""
    if "messages" in body:
        messages = body.get("messages") or []
        return "".join(f"<|{m.get('role', '')}|>{m.get('content', '')}" for m in messages if isinstance(m, dict))
    prompt = body.get("prompt", "")
    if isinstance(prompt, list):
        prompt = " ".join(map(str, prompt))
    return str(prompt)


def _bad_request(message: str) -> web.Response:
    error = {"object": "error", "message": message, "type": "BadRequestError", "param": None, "code": 400}
    return web.json_response(error, status=400)

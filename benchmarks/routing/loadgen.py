"""Open-loop (Poisson) load generator over HTTP: arrivals do not wait for earlier responses.

Each request streams (SSE); TTFT is the time to the first chunk carrying generated text, end-to-end is
the time to the end of the stream. The serving port is read from the simulator's response header.
Bounded: a fixed list of requests, a per-request timeout and an overall deadline.
"""

from __future__ import annotations

import asyncio
import random
import time
from dataclasses import dataclass

import aiohttp
import orjson
from workloads import Request

SERVED_BY_HEADER = "x-vllm-sim-port"


@dataclass
class Result:
    group: str
    ok: bool
    status: int
    ttft: float
    e2e: float
    served_by: str
    prompt_tokens: int
    cached_tokens: int
    completion_tokens: int


async def _one(session: aiohttp.ClientSession, url: str, request: Request, timeout: float) -> Result:
    started = time.perf_counter()
    ttft = float("nan")
    usage: dict[str, object] = {}
    try:
        async with session.post(
            url + request.path,
            data=orjson.dumps(request.body),
            headers={"content-type": "application/json", **request.headers},
            timeout=aiohttp.ClientTimeout(total=timeout),
        ) as response:
            served = response.headers.get(SERVED_BY_HEADER, "?")
            if response.status != 200:
                await response.read()
                return Result(
                    request.group, False, response.status, ttft, time.perf_counter() - started, served, 0, 0, 0
                )
            buffer = b""
            async for chunk in response.content.iter_any():
                buffer += chunk
                while b"\n\n" in buffer:
                    event, buffer = buffer.split(b"\n\n", 1)
                    if not event.startswith(b"data: ") or event == b"data: [DONE]":
                        continue
                    document = orjson.loads(event[6:])
                    if ttft != ttft and document.get("choices"):
                        ttft = time.perf_counter() - started
                    if document.get("usage"):
                        usage = document["usage"]
            details = usage.get("prompt_tokens_details") or {}
            return Result(
                request.group,
                True,
                200,
                ttft,
                time.perf_counter() - started,
                served,
                int(usage.get("prompt_tokens", 0)),  # type: ignore[call-overload]
                int(details.get("cached_tokens", 0)) if isinstance(details, dict) else 0,
                int(usage.get("completion_tokens", 0)),  # type: ignore[call-overload]
            )
    except (aiohttp.ClientError, TimeoutError):
        return Result(request.group, False, 0, ttft, time.perf_counter() - started, "-", 0, 0, 0)


async def run_poisson(
    url: str, requests: list[Request], rate: float, seed: int = 7, timeout: float = 120.0, deadline: float = 900.0
) -> tuple[list[Result], float]:
    """Send `requests` with exponential inter-arrival times (mean 1/rate). Returns results and wall time."""
    rng = random.Random(seed)
    connector = aiohttp.TCPConnector(limit=0, force_close=False)
    async with aiohttp.ClientSession(connector=connector, trust_env=False) as session:
        started = time.perf_counter()
        tasks = []
        next_at = 0.0
        for request in requests:
            delay = next_at - (time.perf_counter() - started)
            if delay > 0:
                await asyncio.sleep(delay)
            if time.perf_counter() - started > deadline:
                break
            tasks.append(asyncio.create_task(_one(session, url, request, timeout)))
            next_at += rng.expovariate(rate)
        results = await asyncio.gather(*tasks)
        return list(results), time.perf_counter() - started

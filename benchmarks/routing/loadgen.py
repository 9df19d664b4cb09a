"""Open-loop load generator over HTTP (Poisson or on/off bursts): arrivals do not wait for earlier responses.

Each request streams (SSE); TTFT is the time from sending to the first chunk carrying generated text,
end-to-end the time to the end of the stream. The serving port is read from the simulator's response
header. A request with `after` (a chat user's next round) is sent at its Poisson time or when that earlier
request has finished, whichever is later. The generator records when each request was due and when it was
actually sent, so the report can show whether the Poisson schedule was kept. Bounded: a fixed list of
requests, a per-request timeout and an overall deadline.
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
    due: float  # Poisson arrival time, seconds from the start
    sent: float  # when it was actually sent (later than `due` when it waited for `after` or the loop lagged)
    ttft: float
    e2e: float
    served_by: str
    prompt_tokens: int = 0
    cached_tokens: int = 0
    completion_tokens: int = 0
    waited_for_dependency: bool = False


async def _stream(session: aiohttp.ClientSession, url: str, request: Request, timeout: float, result: Result) -> None:
    started = time.perf_counter()
    usage: dict[str, object] = {}
    try:
        async with session.post(
            url + request.path,
            data=orjson.dumps(request.body),
            headers={"content-type": "application/json", **request.headers},
            timeout=aiohttp.ClientTimeout(total=timeout),
        ) as response:
            result.status = response.status
            result.served_by = response.headers.get(SERVED_BY_HEADER, "?")
            if response.status != 200:
                await response.read()
                result.e2e = time.perf_counter() - started
                return
            buffer = b""
            async for chunk in response.content.iter_any():
                buffer += chunk
                while b"\n\n" in buffer:
                    event, buffer = buffer.split(b"\n\n", 1)
                    if not event.startswith(b"data: ") or event == b"data: [DONE]":
                        continue
                    document = orjson.loads(event[6:])
                    if result.ttft != result.ttft and document.get("choices"):
                        result.ttft = time.perf_counter() - started
                    if document.get("usage"):
                        usage = document["usage"]
        details = usage.get("prompt_tokens_details") or {}
        result.prompt_tokens = int(usage.get("prompt_tokens", 0))  # type: ignore[call-overload]
        result.cached_tokens = int(details.get("cached_tokens", 0)) if isinstance(details, dict) else 0
        result.completion_tokens = int(usage.get("completion_tokens", 0))  # type: ignore[call-overload]
        result.ok = result.completion_tokens > 0
    except (aiohttp.ClientError, TimeoutError):
        result.status = 0
    result.e2e = time.perf_counter() - started


def poisson_arrivals(count: int, rate: float, seed: int = 7) -> list[float]:
    """Arrival times (seconds from the start) of a Poisson process of `rate` per second; the first at 0."""
    rng = random.Random(seed)
    times, due = [], 0.0
    for _ in range(count):
        times.append(due)
        due += rng.expovariate(rate)
    return times


def on_off_arrivals(count: int, rate: float, on: float, off: float, seed: int = 7) -> list[float]:
    """Bursts: Poisson at rate x (on + off) / on during `on` seconds, nothing for the next `off` seconds, and
    so on; the mean rate over whole periods is `rate`. The first arrival is at 0."""
    burst = rate * (on + off) / on
    busy = poisson_arrivals(count, burst, seed)  # arrival times counted in "on" time only
    return [t + (t // on) * off for t in busy]


async def run_poisson(
    url: str, requests: list[Request], rate: float, seed: int = 7, timeout: float = 240.0, deadline: float = 600.0
) -> tuple[list[Result], float]:
    """Send `requests` with exponential inter-arrival times (mean 1/rate, wall-clock seconds)."""
    return await run_schedule(url, requests, poisson_arrivals(len(requests), rate, seed), timeout, deadline)


async def run_schedule(
    url: str, requests: list[Request], arrivals: list[float], timeout: float = 240.0, deadline: float = 600.0
) -> tuple[list[Result], float]:
    """Send request i at arrivals[i] (wall-clock seconds from the start, non-decreasing), open loop.
    Returns one result per request sent and the wall time until the last response."""
    connector = aiohttp.TCPConnector(limit=0, force_close=False)
    results: list[Result] = []
    done: list[asyncio.Event] = []
    async with aiohttp.ClientSession(connector=connector, trust_env=False) as session:
        started = time.perf_counter()

        async def one(index: int, request: Request) -> None:
            result = results[index]
            if request.after is not None and not done[request.after].is_set():
                result.waited_for_dependency = True
                await done[request.after].wait()
            result.sent = time.perf_counter() - started
            try:
                await _stream(session, url, request, timeout, result)
            finally:
                done[index].set()

        tasks = []
        for index, (request, due) in enumerate(zip(requests, arrivals, strict=True)):
            delay = due - (time.perf_counter() - started)
            if delay > 0:
                await asyncio.sleep(delay)
            if time.perf_counter() - started > deadline:
                break
            results.append(Result(request.group, False, 0, due, float("nan"), float("nan"), float("nan"), "-"))
            done.append(asyncio.Event())
            tasks.append(asyncio.create_task(one(index, request)))
        await asyncio.wait_for(asyncio.gather(*tasks), timeout=deadline + timeout)
        return results, time.perf_counter() - started

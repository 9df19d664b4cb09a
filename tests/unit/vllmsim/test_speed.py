"""Per-server speed factors: --speeds at start, POST /sim/speed at run time; every step lasts 1/speed as long."""

from __future__ import annotations

import argparse
import time

import aiohttp
import orjson
import pytest

from epp.devstack.envoy import free_port
from vllmsim.cli import build_parser, parse_speeds
from vllmsim.engine import Engine, EngineConfig
from vllmsim.server import SimServer
from vllmsim.virtual import Job, closed_loop

MODEL = "m"


def step_durations(config: EngineConfig, prompt_tokens: int, max_tokens: int) -> list[float]:
    engine = Engine(config)
    engine.add("abcd" * prompt_tokens, max_tokens, seed=MODEL)
    durations = []
    while engine.has_work():
        durations.append(engine.step())
        engine.finish_step()
    return durations


def test_a_slower_server_takes_one_over_speed_as_long_for_every_step() -> None:
    normal = step_durations(EngineConfig(), 3000, 20)
    half = step_durations(EngineConfig(speed=0.5), 3000, 20)
    assert len(normal) == len(half) > 20  # the same schedule: prefill chunks, then decodes
    assert half == pytest.approx([d * 2 for d in normal])


def test_virtual_time_drain_scales_with_speed() -> None:
    jobs = [Job("abcd" * 1000 + f"{i:04d}", 32) for i in range(16)]
    normal = closed_loop(EngineConfig(), jobs, concurrency=16)
    slow = closed_loop(EngineConfig(speed=0.25), jobs, concurrency=16)
    assert slow.steps == normal.steps
    assert slow.duration == pytest.approx(4 * normal.duration)


def test_speed_changes_at_run_time_from_the_next_step() -> None:
    engine = Engine(EngineConfig())
    engine.add("abcd" * 100, 10, seed=MODEL)
    first = engine.step()
    engine.finish_step()
    engine.set_speed(1 / 3)
    second = engine.step()  # a decode step: memory-bound, about the weight read
    assert second == pytest.approx(3 * (EngineConfig().weights_read_s + 101 * EngineConfig().kv_read_s_per_token))
    assert first < second
    for bad in (0.0, -1.0, float("inf"), float("nan")):
        with pytest.raises(ValueError):
            engine.set_speed(bad)
    with pytest.raises(ValueError):
        Engine(EngineConfig(speed=0.0))


def test_cli_speeds_one_per_server_or_one_for_all() -> None:
    assert parse_speeds("1,1,0.5,0.5") == (1.0, 1.0, 0.5, 0.5)
    assert build_parser().parse_args(["--speeds", "0.5"]).speeds == (0.5,)
    for bad in ("1,x", "0", "1,-2"):
        with pytest.raises(argparse.ArgumentTypeError):
            parse_speeds(bad)


async def _timed_request(session: aiohttp.ClientSession, port: int, text: str) -> float:
    body = {"model": MODEL, "prompt": text * 1024, "max_tokens": 32}
    started = time.perf_counter()
    async with session.post(f"http://127.0.0.1:{port}/v1/completions", data=orjson.dumps(body)) as response:
        assert response.status == 200
        await response.read()
    return time.perf_counter() - started


async def test_post_sim_speed_slows_a_running_server() -> None:
    # model time of one request: a 1,024-token prefill (77 ms) + 31 decodes (13.3 ms) ≈ 0.5 s; x5 faster, so
    # that the 4x slowdown (0.1 → 0.4 s) stands well clear of a busy machine's scheduling delays
    server = SimServer(MODEL, free_port(), EngineConfig(), time_scale=5.0)
    await server.start()
    base = f"http://127.0.0.1:{server.port}/sim/speed"
    try:
        async with aiohttp.ClientSession(trust_env=False) as session:
            async with session.get(base) as response:
                assert await response.json() == {"factor": 1.0}
            normal = min([await _timed_request(session, server.port, text) for text in ("abcd", "ijkl")])
            async with session.post(base, data=orjson.dumps({"factor": 0.25})) as response:
                assert response.status == 200
                assert await response.json() == {"factor": 0.25}
            assert server.engine.speed == 0.25
            slow = min([await _timed_request(session, server.port, text) for text in ("efgh", "mnop")])  # no hit
            assert slow > 2 * normal, (normal, slow)  # 4x in model time; wall-clock noise allowed for
            for bad in (b'{"factor": 0}', b'{"factor": "fast"}', b'{"factor": true}', b"[0.5]", b"{}"):
                async with session.post(base, data=bad) as response:
                    assert response.status == 400, bad
            assert server.engine.speed == 0.25
    finally:
        await server.stop()

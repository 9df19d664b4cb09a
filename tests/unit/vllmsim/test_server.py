"""The HTTP server over the engine: streamed chunks honour --stream-interval, usage reports cached tokens."""

from __future__ import annotations

import aiohttp
import orjson

from epp.devstack.envoy import free_port
from vllmsim.engine import EngineConfig
from vllmsim.server import SimServer

MODEL = "m"


async def stream(port: int, prompt: str, max_tokens: int) -> tuple[list[str], dict[str, object]]:
    body = {"model": MODEL, "prompt": prompt, "max_tokens": max_tokens, "stream": True}
    body["stream_options"] = {"include_usage": True}
    texts: list[str] = []
    usage: dict[str, object] = {}
    async with (
        aiohttp.ClientSession(trust_env=False) as session,
        session.post(f"http://127.0.0.1:{port}/v1/completions", data=orjson.dumps(body)) as response,
    ):
        async for line in response.content:
            if line.startswith(b"data: {"):
                document = orjson.loads(line[6:])
                if document["choices"]:
                    texts.append(document["choices"][0]["text"])
                usage = document.get("usage") or usage
    return texts, usage


async def test_stream_interval_groups_tokens_after_the_first() -> None:
    server = SimServer(MODEL, free_port(), EngineConfig(), time_scale=200.0, stream_interval=4)
    await server.start()
    try:
        texts, usage = await stream(server.port, "hello " * 100, 10)
        assert [t.count(" tok") for t in texts] == [1, 4, 4, 1]
        assert usage["completion_tokens"] == 10
        _, usage = await stream(server.port, "hello " * 100, 2)
        details = usage["prompt_tokens_details"]
        assert isinstance(details, dict) and details["cached_tokens"] == 144  # 9 full blocks of the 150 tokens
    finally:
        await server.stop()


async def test_a_body_that_is_not_a_json_object_is_a_400_as_in_vllm() -> None:
    server = SimServer(MODEL, free_port(), EngineConfig(), time_scale=200.0)
    await server.start()
    try:
        async with aiohttp.ClientSession(trust_env=False) as session:
            for path in ("/v1/completions", "/v1/chat/completions"):
                for raw in (b"", b"{not json", b"[1, 2]"):
                    async with session.post(f"http://127.0.0.1:{server.port}{path}", data=raw) as response:
                        assert response.status == 400, (path, raw)
                        error = await response.json()
                        assert (error["object"], error["type"], error["code"]) == ("error", "BadRequestError", 400)
    finally:
        await server.stop()


async def test_tokenize_ids_follow_the_text_and_count_as_the_engine() -> None:
    server = SimServer(MODEL, free_port(), EngineConfig(), time_scale=200.0)
    await server.start()
    url = f"http://127.0.0.1:{server.port}/tokenize"
    try:
        async with aiohttp.ClientSession(trust_env=False) as session:

            async def tokenize(body: dict[str, object]) -> dict[str, object]:
                async with session.post(url, data=orjson.dumps(body)) as response:
                    assert response.status == 200
                    document: dict[str, object] = await response.json()
                    return document

            shared, other = await tokenize({"prompt": "abcd" * 8 + "wxyz"}), await tokenize({"prompt": "abcd" * 8})
            assert shared["count"] == 9 and other["count"] == 8
            assert isinstance(shared["tokens"], list) and isinstance(other["tokens"], list)
            assert shared["tokens"][:8] == other["tokens"] and len(set(shared["tokens"])) == 2
            messages = [
                {"role": "system", "content": "You are a helpful assistant."},
                {"role": "user", "content": "hi"},
            ]
            chat = await tokenize({"messages": messages})
            rendered = "<|system|>You are a helpful assistant.<|user|>hi"
            assert chat == await tokenize({"prompt": rendered})
            assert chat["count"] == len(rendered) // 4
            assert (
                chat["tokens"]
                != (await tokenize({"messages": [*messages[:1], {"role": "user", "content": "yo"}]}))["tokens"]
            )
    finally:
        await server.stop()


async def test_a_body_over_one_mib_is_served_as_vllm_does() -> None:
    # aiohttp's default 1 MiB request cap answered 413 to long prompts that vLLM takes
    server = SimServer(MODEL, free_port(), EngineConfig(), time_scale=200.0)
    await server.start()
    try:
        body = orjson.dumps({"model": MODEL, "prompt": "hi", "max_tokens": 1, "user": "x" * 2_200_000})
        assert len(body) > 2 * 1024 * 1024
        async with (
            aiohttp.ClientSession(trust_env=False) as session,
            session.post(f"http://127.0.0.1:{server.port}/v1/completions", data=body) as response,
        ):
            assert response.status == 200, await response.text()
    finally:
        await server.stop()


async def test_sim_ttft_lists_each_finished_requests_engine_ttft_in_model_time() -> None:
    # one request alone: a 1,024-token prefill is its whole TTFT (77 ms of model time); a cached second one is faster
    # (time scale 2, not 20: a stall of the machine is scaled up by it, and this compares two short times)
    server = SimServer(MODEL, free_port(), EngineConfig(), time_scale=2.0)
    await server.start()
    try:
        async with aiohttp.ClientSession(trust_env=False) as session:
            url = f"http://127.0.0.1:{server.port}/sim/ttft"
            async with session.get(url) as response:
                assert await response.json() == {"ttft": [], "written": []}
            await stream(server.port, "abcd" * 1024, 4)
            await stream(server.port, "abcd" * 1024, 4)
            async with session.get(url) as response:
                document = await response.json()
        cold, warm = document["ttft"]
        assert 0.05 < cold < 0.5, cold  # model time: the wall clock's share scaled back up by the time scale
        assert warm < cold, (cold, warm)
        assert [w >= t for w, t in zip(document["written"], document["ttft"], strict=True)] == [True, True]
        assert sum(server.histograms.ttft.counts) == 2  # the same requests as vllm:time_to_first_token_seconds
    finally:
        await server.stop()

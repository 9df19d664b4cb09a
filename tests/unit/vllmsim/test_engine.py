"""The engine model: batching bounds, chunked prefill, prefix caching, KV pressure, LoRA slots."""

from __future__ import annotations

from vllmsim.engine import Engine, EngineConfig

PROMPT = "abcd" * 1000  # 1,000 tokens


def run(engine: Engine, limit: int = 10_000) -> float:
    elapsed = 0.0
    for _ in range(limit):
        if not engine.has_work():
            break
        elapsed += engine.step()
        engine.finish_step()
    return elapsed


def time_to_first_token(engine: Engine, prompt: str) -> float:
    sequence = engine.add(prompt, 1, seed="m")
    return run(engine) if sequence else 0.0


def test_prefill_time_grows_with_uncached_prompt_tokens() -> None:
    short = time_to_first_token(Engine(EngineConfig()), "abcd" * 100)
    long = time_to_first_token(Engine(EngineConfig()), "abcd" * 4000)
    assert long > 3 * short


def test_repeated_prompt_hits_the_prefix_cache_and_is_faster() -> None:
    engine = Engine(EngineConfig())
    cold = time_to_first_token(engine, PROMPT)
    warm = time_to_first_token(engine, PROMPT)
    assert engine.prefix_hits == 992  # 62 full blocks of 16 (the last partial block is recomputed)
    assert warm < cold / 5


def test_chunked_prefill_respects_the_token_budget() -> None:
    engine = Engine(EngineConfig(max_num_batched_tokens=256))
    engine.add(PROMPT, 1, seed="m")
    engine.step()
    engine.finish_step()
    assert engine.running[0].computed == 256


def test_waiting_when_over_max_num_seqs() -> None:
    engine = Engine(EngineConfig(max_num_seqs=2))
    for i in range(5):
        engine.add(f"{i}" * 100, 50, seed="m")
    engine.step()
    assert (len(engine.running), len(engine.waiting)) == (2, 3)


def test_kv_full_keeps_requests_waiting() -> None:
    engine = Engine(EngineConfig(num_gpu_blocks=100))
    engine.add("a" * 4 * 1000, 10, seed="m")  # 63 blocks
    engine.add("b" * 4 * 1000, 10, seed="m")  # would need 63 more
    engine.step()
    assert len(engine.running) == 1 and len(engine.waiting) == 1
    assert 0.6 < engine.kv_usage <= 1.0
    run(engine)
    assert not engine.has_work()


def test_lora_slots_bound_distinct_adapters_in_the_batch() -> None:
    engine = Engine(EngineConfig(max_loras=1))
    engine.add("x" * 400, 20, seed="a", adapter="a")
    engine.add("y" * 400, 20, seed="b", adapter="b")
    engine.step()
    assert engine.active_adapters() == {"a"} and engine.waiting_adapters() == {"b"}


def test_decode_step_time_grows_with_batch_size() -> None:
    small, large = Engine(EngineConfig()), Engine(EngineConfig())
    small.add("x" * 40, 100, seed="m")
    for i in range(64):
        large.add(f"{i:04d}" * 10, 100, seed="m")
    for engine in (small, large):
        engine.step()
        engine.finish_step()
    assert large.step() > small.step()

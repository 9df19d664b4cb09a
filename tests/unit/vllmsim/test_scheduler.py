"""vLLM V1 scheduling rules in the engine model: one token budget, per-step KV allocation, prefix blocks
shared as soon as they are computed, LoRA skip, preemption with recompute, the roofline step time."""

from __future__ import annotations

import random

from vllmsim.engine import Engine, EngineConfig


def drain(engine: Engine, limit: int = 100_000) -> int:
    steps = 0
    while engine.has_work() and steps < limit:
        assert engine.step() > 0
        engine.finish_step()
        steps += 1
    return steps


def text(tag: str, tokens: int) -> str:
    return (tag * 4 * tokens)[: 4 * tokens]


def test_token_budget_bounds_admission_so_the_queue_is_visible() -> None:
    engine = Engine(EngineConfig(max_num_batched_tokens=2048))
    for i in range(5):
        engine.add(text(str(i), 1024), 8, seed="m")
    engine.step()
    # two 1024-token prompts fill the budget; the rest wait (vLLM reports them as num_requests_waiting)
    assert (len(engine.running), len(engine.waiting)) == (2, 3)


def test_a_long_prompt_is_chunked_across_steps() -> None:
    engine = Engine(EngineConfig(max_num_batched_tokens=512))
    sequence = engine.add(text("a", 1300), 2, seed="m")
    computed = []
    for _ in range(3):
        engine.step()
        engine.finish_step()
        computed.append(sequence.computed)
    assert computed == [512, 1024, 1300] and sequence.generated == 1


def test_prefix_blocks_are_shared_while_the_first_request_still_runs() -> None:
    engine = Engine(EngineConfig())
    prefix = text("s", 960)  # 60 full blocks
    first = engine.add(prefix + text("q", 40), 500, seed="m")
    engine.step()
    engine.finish_step()  # first has prefilled and is now decoding
    second = engine.add(prefix + text("r", 40), 4, seed="m")
    engine.step()
    assert not first.done and second.cached == 960
    assert engine.prefix_hits == 960


def test_kv_usage_counts_only_referenced_blocks_and_cached_blocks_are_reused() -> None:
    engine = Engine(EngineConfig(num_gpu_blocks=200))
    engine.add(text("a", 1600), 1, seed="m")  # 100 blocks
    drain(engine)
    assert engine.kv_usage == 0.0 and len(engine.evictable) == 100
    again = engine.add(text("a", 1600), 1, seed="m")
    drain(engine)
    assert again.cached == 99 * 16  # the last block is always recomputed


def test_eviction_drops_the_least_recently_used_and_tail_blocks_first() -> None:
    engine = Engine(EngineConfig(num_gpu_blocks=120))
    engine.add(text("a", 1600), 1, seed="m")
    drain(engine)
    engine.add(text("b", 800), 1, seed="m")  # needs 50 blocks: 30 of a's cached blocks must go
    drain(engine)
    again = engine.add(text("a", 1600), 1, seed="m")
    drain(engine)
    # a's tail blocks were evicted first, so its head is still cached
    assert again.cached == 70 * 16


def test_a_second_adapter_waits_without_blocking_requests_for_the_loaded_one() -> None:
    engine = Engine(EngineConfig(max_loras=1))
    engine.add("x" * 400, 20, seed="a", adapter="a")
    engine.add("y" * 400, 20, seed="b", adapter="b")
    engine.add("z" * 400, 20, seed="a", adapter="a")
    engine.step()
    assert engine.active_adapters() == {"a"} and len(engine.running) == 2
    assert engine.waiting_adapters() == {"b"}
    drain(engine)
    assert not engine.has_work()


def test_preemption_recomputes_and_every_request_finishes() -> None:
    engine = Engine(EngineConfig(num_gpu_blocks=40, max_num_batched_tokens=4096))
    sequences = [engine.add(text(str(i), 200), 150, seed="m") for i in range(3)]  # 3 x 22 blocks at the end
    drain(engine)
    assert engine.preemptions > 0
    assert all(s.done and s.generated == 150 for s in sequences)
    assert engine.used_blocks == 0 and engine.private_blocks == 0


def test_accounting_stays_consistent_under_random_traffic() -> None:
    rng = random.Random(5)
    config = EngineConfig(num_gpu_blocks=300, max_num_seqs=16, max_num_batched_tokens=1024)
    engine = Engine(config)
    prefixes = [text(chr(97 + i), 320) for i in range(6)]
    live = []
    for _ in range(400):
        if rng.random() < 0.3:
            live.append(engine.add(rng.choice(prefixes) + text(str(rng.random()), rng.randrange(1, 300)), 20, "m"))
        if rng.random() < 0.05 and live:
            engine.abort(live.pop(rng.randrange(len(live))))
        if engine.has_work():
            engine.step()
            engine.finish_step()
        assert engine.used_blocks + len(engine.evictable) <= config.num_gpu_blocks
        assert sum(s.held_blocks for s in engine.running) >= engine.private_blocks
    drain(engine)
    assert engine.used_blocks == 0


def test_a_decode_step_is_memory_bound_and_a_long_prefill_compute_bound() -> None:
    config = EngineConfig()
    engine = Engine(config)
    engine.add(text("a", 1000), 3, seed="m")
    prefill = engine.step()
    engine.finish_step()
    decode = engine.step()
    assert abs(decode - (config.weights_read_s + config.kv_read_s_per_token * 1001)) < 1e-12
    pairs = 1000 * 1001 // 2
    assert abs(prefill - config.compute_s_per_token * (1000 + config.attention_pair_ratio * pairs)) < 1e-12


def test_decodes_ride_along_with_a_prefill_for_free() -> None:
    """Roofline: a step costs the larger of memory and compute time, not their sum."""
    config = EngineConfig()
    alone, mixed = Engine(config), Engine(config)
    alone.add(text("p", 1500), 1, seed="m")
    for i in range(8):
        mixed.add(text(str(i), 16), 100, seed="m")
    mixed.step()
    mixed.finish_step()
    mixed.add(text("p", 1500), 1, seed="m")
    assert mixed.step() < alone.step() * 1.02

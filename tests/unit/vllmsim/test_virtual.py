"""The virtual-time drivers used by the calibration sweep and the routing benchmark's capacity estimate."""

from __future__ import annotations

from vllmsim.engine import EngineConfig
from vllmsim.virtual import Job, closed_loop, open_loop


def test_closed_loop_at_concurrency_one_runs_requests_back_to_back() -> None:
    config = EngineConfig()
    jobs = [Job(f"{i:04d}" * 256, 8) for i in range(3)]  # 256 tokens each
    run = closed_loop(config, jobs, concurrency=1)
    assert len(run.outcomes) == 3
    first, second = run.outcomes[0], run.outcomes[1]
    assert second.sent == first.finished
    decode = config.weights_read_s + config.kv_read_s_per_token * 257
    assert abs(first.tpot - decode) < 2 * config.kv_read_s_per_token * 8
    assert run.output_tokens_per_s == 24 / run.duration


def test_open_loop_idles_until_the_next_arrival() -> None:
    config = EngineConfig()
    run = open_loop(config, [(0.0, Job("a" * 400, 2)), (10.0, Job("b" * 400, 2))])
    late = next(o for o in run.outcomes if o.job.prompt.startswith("b"))
    assert late.sent == 10.0 and late.ttft < 0.1
    assert 10.0 < run.duration < 10.2

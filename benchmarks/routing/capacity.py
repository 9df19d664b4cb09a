"""In-process estimate of what a cache-blind (random) fleet can serve, from the simulator's own engine.

Each request goes to a uniformly random server; one server's share is replayed against an in-process
Engine in virtual time with every request queued at once, and the drain throughput times the fleet size is
the fleet's capacity under random routing (model requests per second). The benchmark offers a stated
multiple of it, so "near saturation" means the same thing whatever the engine's constants are.
"""

from __future__ import annotations

import random

from workloads import Request

from vllmsim.engine import EngineConfig
from vllmsim.virtual import Job, closed_loop


def to_job(request: Request, base_model: str) -> Job:
    model = str(request.body["model"])
    adapter = "" if model == base_model else model
    return Job(request.prompt_text, int(request.body["max_tokens"]), seed=model, adapter=adapter)


def random_fleet_capacity(
    requests: list[Request], servers: int, config: EngineConfig, base_model: str, seed: int = 11
) -> float:
    rng = random.Random(seed)
    share = [to_job(r, base_model) for r in requests if rng.randrange(servers) == 0]
    if not share:
        return 0.0
    run = closed_loop(config, share, concurrency=len(share))
    return servers * len(run.outcomes) / run.duration if run.duration else 0.0

"""In-process estimate of what a fleet can serve, from the simulator's own engine.

Each request goes to a uniformly random server; one server's share is replayed against an in-process
Engine in virtual time with every request queued at once, and its drain throughput is that server's
capacity. The fleet's capacity is the sum over its servers, each at its own speed (a server at speed 0.5
drains the same share in exactly twice the time). With equal speeds this is the random fleet's capacity,
the fleet size times one server's; with mixed speeds it is what the fleet serves when every server is kept
busy, and more than random routing can reach (random saturates the slowest server first, at fleet size x the
slowest server's capacity). The benchmark offers a stated multiple of it, so "near saturation" means the
same thing whatever the engine's constants are.
"""

from __future__ import annotations

import random
from dataclasses import replace

from workloads import Request

from vllmsim.engine import EngineConfig
from vllmsim.virtual import Job, closed_loop


def to_job(request: Request, base_model: str) -> Job:
    model = str(request.body["model"])
    adapter = "" if model == base_model else model
    return Job(request.prompt_text, int(request.body["max_tokens"]), seed=model, adapter=adapter)


def fleet_capacity(
    requests: list[Request], speeds: list[float], config: EngineConfig, base_model: str, seed: int = 11
) -> float:
    """Requests per model second that `len(speeds)` servers of `config`, at these speeds, drain."""
    servers = len(speeds)
    rng = random.Random(seed)
    share = [to_job(r, base_model) for r in requests if rng.randrange(servers) == 0]
    if not share:
        return 0.0
    per_speed: dict[float, float] = {}
    for speed in set(speeds):
        run = closed_loop(replace(config, speed=speed), share, concurrency=len(share))
        per_speed[speed] = len(run.outcomes) / run.duration if run.duration else 0.0
    return sum(per_speed[s] for s in speeds)


def random_fleet_capacity(
    requests: list[Request], servers: int, config: EngineConfig, base_model: str, seed: int = 11
) -> float:
    return fleet_capacity(requests, [config.speed] * servers, config, base_model, seed)

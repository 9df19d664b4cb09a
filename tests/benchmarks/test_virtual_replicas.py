"""The virtual fleet's replicas: two sharing replicas keep a shared-prefix workload's groups together as one replica
does, two independent ones split them (each learns its own prefix index), and every request is answered."""

from __future__ import annotations

import random
import sys
from pathlib import Path

ROUTING = Path(__file__).resolve().parents[2] / "benchmarks" / "routing"
sys.path.insert(0, str(ROUTING))

from virtual_fleet import HERE, Replicas, simulate  # noqa: E402
from workloads import shared_prefix  # noqa: E402

from vllmsim.engine import EngineConfig  # noqa: E402

MODEL = "m"


def test_sharing_replicas_keep_the_prefix_hits_one_replica_gets_and_independent_ones_lose_them() -> None:
    requests = shared_prefix(MODEL, 16, 4, 512, 32, 8, seed=3)
    rng = random.Random(5)
    sends = sorted(rng.uniform(0.0, 6.0) for _ in requests)
    config = HERE / "configs" / "recommended.yaml"

    def hit_rate(replicas: Replicas) -> float:
        fleet = [1.0] * 4
        result = simulate(config, requests, sends, fleet, EngineConfig(), base_model=MODEL, replicas=replicas, seed=1)
        assert len(result.outcomes) == len(requests) and all(o.first >= o.sent for o in result.outcomes)
        return result.hit_rate

    one = hit_rate(Replicas())
    sharing = hit_rate(Replicas(2, sharing=True, delay=0.01))
    independent = hit_rate(Replicas(2, sharing=False))
    assert sharing > one - 0.02
    assert independent < one - 0.1

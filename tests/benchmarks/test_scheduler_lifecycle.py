"""benchmarks/scheduler/run.py --lifecycle does to the scheduler what the live path does: charges at the pick, first
chunks that release the queued prefill and teach the TTFT model, ends that release the load."""

from __future__ import annotations

from benchmarks.scheduler.run import Lifecycle, timed_requests, warmed_lifecycle
from epp.plugins.latency import PredictedTTFTProducer


def test_lifecycle_charges_releases_and_learns() -> None:
    table, scheduler, shared, live = warmed_lifecycle(8, 2000, 1, "chat", None)
    producer = scheduler.plugins["predicted-ttft-producer"]
    assert isinstance(producer, PredictedTTFTProducer)
    prior = list(producer.model.coefficients)
    candidates = table.live_slots()
    picks = Lifecycle.COMPLETE + 30
    for request in timed_requests(shared, 2000, picks):
        live.after(request, scheduler.schedule(request, table, candidates))
    # the last COMPLETE picks are in flight (the warm-up's finished too); the last FIRST_CHUNK of them have not produced
    # their first chunk
    assert table.inflight_requests[candidates].sum() == Lifecycle.COMPLETE
    assert producer.queued_requests[candidates].sum() == Lifecycle.FIRST_CHUNK
    assert producer.model.coefficients != prior  # learned from the first chunks
    assert (table.cache_num_blocks[candidates] > 0).all()  # the KV terms are priced
    assert live.now > 1000.0 + picks * Lifecycle.TICK

"""`inference_extension_flow_control_*`: queue size and bytes per flow, time spent queued by outcome,
pool saturation as the dispatcher sees it. Sizes are read from the queue at scrape time; durations are
recorded once per admission through FlowController's `on_outcome` hook."""

from __future__ import annotations

from collections.abc import Callable, Iterator

from prometheus_client.core import GaugeMetricFamily, Metric
from prometheus_client.registry import Collector

from epp.flowcontrol.queue import FlowQueue, Item
from epp.observability.families import FamiliesCollector, Family, too_long

PREFIX = "inference_extension_flow_control_"
QUEUE_BUCKETS = (0.0001, 0.0005, 0.001, 0.005, 0.01, 0.05, 0.1, 0.5, 1.0, 5.0, 10.0, 30.0, 60.0)
#: distinct fairness ids kept as label values before new ones are counted under "other"
MAX_FAIRNESS_LABELS = 200


class FlowControlMetrics(Collector):
    def __init__(self, queue: FlowQueue, saturation: Callable[[], float], pool: str) -> None:
        self.queue = queue
        self.saturation = saturation
        self.pool = pool
        self.queue_duration = Family(
            "histogram",
            PREFIX + "request_queue_duration_seconds",
            "Time requests spent in the flow-control queue, by outcome.",
            ["fairness_id", "priority", "outcome", "inference_pool"],
            QUEUE_BUCKETS,
        )
        self._durations = FamiliesCollector([self.queue_duration])

    def record(self, item: Item | None, outcome: str, waited: float, fairness_id: str = "", priority: int = 0) -> None:
        if item is not None:
            fairness_id, priority = item.fairness_id, item.priority
        family = self.queue_duration
        key = (fairness_id, str(priority), outcome, self.pool)
        if key not in family.children and (len(family.children) >= MAX_FAIRNESS_LABELS or too_long(fairness_id)):
            key = ("other", str(priority), outcome, self.pool)
        family.distribution(*key).observe(waited)

    def collect(self) -> Iterator[Metric]:
        yield from self._durations.collect()
        size = GaugeMetricFamily(
            PREFIX + "queue_size",
            "Requests waiting in the flow-control queue.",
            labels=["fairness_id", "priority", "inference_pool"],
        )
        nbytes = GaugeMetricFamily(
            PREFIX + "queue_bytes", "Bytes of requests waiting in the flow-control queue.",
            labels=["fairness_id", "priority", "inference_pool"],
        )  # fmt: skip
        flows: dict[tuple[str, int], tuple[int, int]] = {}
        for (fairness_id, priority), (count, total) in self.queue.flow_sizes().items():
            key = ("other" if too_long(fairness_id) else fairness_id, priority)
            before = flows.get(key, (0, 0))
            flows[key] = (before[0] + count, before[1] + total)
        for (fairness_id, priority), (count, total) in flows.items():
            size.add_metric([fairness_id, str(priority), self.pool], count)
            nbytes.add_metric([fairness_id, str(priority), self.pool], total)
        yield size
        yield nbytes
        saturation = GaugeMetricFamily(
            PREFIX + "pool_saturation", "Pool saturation as the flow-control dispatcher sees it (>= 1 holds requests).",
            labels=["inference_pool"],
        )  # fmt: skip
        saturation.add_metric([self.pool], self.saturation())
        yield saturation

"""Request-path metric families that cost a list index and an add per observation.

prometheus_client's own Counter/Histogram take a lock and walk the buckets in Python on every
observation (~2 µs each, measured); with a handful per request that is a visible share of the
per-request budget. These families keep plain numbers, mutated only on the event-loop thread, and a
prometheus_client Collector turns them into standard metric families when /metrics is scraped.
"""

from __future__ import annotations

from bisect import bisect_left
from collections.abc import Iterator, Sequence

from prometheus_client.core import CounterMetricFamily, GaugeMetricFamily, HistogramMetricFamily, Metric
from prometheus_client.registry import Collector


class Value:
    """A counter or gauge child."""

    __slots__ = ("value",)

    def __init__(self) -> None:
        self.value = 0.0

    def inc(self, amount: float = 1.0) -> None:
        self.value += amount

    def dec(self, amount: float = 1.0) -> None:
        self.value -= amount

    def set(self, value: float) -> None:
        self.value = value


class Distribution:
    """A histogram child: per-bucket counts (non-cumulative; the last slot is +Inf) and the sum."""

    __slots__ = ("bounds", "counts", "sum")

    def __init__(self, bounds: tuple[float, ...]) -> None:
        self.bounds = bounds
        self.counts = [0] * (len(bounds) + 1)
        self.sum = 0.0

    def observe(self, value: float) -> None:
        self.counts[bisect_left(self.bounds, value)] += 1
        self.sum += value


class Family:
    """One metric name with its label names; `child(*values)` returns the (cached) child."""

    def __init__(
        self, kind: str, name: str, documentation: str, labels: Sequence[str], buckets: Sequence[float] = ()
    ) -> None:
        if kind not in ("counter", "gauge", "histogram"):
            raise ValueError(f"unknown metric kind {kind!r}")
        if kind == "histogram" and not buckets:
            raise ValueError(f"histogram {name} needs buckets")
        self.kind = kind
        self.name = name.removesuffix("_total") if kind == "counter" else name
        self.documentation = documentation
        self.labels = tuple(labels)
        self.buckets = tuple(float(b) for b in buckets)
        self.children: dict[tuple[str, ...], Value | Distribution] = {}

    def child(self, *values: str) -> Value | Distribution:
        found = self.children.get(values)
        if found is None:
            if len(values) != len(self.labels):
                raise ValueError(f"{self.name} takes labels {self.labels}, got {values}")
            found = Distribution(self.buckets) if self.kind == "histogram" else Value()
            self.children[values] = found
        return found

    def value(self, *values: str) -> Value:
        child = self.child(*values)
        assert isinstance(child, Value)
        return child

    def distribution(self, *values: str) -> Distribution:
        child = self.child(*values)
        assert isinstance(child, Distribution)
        return child

    def collect(self) -> Metric:
        children = list(self.children.items())
        if self.kind == "counter":
            counter = CounterMetricFamily(self.name, self.documentation, labels=self.labels)
            for values, child in children:
                assert isinstance(child, Value)
                counter.add_metric(values, child.value)
            return counter
        if self.kind == "gauge":
            gauge = GaugeMetricFamily(self.name, self.documentation, labels=self.labels)
            for values, child in children:
                assert isinstance(child, Value)
                gauge.add_metric(values, child.value)
            return gauge
        histogram = HistogramMetricFamily(self.name, self.documentation, labels=self.labels)
        for values, child in children:
            assert isinstance(child, Distribution)
            counts = child.counts[:]
            cumulative, running = [], 0
            for bound, count in zip((*self.buckets, float("inf")), counts, strict=True):
                running += count
                cumulative.append((_bound_text(bound), float(running)))
            histogram.add_metric(values, cumulative, child.sum)
        return histogram


def _bound_text(bound: float) -> str:
    return "+Inf" if bound == float("inf") else repr(bound)


class FamiliesCollector(Collector):
    def __init__(self, families: Sequence[Family]) -> None:
        self.families = list(families)

    def collect(self) -> Iterator[Metric]:
        for family in self.families:
            yield family.collect()

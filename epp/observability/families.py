"""Metric families that cost a list index and an add per observation.

prometheus_client's own Counter/Histogram take a lock and walk the buckets in Python on every
observation (~2 µs each, measured); with a handful per request that is a visible share of the
per-request budget. These families keep plain numbers, mutated only on the event-loop thread, and a
prometheus_client Collector turns them into standard metric families when /metrics is scraped.

A family may also be exported under legacy names (`Alias`), optionally summed over a subset of its
labels, so that old dashboards and alert rules keep working without a second per-request update.
"""

from __future__ import annotations

from bisect import bisect_left
from collections.abc import Iterator, Sequence
from dataclasses import dataclass

from prometheus_client.core import CounterMetricFamily, GaugeMetricFamily, HistogramMetricFamily, Metric
from prometheus_client.registry import Collector

KINDS = ("counter", "gauge", "histogram")
#: longest client-chosen label value (a model name) kept; longer ones are counted as "other". Real names
#: are Kubernetes names or Hugging Face ids, far shorter.
MAX_LABEL_VALUE = 256


def too_long(*values: str) -> bool:
    return any(len(value) > MAX_LABEL_VALUE for value in values)


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


@dataclass(frozen=True)
class Alias:
    """Export a family a second time under `name`; with `labels`, summed over the other labels."""

    name: str
    labels: tuple[str, ...] | None = None
    documentation: str = ""


class Family:
    """One metric name with its label names; `child(*values)` returns the (cached) child."""

    def __init__(
        self,
        kind: str,
        name: str,
        documentation: str,
        labels: Sequence[str] = (),
        buckets: Sequence[float] = (),
        aliases: Sequence[Alias] = (),
    ) -> None:
        if kind not in KINDS:
            raise ValueError(f"unknown metric kind {kind!r}")
        if kind == "histogram" and not buckets:
            raise ValueError(f"histogram {name} needs buckets")
        if list(buckets) != sorted(buckets):
            raise ValueError(f"histogram {name}: buckets must be increasing")
        self.kind = kind
        self.name = _base_name(kind, name)
        self.documentation = documentation
        self.labels = tuple(labels)
        self.buckets = tuple(float(b) for b in buckets)
        self.children: dict[tuple[str, ...], Value | Distribution] = {}
        for alias in aliases:
            unknown = set(alias.labels or ()) - set(self.labels)
            if unknown:
                raise ValueError(f"alias {alias.name} of {name}: labels {sorted(unknown)} are not in {self.labels}")
        self.aliases = tuple(aliases)

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

    def remove(self, *values: str) -> None:
        self.children.pop(values, None)

    def clear(self) -> None:
        self.children.clear()

    def collect(self) -> list[Metric]:
        children = list(self.children.items())
        metrics = [self._export(self.name, self.documentation, self.labels, children)]
        for alias in self.aliases:
            name = _base_name(self.kind, alias.name)
            documentation = alias.documentation or f"{self.documentation} (legacy name of {self.name})"
            if alias.labels is None or alias.labels == self.labels:
                metrics.append(self._export(name, documentation, self.labels, children))
            else:
                projected = self._project(alias.labels, children)
                metrics.append(self._export(name, documentation, alias.labels, projected))
        return metrics

    def _project(
        self, labels: tuple[str, ...], children: list[tuple[tuple[str, ...], Value | Distribution]]
    ) -> list[tuple[tuple[str, ...], Value | Distribution]]:
        """Sum children over the labels not in `labels` (values and histogram buckets add)."""
        positions = [self.labels.index(label) for label in labels]
        merged: dict[tuple[str, ...], Value | Distribution] = {}
        for values, child in children:
            key = tuple(values[i] for i in positions)
            into = merged.get(key)
            if into is None:
                into = merged[key] = Distribution(self.buckets) if self.kind == "histogram" else Value()
            if isinstance(child, Distribution) and isinstance(into, Distribution):
                into.counts = [a + b for a, b in zip(into.counts, child.counts, strict=True)]
                into.sum += child.sum
            elif isinstance(child, Value) and isinstance(into, Value):
                into.value += child.value
        return list(merged.items())

    def _export(
        self,
        name: str,
        documentation: str,
        labels: tuple[str, ...],
        children: list[tuple[tuple[str, ...], Value | Distribution]],
    ) -> Metric:
        if self.kind in ("counter", "gauge"):
            family_type = CounterMetricFamily if self.kind == "counter" else GaugeMetricFamily
            single = family_type(name, documentation, labels=labels)
            for values, child in children:
                assert isinstance(child, Value)
                single.add_metric(values, child.value)
            return single
        histogram = HistogramMetricFamily(name, documentation, labels=labels)
        bounds = (*self.buckets, float("inf"))
        for values, child in children:
            assert isinstance(child, Distribution)
            counts = child.counts[:]
            cumulative, running = [], 0
            for bound, count in zip(bounds, counts, strict=True):
                running += count
                cumulative.append((_bound_text(bound), float(running)))
            histogram.add_metric(values, cumulative, child.sum)
        return histogram


def _base_name(kind: str, name: str) -> str:
    return name.removesuffix("_total") if kind == "counter" else name


def _bound_text(bound: float) -> str:
    return "+Inf" if bound == float("inf") else repr(bound)


class FamiliesCollector(Collector):
    def __init__(self, families: Sequence[Family]) -> None:
        self.families = list(families)

    def collect(self) -> Iterator[Metric]:
        for family in self.families:
            yield from family.collect()

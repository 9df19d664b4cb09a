"""What the /debug pages of the metrics port say: the endpoints as the picker sees them, the last decisions,
the effective configuration. Built on the metrics server's thread when asked; nothing here runs per request.

The columns are read without the table lock, as the pool gauges read them (epp.observability.pool): a row
being scraped meanwhile may show one half-updated sample.
"""

from __future__ import annotations

import time
from collections.abc import Callable, Iterable, Mapping
from dataclasses import dataclass, field
from typing import Any, Protocol, runtime_checkable

import numpy as np

from epp.datastore.fresh import fresh_load
from epp.datastore.table import EndpointTable
from epp.observability.decisions import DEFAULT_CANDIDATES, DecisionLog, iso_time


@runtime_checkable
class HoldsBlocks(Protocol):
    """A data producer that can say how many prefix blocks an endpoint holds (the prefix-cache producer)."""

    name: str

    def blocks_held(self, slot: int) -> int: ...


def _query_int(query: Mapping[str, str], key: str, default: int) -> int:
    text = query.get(key, "")
    if not text:
        return default
    if text == "all":
        return 0
    try:
        value = int(text)
    except ValueError:
        raise QueryError(f"?{key}={text!r}: give a whole number (0 or 'all' for no limit)") from None
    if value < 0:
        raise QueryError(f"?{key}={text!r}: give a whole number (0 or 'all' for no limit)")
    return value


class QueryError(ValueError):
    """A /debug query parameter the page cannot use (answered 400 with this message)."""


@dataclass
class DebugPages:
    table: EndpointTable
    #: None when decisions are not recorded (--debug-decisions 0)
    decisions: DecisionLog | None
    pool_name: str
    staleness_s: float
    #: the flags' values (dest name → value) and which were given
    flags: Mapping[str, Any]
    explicit_flags: Iterable[str]
    #: the EndpointPickerConfig after defaulting (EndpointPickerConfig.describe())
    config: Mapping[str, Any]
    prefix_producers: list[HoldsBlocks] = field(default_factory=list)
    #: the source of endpoints, e.g. "--endpoints", "InferencePool default/pool"
    source: str = ""
    clock: Callable[[], float] = time.monotonic
    started: float = field(default_factory=time.time)

    def endpoints(self) -> dict[str, Any]:
        table = self.table
        slots = table.live_slots()
        now = self.clock()
        load = fresh_load(table, slots)
        metrics_time = table.metrics_time.take(slots)
        columns = {
            name: table.column(name).take(slots).tolist()
            for name in (
                "waiting_queue",
                "running_requests",
                "kv_usage",
                "max_lora",
                "cache_block_size",
                "cache_num_blocks",
                "scrape_errors",
                "inflight_requests",
                "inflight_tokens",
                "inflight_prompt_tokens",
            )
        }
        ages = np.where(metrics_time > 0, now - metrics_time, np.nan).tolist()
        effective = (load.waiting.tolist(), load.running.tolist(), load.kv_usage.tolist())
        rows = []
        for i, slot in enumerate(slots.tolist()):
            endpoint = table.endpoints[slot]
            if endpoint is None:  # left while this page was built
                continue
            age = ages[i]
            scraped = age == age  # not NaN
            rows.append(
                {
                    "endpoint": endpoint.hostport,
                    "name": endpoint.name,
                    "address": endpoint.address,
                    "port": endpoint.port,
                    "metrics_port": endpoint.metrics_port or endpoint.port,
                    "labels": dict(endpoint.labels),
                    "scraped": {
                        "waiting_queue": columns["waiting_queue"][i],
                        "running_requests": columns["running_requests"][i],
                        "kv_cache_usage": columns["kv_usage"][i],
                        "max_lora": columns["max_lora"][i],
                        "lora_active": sorted(table.lora_active[slot]),
                        "lora_waiting": sorted(table.lora_waiting[slot]),
                        "cache_block_size": columns["cache_block_size"][i],
                        "cache_num_blocks": columns["cache_num_blocks"][i],
                    },
                    "metrics_age_seconds": round(age, 3) if scraped else None,
                    "metrics_stale": not scraped or age > self.staleness_s,
                    "scrape_errors": columns["scrape_errors"][i],
                    "in_flight": {
                        "requests": columns["inflight_requests"][i],
                        "tokens": columns["inflight_tokens"][i],
                        "prompt_tokens": columns["inflight_prompt_tokens"][i],
                    },
                    "load": {
                        "waiting_queue": effective[0][i],
                        "running_requests": effective[1][i],
                        "kv_cache_usage": effective[2][i],
                    },
                    "prefix_blocks": {p.name: p.blocks_held(slot) for p in self.prefix_producers},
                }
            )
        return {
            "pool": self.pool_name,
            "source": self.source,
            "time": iso_time(time.time()),
            "metrics_staleness_threshold_seconds": self.staleness_s,
            "count": len(rows),
            "endpoints": rows,
        }

    def decisions_page(self, query: Mapping[str, str]) -> dict[str, Any]:
        limit = _query_int(query, "limit", 0)
        candidates = _query_int(query, "candidates", DEFAULT_CANDIDATES)
        if self.decisions is None:
            return {
                "capacity": 0,
                "recorded": 0,
                "decisions": [],
                "note": "decisions are not recorded (--debug-decisions 0)",
            }
        return self.decisions.describe(limit, query.get("request_id", ""), candidates)

    def config_page(self) -> dict[str, Any]:
        explicit = set(self.explicit_flags)
        return {
            "flags": {name.replace("_", "-"): _plain(value) for name, value in sorted(self.flags.items())},
            "flags_given": sorted(name.replace("_", "-") for name in explicit),
            "config": self.config,
        }

    def info(self) -> dict[str, Any]:
        return {
            "pool": self.pool_name,
            "source": self.source,
            "started": iso_time(self.started),
            "uptime_seconds": round(time.time() - self.started, 1),
        }


def _plain(value: Any) -> Any:
    return list(value) if isinstance(value, tuple | set | frozenset) else value

"""Quantiles of a Prometheus histogram read from a /metrics page (text exposition format)."""

from __future__ import annotations

import math
import urllib.request
from collections import defaultdict

_OPENER = urllib.request.build_opener(urllib.request.ProxyHandler({}))


def scrape(url: str, timeout: float = 5.0) -> str:
    with _OPENER.open(url, timeout=timeout) as response:
        return str(response.read().decode())


def _le(labels: str) -> float | None:
    for part in labels.split(","):
        key, _, value = part.strip().partition("=")
        if key == "le":
            text = value.strip().strip('"')
            return math.inf if text in ("+Inf", "Inf") else float(text)
    return None


def histogram_buckets(page: str, prefix: str) -> dict[str, list[tuple[float, float]]]:
    """Cumulative buckets (upper bound, count) of each histogram family whose name starts with `prefix`,
    summed over every other label, sorted by bound."""
    families: dict[str, defaultdict[float, float]] = {}
    for line in page.splitlines():
        if not line.startswith(prefix) or line.startswith("#"):
            continue
        name, _, rest = line.partition("{")
        if not name.endswith("_bucket") or "}" not in rest:
            continue
        labels, _, value = rest.rpartition("}")
        bound = _le(labels)
        if bound is None:
            continue
        counts = families.setdefault(name.removesuffix("_bucket"), defaultdict(float))
        counts[bound] += float(value.split()[0])
    return {name: sorted(counts.items()) for name, counts in families.items()}


def bucket_quantile(buckets: list[tuple[float, float]], q: float) -> float:
    """The q-quantile (0..1) by linear interpolation inside the bucket that holds it, as PromQL's
    histogram_quantile; NaN without observations; the last finite bound if it falls in +Inf."""
    if not buckets or buckets[-1][1] <= 0:
        return math.nan
    rank = q * buckets[-1][1]
    lower_bound, lower_count = 0.0, 0.0
    for bound, count in buckets:
        if count >= rank:
            if math.isinf(bound):
                return lower_bound
            if count == lower_count:
                return bound
            return lower_bound + (bound - lower_bound) * (rank - lower_count) / (count - lower_count)
        lower_bound, lower_count = bound, count
    return lower_bound


def family_median(page: str, prefix: str) -> float | None:
    """Median of the first histogram family (by name) starting with `prefix`; None when there is none."""
    families = histogram_buckets(page, prefix)
    if not families:
        return None
    return bucket_quantile(families[min(families)], 0.5)

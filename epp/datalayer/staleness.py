"""Metric freshness: an endpoint's scraped columns are fresh if the last good scrape is recent enough."""

from __future__ import annotations

import numpy as np
import numpy.typing as npt

from epp.datastore.table import EndpointTable, SlotArray


def fresh_mask(table: EndpointTable, slots: SlotArray, threshold_s: float, now: float) -> npt.NDArray[np.bool_]:
    """True where the endpoint was scraped successfully within `threshold_s` of `now` (time.monotonic())."""
    times = table.metrics_time[slots]
    return (times > 0.0) & ((now - times) <= threshold_s)


def metrics_age(table: EndpointTable, slots: SlotArray, now: float) -> npt.NDArray[np.float64]:
    """Seconds since each endpoint's last good scrape (inf if never scraped)."""
    times = table.metrics_time[slots]
    return np.where(times > 0.0, now - times, np.inf)

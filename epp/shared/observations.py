"""Latency observations shared between replicas.

Each replica learns the predicted-TTFT model from the responses it sees: one replica of two sees half of them,
and its pool-wide coefficients lag and wander apart from its peer's (two sharing replicas routed chat 1.19x one
replica's TTFT p90 with no delay at all, the median of 12 virtual-fleet rows; with one model, 1.00x). So a plugin
that `LearnsLatency` hands every observation it learns from to an outbox, and a peer's observations teach this
replica's coefficients too. Only the coefficients: an endpoint's slowness is shared as each replica's own estimate
with its precision (epp.shared.columns), and learning it from the peers' responses as well would count them twice.

Record (on the inserts stream, one entry per plugin per batch):
  v=1, r=replica id, t=wall time of the oldest observation, p=plugin name, k=observations, h=endpoints ip:port
  (newline separated), w=values per observation (the model's features, then the observed seconds), x=float64
  little-endian values, row per observation.
"""

from __future__ import annotations

import time
from collections.abc import Callable, Sequence
from dataclasses import dataclass
from typing import Protocol, runtime_checkable

import numpy as np
import numpy.typing as npt

from epp.plugins.fleet_model import FleetModel
from epp.shared.codec import VERSION, Fields, RecordError, check_version
from epp.shared.inserts import Outbox

OBSERVATIONS = b"observations"


@runtime_checkable
class LearnsLatency(Protocol):
    """A plugin with a latency model learned from responses (plugins/latency.py's TTFT model) and its clock."""

    model: FleetModel
    clock: Callable[[], float]


@dataclass(slots=True)
class Observation:
    hostport: str
    features: Sequence[float]
    seconds: float
    #: wall-clock time it was learned here (peers measure staleness from it)
    made_at: float


@dataclass(frozen=True)
class ObservationBatch:
    replica: str
    sent_at: float
    plugin: str
    hostports: list[str]
    #: row per observation: the model's features, then the observed seconds
    rows: npt.NDArray[np.float64]


class ObservationOutbox(Outbox[Observation]):
    """One plugin's latency observations waiting to be sent (its model's `on_learn`)."""

    def __call__(self, slot: int, features: Sequence[float], seconds: float) -> None:
        if not self.full():
            self.append(Observation(self.table.hostports[slot], tuple(features), seconds, time.time()))


def is_observations(fields: Fields) -> bool:
    return fields.get(b"k") == OBSERVATIONS


def encode_observations(replica: str, plugin: str, records: Sequence[Observation]) -> dict[bytes, bytes]:
    """One batch of one model's observations (all of the same width)."""
    width = len(records[0].features) + 1 if records else 0
    rows = np.array([(*r.features, r.seconds) for r in records], dtype="<f8")
    return {
        b"v": VERSION,
        b"r": replica.encode(),
        b"t": repr(min((r.made_at for r in records), default=0.0)).encode(),
        b"p": plugin.encode(),
        b"k": OBSERVATIONS,
        b"h": "\n".join(r.hostport for r in records).encode(),
        b"w": str(width).encode(),
        b"x": rows.tobytes(),
    }


def decode_observations(fields: Fields) -> ObservationBatch:
    check_version(fields)
    try:
        hostports = fields[b"h"].decode().split("\n") if fields[b"h"] else []
        width = int(fields[b"w"])
        values = np.frombuffer(fields[b"x"], dtype="<f8").astype(np.float64)
        batch = (fields[b"r"].decode(), float(fields[b"t"]), fields[b"p"].decode())
    except (KeyError, ValueError, UnicodeDecodeError) as exc:
        raise RecordError(f"malformed observation record: {exc}") from None
    if width < 2 or len(values) != width * len(hostports):
        raise RecordError(f"observation record has {len(values)} values for {len(hostports)} rows of {width}")
    return ObservationBatch(*batch, hostports, values.reshape(len(hostports), width))

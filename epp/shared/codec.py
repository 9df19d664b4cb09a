"""The records replicas exchange, as Redis stream entries (a flat field → bytes mapping).

Load report (stream `<prefix>:load`):
  v=1, r=replica id, t=wall time of the oldest change it carries (or of sending), k=full|delta|bye,
  c=column names (newline separated), h=endpoints ip:port (newline separated), x=float64 little-endian
  values, row per endpoint.
Inserts (stream `<prefix>:inserts`), one entry per plugin per batch:
  v=1, r, t=wall time of the oldest insert in the batch, p=plugin name, h=each insert's endpoints
  (comma separated, inserts newline separated), n=int32 key count per insert, x=uint64 keys, concatenated.
  The same stream carries latency observations (k=observations; epp.shared.observations).
Numbers are little-endian whatever the machine, so replicas on different hardware agree.
"""

from __future__ import annotations

from collections.abc import Mapping, Sequence
from dataclasses import dataclass

import numpy as np
import numpy.typing as npt

from epp.shared.inserts import InsertRecord, Keys

VERSION = b"1"
FULL, DELTA, BYE = b"full", b"delta", b"bye"
Fields = Mapping[bytes, bytes]


class RecordError(ValueError):
    pass


@dataclass(frozen=True)
class LoadReport:
    replica: str
    sent_at: float
    kind: bytes
    names: list[str]
    hostports: list[str]
    values: npt.NDArray[np.float64]


@dataclass(frozen=True)
class InsertBatch:
    replica: str
    sent_at: float
    plugin: str
    hostports: list[tuple[str, ...]]
    keys: list[Keys]


def encode_load(
    replica: str,
    sent_at: float,
    kind: bytes,
    names: Sequence[str],
    hostports: Sequence[str],
    values: npt.NDArray[np.float64],
) -> dict[bytes, bytes]:
    return {
        b"v": VERSION,
        b"r": replica.encode(),
        b"t": repr(sent_at).encode(),
        b"k": kind,
        b"c": "\n".join(names).encode(),
        b"h": "\n".join(hostports).encode(),
        b"x": np.ascontiguousarray(values, dtype="<f8").tobytes(),
    }


def decode_load(fields: Fields) -> LoadReport:
    check_version(fields)
    try:
        names = _lines(fields[b"c"])
        hostports = _lines(fields[b"h"])
        values = np.frombuffer(fields[b"x"], dtype="<f8").astype(np.float64)
        kind = fields[b"k"]
        report = LoadReport(fields[b"r"].decode(), float(fields[b"t"]), kind, names, hostports, values)
    except (KeyError, ValueError, UnicodeDecodeError) as exc:
        raise RecordError(f"malformed load record: {exc}") from None
    if kind not in (FULL, DELTA, BYE):
        raise RecordError(f"load record of unknown kind {kind!r}")
    if len(values) != len(names) * len(hostports):
        raise RecordError(f"load record has {len(values)} values for {len(hostports)} endpoints x {len(names)} columns")
    return LoadReport(
        report.replica,
        report.sent_at,
        kind,
        names,
        hostports,
        values.reshape(len(hostports), len(names)),
    )


def encode_inserts(replica: str, plugin: str, records: Sequence[InsertRecord]) -> dict[bytes, bytes]:
    counts = np.fromiter((len(r.keys) for r in records), dtype="<i4", count=len(records))
    keys = np.concatenate([r.keys for r in records]).astype("<u8", copy=False) if records else np.zeros(0, "<u8")
    return {
        b"v": VERSION,
        b"r": replica.encode(),
        b"t": repr(min((r.made_at for r in records), default=0.0)).encode(),
        b"p": plugin.encode(),
        b"h": "\n".join(",".join(r.hostports) for r in records).encode(),
        b"n": counts.tobytes(),
        b"x": keys.tobytes(),
    }


def decode_inserts(fields: Fields) -> InsertBatch:
    check_version(fields)
    try:
        counts = np.frombuffer(fields[b"n"], dtype="<i4")
        keys = np.frombuffer(fields[b"x"], dtype="<u8").astype(np.uint64)
        targets = [tuple(line.split(",")) for line in _lines(fields[b"h"])]
        batch = InsertBatch(fields[b"r"].decode(), float(fields[b"t"]), fields[b"p"].decode(), targets, [])
    except (KeyError, ValueError, UnicodeDecodeError) as exc:
        raise RecordError(f"malformed insert record: {exc}") from None
    if len(counts) != len(targets) or int(counts.sum()) != len(keys) or (counts < 0).any():
        raise RecordError(f"insert record has {len(targets)} inserts, {len(counts)} counts and {len(keys)} keys")
    ends = np.cumsum(counts)
    batch.keys.extend(np.split(keys, ends[:-1]) if len(ends) else [])
    return batch


def _lines(data: bytes) -> list[str]:
    return data.decode().split("\n") if data else []


def check_version(fields: Fields) -> None:
    version = fields.get(b"v")
    if version != VERSION:
        raise RecordError(f"record of version {version!r}; this replica reads version {VERSION.decode()}")

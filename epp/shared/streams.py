"""The two Redis stream commands the link sends and how their replies read."""

from __future__ import annotations

from collections.abc import Mapping
from typing import Any

from epp.shared.store import Argument, Command


def xread(positions: Mapping[str, str], block: float | None = None) -> Command:
    """XREAD of every stream after its position; blocking up to `block` seconds when there is nothing yet."""
    keys = list(positions)
    waiting: list[Argument] = ["BLOCK", int(block * 1000)] if block is not None else []
    return ["XREAD", "COUNT", 512, *waiting, "STREAMS", *keys, *(positions[key] for key in keys)]


def xadd(key: str, fields: Mapping[bytes, bytes], kept: int) -> Command:
    """XADD key MAXLEN ~ kept * field value ... (the stream is trimmed to about `kept` entries)."""
    return ["XADD", key, "MAXLEN", "~", kept, "*", *(item for pair in fields.items() for item in pair)]


def stream_entries(raw: Any) -> list[tuple[str, dict[bytes, bytes]]]:
    """Stream entries of a reply as (id, fields); an entry deleted under a reader comes back without fields."""
    found: list[tuple[str, dict[bytes, bytes]]] = []
    for entry_id, flat in raw or ():
        if entry_id is not None and flat is not None:
            fields = dict(zip(flat[::2], flat[1::2], strict=True))
            found.append((entry_id.decode() if isinstance(entry_id, bytes) else str(entry_id), fields))
    return found


def id_order(entry_id: str) -> tuple[int, int]:
    millis, _, sequence = entry_id.partition("-")
    return int(millis), int(sequence or 0)


def entries_after(raw: Any, position: str) -> list[tuple[str, dict[bytes, bytes]]]:
    """The entries of a reply that come after `position` (two reads that overlap apply each entry once)."""
    after = id_order(position)
    return [entry for entry in stream_entries(raw) if id_order(entry[0]) > after]

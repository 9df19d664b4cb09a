"""Fast extraction of the few needed series from a Prometheus text page, without parsing the whole page.

Each wanted family is located with `bytes.find` on `\\n<family>` and only its own lines are decoded.
"""

from __future__ import annotations

import functools
import re
from dataclasses import dataclass

from epp.datalayer.params import EngineConfig, MetricSpec


@dataclass(slots=True)
class Extracted:
    """Values read from one page; None = the field is disabled or its family is missing/garbled."""

    waiting: float | None = None
    running: float | None = None
    kv_usage: float | None = None
    block_size: float | None = None
    num_blocks: float | None = None
    lora: tuple[frozenset[str], frozenset[str], float] | None = None

    def any(self) -> bool:
        return self.waiting is not None or self.running is not None or self.kv_usage is not None


_VALUE = rb'"((?:[^"\\\n]|\\.)*)"'
_PAIR = rb'\s*[A-Za-z_][A-Za-z0-9_]*\s*=\s*"(?:[^"\\\n]|\\.)*"\s*,'


@functools.lru_cache(maxsize=256)
def _label_pattern(key: bytes) -> re.Pattern[bytes]:
    """Whole `name="value",` pairs from the start of a label text up to `key`'s: a value that ends in an
    escaped backslash or holds `key="` is read as the value it is."""
    return re.compile(rb"(?:" + _PAIR + rb")*?\s*" + re.escape(key) + rb"\s*=\s*" + _VALUE)


def _label_value(raw: bytes, key: bytes) -> bytes | None:
    """The raw (still escaped) value of label `key` in a `a="x",b="y"` label text, or None if absent."""
    if b"\\" in raw:  # escapes: read whole pairs (rare; the find below would stop at an escaped quote)
        found = _label_pattern(key).match(raw)
        return found.group(1) if found is not None else None
    needle = key + b'="'
    pos = raw.find(needle)
    # at a pair's start: after a separator, and outside any value (an even number of quotes before it)
    while pos >= 0 and ((pos > 0 and raw[pos - 1] not in b", {") or raw.count(b'"', 0, pos) % 2):
        pos = raw.find(needle, pos + 1)
    if pos < 0:
        return None
    start = pos + len(needle)
    end = raw.find(b'"', start)
    if end < 0:
        raise ValueError("unterminated label value")
    return raw[start:end]


#: How far around the previous page's offset a family is first looked for (pages of one server keep
#: their layout; only the digits change).
HINT_WINDOW = 4096


def _locate(page: bytes, family: bytes, start: int, end: int) -> int:
    needle = b"\n" + family
    flen = len(family)
    pos = page.find(needle, start, end)
    while pos >= 0 and page[pos + 1 + flen : pos + 2 + flen] not in (b"{", b" "):
        pos = page.find(needle, pos + 1, end)
    return pos


def _series(
    page: bytes, family: bytes, first_only: bool = False, hints: dict[bytes, int] | None = None
) -> list[tuple[bytes, float]]:
    """Samples of `family` as (raw label text, value). Samples of a family are contiguous in the text
    format, so the walk stops at the first line that is not one of them. `hints` maps a family to its
    offset in this server's previous page, so that a page is not scanned from the start every time."""
    out: list[tuple[bytes, float]] = []
    flen = len(family)
    if page.startswith(family) and page[flen : flen + 1] in (b"{", b" "):
        pos = 0
    else:
        pos = -1
        if hints is not None:
            hint = hints.get(family)
            if hint is not None:
                pos = _locate(page, family, max(0, hint - HINT_WINDOW), hint + HINT_WINDOW)
        if pos < 0:
            pos = _locate(page, family, 0, len(page))
        if pos < 0:
            return out
        if hints is not None:
            hints[family] = pos
        pos += 1
    size = len(page)
    while pos < size:
        eol = page.find(b"\n", pos)
        if eol < 0:
            eol = size
        if page[pos : pos + flen] != family:
            break
        after = page[pos + flen]
        if after == 0x7B:  # {
            close = page.rfind(b"}", pos, eol)
            if close < 0:
                raise ValueError("garbled series")
            out.append((page[pos + flen + 1 : close], float(page[close + 1 : eol].split()[0])))
        elif after == 0x20:
            out.append((b"", float(page[pos + flen : eol].split()[0])))
        else:
            break
        if first_only:
            break
        pos = eol + 1
    return out


def _matching(
    page: bytes, spec: MetricSpec, first_only: bool = False, hints: dict[bytes, int] | None = None
) -> list[tuple[bytes, float]]:
    fam = spec.family_bytes
    if not spec.labels:
        return _series(page, fam, first_only, hints)
    wanted = spec.label_bytes
    result: list[tuple[bytes, float]] = []
    for raw, value in _series(page, fam, False, hints):
        if all(_label_value(raw, k) == v for k, v in wanted):
            result.append((raw, value))
            if first_only:
                break
    return result


def gauge(page: bytes, spec: MetricSpec | None, hints: dict[bytes, int] | None = None) -> float | None:
    """The first series matching the selector (exposition carries no timestamps), or None."""
    if spec is None:
        return None
    try:
        matches = _matching(page, spec, True, hints)
    except (ValueError, IndexError):
        return None
    return matches[0][1] if matches else None


def _split(value: bytes | None) -> frozenset[str]:
    if not value:
        return frozenset()
    return frozenset(s.strip() for s in value.decode("utf-8", "replace").split(",") if s.strip())


LoraInfo = tuple[frozenset[str], frozenset[str], float]
_lora_memo: dict[bytes, LoraInfo] = {}


def lora_info(page: bytes, spec: MetricSpec | None, hints: dict[bytes, int] | None = None) -> LoraInfo | None:
    """(running adapters, waiting adapters, max_lora) from the series with the greatest value."""
    if spec is None:
        return None
    try:
        matches = _matching(page, spec, False, hints)
        if not matches:
            return None
        raw, _ = max(matches, key=lambda m: m[1])
        memo = _lora_memo.get(raw)
        if memo is not None:
            return memo
        running = _split(_label_value(raw, b"running_lora_adapters"))
        waiting = _split(_label_value(raw, b"waiting_lora_adapters"))
        max_raw = _label_value(raw, b"max_lora")
    except (ValueError, IndexError):
        return None
    try:
        max_lora = float(max_raw or b"0")
    except ValueError:
        max_lora = 0.0
    if len(_lora_memo) > 4096:
        _lora_memo.clear()
    _lora_memo[raw] = result = (running, waiting, max_lora)
    return result


def _info_labels(
    page: bytes, spec: MetricSpec | None, labels: tuple[str, str], hints: dict[bytes, int] | None
) -> tuple[float | None, ...]:
    """Numeric values of the given labels of the first matching info series ("" label = not read)."""
    if spec is None:
        return (None, None)
    try:
        matches = _matching(page, spec, True, hints)
    except (ValueError, IndexError):
        return (None, None)
    if not matches:
        return (None, None)
    out: list[float | None] = []
    for label in labels:
        try:
            value = _label_value(matches[0][0], label.encode()) if label else None
            out.append(float(value) if value is not None else None)
        except ValueError:
            out.append(None)
    return tuple(out)


def extract(page: bytes, engine: EngineConfig, hints: dict[bytes, int] | None = None) -> Extracted:
    """Read every enabled field of `engine` from `page`. Pass the same `hints` dict for successive pages
    of one server to find families near where they were last time."""
    out = Extracted()
    out.waiting = gauge(page, engine.queued, hints)
    out.running = gauge(page, engine.running, hints)
    for spec in engine.kv_usage:
        out.kv_usage = gauge(page, spec, hints)
        if out.kv_usage is not None:
            break
    if engine.cache_info is not None:
        labels = (engine.cache_block_size_label, engine.cache_num_blocks_label)
        out.block_size, out.num_blocks = _info_labels(page, engine.cache_info, labels, hints)
    if engine.cache_block_size is not None:
        out.block_size = gauge(page, engine.cache_block_size, hints)
    if engine.cache_num_blocks is not None:
        out.num_blocks = gauge(page, engine.cache_num_blocks, hints)
    out.lora = lora_info(page, engine.lora, hints)
    return out

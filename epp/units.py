"""Units of flags and config values: Go durations, Kubernetes-style quantities, pflag booleans, ports; and the
keys of a config mapping that are not known.

A leaf module (standard library only), so the CLI, the config loader and plugins can all parse values the same way.
"""

from __future__ import annotations

import argparse
import re
from collections.abc import Collection, Mapping

_DURATION_PART = re.compile(r"(\d+(?:\.\d*)?|\.\d+)(ns|us|µs|ms|s|m|h)")
_DURATION_UNITS = {"ns": 1e-9, "us": 1e-6, "µs": 1e-6, "ms": 1e-3, "s": 1.0, "m": 60.0, "h": 3600.0}
_QUANTITY = re.compile(r"^(\d+(?:\.\d+)?)\s*([KMGT]i?B?|[kKMGT]B?|B)?$")
_QUANTITY_UNITS = {"": 1, "B": 1, "k": 10**3, "K": 10**3, "M": 10**6, "G": 10**9, "T": 10**12}


def parse_duration(text: str) -> float:
    """Go duration (`50ms`, `2s`, `1m30s`, `0`) → seconds."""
    value = text.strip()
    if value in ("0", "-0", "+0"):
        return 0.0
    position, total = 0, 0.0
    for match in _DURATION_PART.finditer(value):
        if match.start() != position:
            break
        total += float(match.group(1)) * _DURATION_UNITS[match.group(2)]
        position = match.end()
    if position != len(value) or position == 0:
        raise argparse.ArgumentTypeError(f"invalid duration {text!r}; use a number with a unit, e.g. 50ms, 2s, 1m30s")
    return total


def parse_bool(text: str) -> bool:
    lowered = text.strip().lower()
    if lowered in ("1", "t", "true"):
        return True
    if lowered in ("0", "f", "false"):
        return False
    raise argparse.ArgumentTypeError(f"invalid boolean {text!r}; use true or false")


def parse_quantity(text: str) -> int:
    """`25MiB`, `4Mi`, `10M`, `1048576` → bytes."""
    match = _QUANTITY.match(text.strip())
    if not match:
        raise argparse.ArgumentTypeError(f"invalid size {text!r}; use bytes or a quantity such as 4MiB, 25Mi, 10M")
    number, unit = float(match.group(1)), (match.group(2) or "").removesuffix("B")
    factor = 1024 ** "KMGT".index(unit[0]) * 1024 if unit.endswith("i") else _QUANTITY_UNITS[unit]
    return int(number * factor)


def parse_whole_number(text: str, low: int, high: int, what: str, why: str = "") -> int:
    """A whole number in low..high (`what` it is, and `why` a value out of range is refused, name the error)."""
    try:
        value = int(text)
    except ValueError:
        raise argparse.ArgumentTypeError(f"invalid {what} {text!r}; use a whole number {low}..{high}") from None
    if not low <= value <= high:
        raise argparse.ArgumentTypeError(f"{what} {value} is not in {low}..{high}{f' ({why})' if why else ''}")
    return value


def parse_port(text: str) -> int:
    return parse_whole_number(text, 0, 65535, "port")


def parse_ports(text: str) -> tuple[int, ...]:
    ports = tuple(dict.fromkeys(parse_port(p) for p in text.split(",") if p.strip()))
    if not 1 <= len(ports) <= 8:
        raise argparse.ArgumentTypeError(f"--endpoint-target-ports takes 1 to 8 ports, got {text!r}")
    return ports


def duration_seconds(text: str, name: str) -> float:
    try:
        return parse_duration(text)
    except Exception as exc:  # argparse.ArgumentTypeError is not a ValueError
        raise ValueError(f"{name}: {exc}") from None


def unknown_keys(mapping: Mapping[object, object], known: Collection[str]) -> list[str]:
    """The keys of a parsed YAML mapping that are not `known`, as text, sorted (YAML keys may be numbers or null)."""
    return sorted(str(key) for key in mapping if key not in known)

"""Label selectors (`app=x,tier!=db,env in (a,b),!legacy,gpu`) and field selectors (`metadata.name=x`)."""

from __future__ import annotations

import re
from collections.abc import Callable, Mapping
from dataclasses import dataclass
from typing import Any

_SET = re.compile(r"^\s*([A-Za-z0-9_./-]+)\s+(in|notin)\s+\(([^)]*)\)\s*$")
_EQ = re.compile(r"^\s*([A-Za-z0-9_./-]+)\s*(==|=|!=)\s*([A-Za-z0-9_.-]*)\s*$")
_EXISTS = re.compile(r"^\s*(!?)\s*([A-Za-z0-9_./-]+)\s*$")


class SelectorError(ValueError):
    pass


@dataclass(frozen=True)
class Requirement:
    key: str
    op: str  # "=", "!=", "in", "notin", "exists", "!exists"
    values: frozenset[str] = frozenset()

    def matches(self, labels: Mapping[str, str]) -> bool:
        present = self.key in labels
        if self.op == "exists":
            return present
        if self.op == "!exists":
            return not present
        if self.op in ("=", "in"):
            return present and labels[self.key] in self.values
        return not present or labels[self.key] not in self.values  # "!=", "notin"


def _split_top_level(text: str) -> list[str]:
    """Split on commas that are not inside parentheses."""
    parts: list[str] = []
    current: list[str] = []
    depth = 0
    for char in text:
        if char == "(":
            depth += 1
        elif char == ")":
            depth -= 1
        if char == "," and depth == 0:
            parts.append("".join(current))
            current = []
        else:
            current.append(char)
    parts.append("".join(current))
    return [p for p in parts if p.strip()]


def parse_label_selector(text: str) -> list[Requirement]:
    requirements = []
    for part in _split_top_level(text or ""):
        if match := _SET.match(part):
            values = frozenset(v.strip() for v in match.group(3).split(",") if v.strip())
            requirements.append(Requirement(match.group(1), match.group(2), values))
        elif match := _EQ.match(part):
            op = "!=" if match.group(2) == "!=" else "="
            requirements.append(Requirement(match.group(1), op, frozenset([match.group(3)])))
        elif match := _EXISTS.match(part):
            requirements.append(Requirement(match.group(2), "!exists" if match.group(1) else "exists"))
        else:
            raise SelectorError(f"unable to parse requirement {part.strip()!r} of label selector {text!r}")
    return requirements


def label_matcher(text: str) -> Callable[[Mapping[str, str]], bool]:
    requirements = parse_label_selector(text)
    return lambda labels: all(r.matches(labels) for r in requirements)


_FIELDS: dict[str, Callable[[dict[str, Any]], str]] = {
    "metadata.name": lambda o: str(o.get("metadata", {}).get("name", "")),
    "metadata.namespace": lambda o: str(o.get("metadata", {}).get("namespace", "")),
    "status.phase": lambda o: str((o.get("status") or {}).get("phase", "")),
    "spec.nodeName": lambda o: str((o.get("spec") or {}).get("nodeName", "")),
    "status.podIP": lambda o: str((o.get("status") or {}).get("podIP", "")),
}


def field_matcher(text: str) -> Callable[[dict[str, Any]], bool]:
    checks: list[tuple[Callable[[dict[str, Any]], str], bool, str]] = []
    for part in _split_top_level(text or ""):
        match = re.match(r"^\s*([A-Za-z.]+)\s*(==|=|!=)\s*(.*?)\s*$", part)
        if not match:
            raise SelectorError(f"unable to parse field selector requirement {part.strip()!r}")
        field, op, value = match.groups()
        getter = _FIELDS.get(field)
        if getter is None:
            raise SelectorError(f"field label not supported: {field} (supported: {', '.join(sorted(_FIELDS))})")
        checks.append((getter, op != "!=", value))
    return lambda obj: all((get(obj) == value) == equal for get, equal, value in checks)

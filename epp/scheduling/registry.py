"""Plugin types by name, from the `epp.plugins` entry-point group (in-tree and third-party alike)."""

from __future__ import annotations

import functools
from importlib.metadata import entry_points

from epp.scheduling.plugin import Plugin

GROUP = "epp.plugins"


class UnknownPluginType(KeyError):
    pass


@functools.cache
def plugin_types() -> dict[str, type[Plugin]]:
    found: dict[str, type[Plugin]] = {}
    for entry in entry_points(group=GROUP):
        cls = entry.load()
        if not (isinstance(cls, type) and issubclass(cls, Plugin)):
            raise TypeError(f"entry point {entry.name} = {entry.value} is not an epp Plugin class")
        if cls.type_name != entry.name:
            raise TypeError(f"entry point {entry.name} loads {cls.__name__} whose type_name is {cls.type_name!r}")
        found[entry.name] = cls
    return found


def plugin_type(name: str) -> type[Plugin]:
    types = plugin_types()
    if name not in types:
        raise UnknownPluginType(name)
    return types[name]


def default_instance(type_name: str, name: str = "") -> Plugin:
    """A plugin of `type_name` with default parameters, named `name` (default: its type name), as the config
    defaults one it needs but does not declare."""
    cls = plugin_type(type_name)
    return cls(name or type_name, cls.parse_parameters({}, ""))

"""EndpointPickerConfig: YAML → typed objects after the reference's defaulting and validation.

Every error names the path in the file and what would be valid; all errors are reported at once.
"""

from __future__ import annotations

import reprlib
from collections.abc import Callable, Mapping
from dataclasses import dataclass, field
from typing import Any

import yaml

from epp.config.datalayer import DataLayerConfig, parse_data_layer
from epp.config.flowcontrol import describe_flow_control, parse_flow_control
from epp.flowcontrol.queue import QueueSettings
from epp.scheduling.plugin import ParameterError, Plugin, ProfileHandler
from epp.scheduling.registry import default_instance, plugin_types
from epp.units import unknown_keys

API_VERSIONS = ("inference.networking.x-k8s.io/v1alpha1", "llm-d.ai/v1alpha1")
KIND = "EndpointPickerConfig"
FEATURE_GATES = ("flowControl", "enableLegacyMetrics", "dataLayer", "haPopulateNonLeaderDatastore")
_TOP_LEVEL = ("apiVersion", "kind", "featureGates", "plugins", "schedulingProfiles", "saturationDetector",
              "dataLayer", "parser", "flowControl")  # fmt: skip
_NOT_BUILT_SECTIONS: dict[str, str] = {}
SATURATION_DETECTORS = ("utilization-detector", "concurrency-detector")

#: the profile used when no configuration is given; config/recommended.yaml holds the same (a test checks)
DEFAULT_CONFIG_TEXT = """\
apiVersion: inference.networking.x-k8s.io/v1alpha1
kind: EndpointPickerConfig
plugins:
- type: approx-prefix-cache-producer
- type: predicted-ttft-producer
- type: predicted-ttft-scorer
- type: lora-affinity-scorer
- type: max-score-picker
schedulingProfiles:
- name: default
  plugins:
  - {pluginRef: predicted-ttft-scorer, weight: 1}
  - {pluginRef: lora-affinity-scorer, weight: 1}
  - {pluginRef: max-score-picker}
"""


class ConfigError(ValueError):
    def __init__(self, errors: list[str]) -> None:
        super().__init__("\n".join(errors))
        self.errors = errors


@dataclass
class PluginInstance:
    name: str
    type: str
    plugin: Plugin


@dataclass
class ProfileEntry:
    ref: str
    weight: float


@dataclass
class Profile:
    name: str
    entries: list[ProfileEntry]


@dataclass
class EndpointPickerConfig:
    plugins: dict[str, PluginInstance]
    profiles: list[Profile]
    feature_gates: list[str] = field(default_factory=list)
    parser: str = "openai-parser"
    saturation_detector: str = "utilization-detector"
    source: str = "<default>"
    flow_control: QueueSettings = field(default_factory=QueueSettings)
    data_layer: DataLayerConfig = field(default_factory=DataLayerConfig)

    def describe(self) -> dict[str, Any]:
        """The effective configuration after defaulting, as a YAML-able document."""
        document: dict[str, Any] = {
            "apiVersion": API_VERSIONS[0],
            "kind": KIND,
            "featureGates": list(self.feature_gates),
            "plugins": [
                {"name": p.name, "type": p.type, "parameters": _params_dict(p.plugin.parameters)}
                for p in self.plugins.values()
            ],
            "schedulingProfiles": [
                {"name": profile.name, "plugins": [{"pluginRef": e.ref, "weight": e.weight} for e in profile.entries]}
                for profile in self.profiles
            ],
            "parser": {"pluginRef": self.parser},
            "saturationDetector": {"pluginRef": self.saturation_detector},
            "flowControl": describe_flow_control(self.flow_control),
        }
        data_layer = self.data_layer.describe()
        if data_layer is not None:
            document["dataLayer"] = data_layer
        return document


def _check_profile_handler(
    plugins: dict[str, PluginInstance],
    profiles: list[Profile],
    raw_plugins: list[Any],
    types: Mapping[str, type[Plugin]],
    error: Callable[[str, str], None],
) -> None:
    """At most one profile handler; it accepts the profiles (and binds its references); rule 2 default."""
    handlers = [p for p in plugins.values() if isinstance(p.plugin, ProfileHandler)]
    names = [p.name for p in profiles]
    if len(handlers) > 1:
        error("plugins", f"several profile handlers ({', '.join(h.name for h in handlers)}); declare at most one")
    elif handlers:
        handler = handlers[0]
        index = next(i for i, raw in enumerate(raw_plugins)
                     if isinstance(raw, Mapping) and (raw.get("name") or raw.get("type")) == handler.name)  # fmt: skip
        assert isinstance(handler.plugin, ProfileHandler)
        for field_path, message in handler.plugin.resolve(names, {n: p.plugin for n, p in plugins.items()}):
            error(f"plugins[{index}]" + (f".{field_path}" if field_path else ""), message)
    elif len(profiles) > 1:
        error("schedulingProfiles", f"{len(profiles)} profiles ({', '.join(names)}) need a profile handler that "
              "runs them; declare one under plugins, e.g. disagg-profile-handler")  # fmt: skip
    elif profiles and "single-profile-handler" in types:
        # Defaulting rule 2: one profile and no handler ⇒ single-profile-handler.
        single = default_instance("single-profile-handler")
        plugins[single.name] = PluginInstance(single.name, single.type_name, single)


def _params_dict(parameters: Any) -> dict[str, Any]:
    import dataclasses

    from epp.scheduling.plugin import parameter_key

    if not dataclasses.is_dataclass(parameters):
        return {}
    describe = getattr(parameters, "describe", None)
    if callable(describe):
        described: dict[str, Any] = describe()
        return described
    return {parameter_key(f): getattr(parameters, f.name) for f in dataclasses.fields(parameters)}


def default_config() -> EndpointPickerConfig:
    return load_config_text(DEFAULT_CONFIG_TEXT, "<built-in default>")


def load_config_file(path: str) -> EndpointPickerConfig:
    try:
        with open(path) as handle:
            text = handle.read()
    except OSError as exc:
        raise ConfigError([f"{path}: cannot read: {exc.strerror or exc}"]) from None
    return load_config_text(text, path)


def load_config_text(text: str, source: str) -> EndpointPickerConfig:
    try:
        document = yaml.safe_load(text)
    except yaml.YAMLError as exc:
        raise ConfigError([f"{source}: invalid YAML: {exc}"]) from None
    except RecursionError:  # PyYAML's composer recurses once per nesting level
        raise ConfigError([f"{source}: invalid YAML: nested too deeply"]) from None
    errors: list[str] = []
    config = _build(document if document is not None else {}, source, errors)
    if errors or config is None:
        raise ConfigError(errors)
    return config


def _build(document: Any, source: str, errors: list[str]) -> EndpointPickerConfig | None:
    def error(path: str, message: str) -> None:
        errors.append(f"{source}: {path}: {message}")

    if not isinstance(document, Mapping):
        error("(top level)", f"expected a mapping ({KIND}), got {type(document).__name__}")
        return None
    for key in document:
        if key not in _TOP_LEVEL:
            error(str(key), f"unknown field; valid fields: {', '.join(_TOP_LEVEL)}")
        elif key in _NOT_BUILT_SECTIONS:
            error(str(key), _NOT_BUILT_SECTIONS[key])
    api_version = document.get("apiVersion", API_VERSIONS[0])
    if api_version not in API_VERSIONS:
        error("apiVersion", f"{_show(api_version)} is not supported; use {' or '.join(API_VERSIONS)}")
    if document.get("kind", KIND) != KIND:
        error("kind", f"{_show(document.get('kind'))}; expected {KIND}")
    gates = document.get("featureGates") or []
    if not isinstance(gates, list):
        error("featureGates", "expected a list of gate names")
        gates = []
    for i, gate in enumerate(gates):
        if gate not in FEATURE_GATES:
            error(f"featureGates[{i}]", f"unknown feature gate {_show(gate)}; known: {', '.join(FEATURE_GATES)}")

    types = plugin_types()
    plugins: dict[str, PluginInstance] = {}
    raw_plugins = document.get("plugins") or []
    if not isinstance(raw_plugins, list):
        error("plugins", "expected a list of {type, name, parameters}")
        raw_plugins = []
    for i, raw in enumerate(raw_plugins):
        path = f"plugins[{i}]"
        if not isinstance(raw, Mapping) or "type" not in raw:
            error(path, "expected a mapping with a 'type' (and optional 'name', 'parameters')")
            continue
        extra = unknown_keys(raw, ("type", "name", "parameters"))
        if extra:
            error(f"{path}.{extra[0]}", "unknown field; valid fields: type, name, parameters")
        kind = raw["type"]
        if not isinstance(kind, str) or kind not in types:
            error(f"{path}.type", f"unknown plugin type {_show(kind)}; known types: {', '.join(sorted(types))}")
            continue
        name = raw.get("name") or kind
        if not isinstance(name, str):
            error(f"{path}.name", f"expected a string, got {_show(name)}")
            continue
        if name in plugins:
            error(f"{path}.name", f"plugin name {_show(name)} is used twice; give one of them a distinct name")
            continue
        try:
            parameters = types[kind].parse_parameters(raw.get("parameters"), f"{path}.parameters")
        except ParameterError as exc:
            errors.append(f"{source}: {exc}")
            continue
        plugins[name] = PluginInstance(name, kind, types[kind](name, parameters))

    profiles: list[Profile] = []
    raw_profiles = document.get("schedulingProfiles")
    if raw_profiles is None:
        # Defaulting rule 1: one profile with every filter, scorer and picker.
        entries = [
            ProfileEntry(p.name, 1.0) for p in plugins.values() if p.plugin.role in ("filter", "scorer", "picker")
        ]
        profiles.append(Profile("default", entries))
    elif not isinstance(raw_profiles, list) or not raw_profiles:
        error("schedulingProfiles", "expected a non-empty list of {name, plugins}")
    else:
        names: set[str] = set()
        for i, raw in enumerate(raw_profiles):
            path = f"schedulingProfiles[{i}]"
            if not isinstance(raw, Mapping) or not raw.get("name") or not isinstance(raw["name"], str):
                error(path, "expected a mapping with a 'name' (a string) and 'plugins'")
                continue
            if raw["name"] in names:
                error(f"{path}.name", f"profile name {_show(raw['name'])} is used twice")
            names.add(raw["name"])
            entries = []
            pickers = []
            refs = raw.get("plugins") or []
            if not isinstance(refs, list):
                error(f"{path}.plugins", f"expected a list of {{pluginRef, weight}}, got {_show(refs)}")
                refs = []
            for j, ref in enumerate(refs):
                ref_path = f"{path}.plugins[{j}]"
                if not isinstance(ref, Mapping) or not isinstance(ref.get("pluginRef"), str):
                    error(ref_path, "expected {pluginRef, weight} with pluginRef the name of a declared plugin")
                    continue
                target = plugins.get(ref["pluginRef"])
                if target is None:
                    error(f"{ref_path}.pluginRef", f"{_show(ref['pluginRef'])} is not a plugin declared under plugins; "
                          f"declared: {', '.join(plugins) or 'none'}")  # fmt: skip
                    continue
                weight = ref.get("weight", 1.0)
                if isinstance(weight, bool) or not isinstance(weight, int | float) or weight < 0:
                    error(f"{ref_path}.weight", f"expected a non-negative number, got {_show(weight)}")
                    continue
                if target.plugin.role not in ("filter", "scorer", "picker"):
                    error(f"{ref_path}.pluginRef", f"{target.name} is a {target.plugin.role}; profiles take "
                          "filters, scorers and pickers")  # fmt: skip
                    continue
                if target.plugin.role == "picker":
                    pickers.append(target.name)
                entries.append(ProfileEntry(target.name, float(weight)))
            if len(pickers) > 1:
                error(f"{path}.plugins", f"two pickers ({', '.join(pickers)}); a profile takes at most one")
            profiles.append(Profile(raw["name"], entries))
    _check_profile_handler(plugins, profiles, raw_plugins, types, error)

    # Defaulting rule 3: a max-score-picker in every profile lacking a picker.
    for profile in profiles:
        if not any(plugins[e.ref].plugin.role == "picker" for e in profile.entries):
            if "max-score-picker" not in plugins and "max-score-picker" in types:
                picker = default_instance("max-score-picker")
                plugins[picker.name] = PluginInstance(picker.name, picker.type_name, picker)
            profile.entries.append(ProfileEntry("max-score-picker", 1.0))

    parser = "openai-parser"
    raw_parser = document.get("parser")
    if raw_parser is not None:
        ref = raw_parser.get("pluginRef") if isinstance(raw_parser, Mapping) else None
        target = plugins.get(ref) if isinstance(ref, str) else None
        if target is None or target.type not in ("openai-parser", "passthrough-parser"):
            error("parser.pluginRef", f"{_show(ref)} must name a declared openai-parser or passthrough-parser plugin")
        else:
            parser = target.type
    detector = "utilization-detector"
    raw_detector = document.get("saturationDetector")
    if raw_detector is not None:
        ref = raw_detector.get("pluginRef") if isinstance(raw_detector, Mapping) else None
        target = plugins.get(ref) if isinstance(ref, str) else None
        if target is None or target.type not in SATURATION_DETECTORS:
            error("saturationDetector.pluginRef",
                  f"{_show(ref)} must name a declared {' or '.join(SATURATION_DETECTORS)} plugin")  # fmt: skip
        else:
            detector = target.name
    if detector not in plugins and "utilization-detector" in types:
        plugins[detector] = PluginInstance(
            detector, "utilization-detector", default_instance("utilization-detector", detector)
        )
    flow_control = parse_flow_control(document.get("flowControl"), {n: p.type for n, p in plugins.items()}, error)
    if document.get("flowControl") is not None and "flowControl" not in gates:
        error("flowControl", "has no effect while the flowControl feature gate is off; add featureGates: [flowControl]")
    data_layer = parse_data_layer(
        document,
        gates,
        {n: p.type for n, p in plugins.items()},
        {n: p.plugin.parameters for n, p in plugins.items()},
        error,
    )
    if errors or flow_control is None or data_layer is None:
        return None
    return EndpointPickerConfig(plugins, profiles, list(gates), parser, detector, source, flow_control, data_layer)


_BOUNDED_REPR = reprlib.Repr()
_BOUNDED_REPR.maxstring = _BOUNDED_REPR.maxother = 160
_BOUNDED_REPR.maxlevel = 3


def _show(value: Any) -> str:
    """A bounded repr: YAML aliases can make a small file a huge (or exponentially large) value."""
    return _BOUNDED_REPR.repr(value)

"""The config's `dataLayer` section and the data-layer feature gates: which metrics source scrapes the model
servers and which extractor reads their pages.

As the reference (EndpointPickerConfig v1alpha1):
- no `dataLayer` section: a `metrics-data-source` and a `core-metrics-extractor` are wired together (those
  declared under `plugins`, else defaults; the deprecated `--model-server-metrics-*` flags are the source's
  defaults);
- a `dataLayer` section is exactly what it lists: `sources: [{pluginRef, extractors: [{pluginRef}]}]`; with
  no source nothing is scraped (a warning at startup). `injectDefaults` (llm-d-router's field; its default is
  true under `apiVersion: llm-d.ai/v1alpha1`, false under the GIE apiVersion) wires the default source when
  none is listed;
- gate `enableLegacyMetrics`: the flag-driven legacy scraper, i.e. the `--model-server-metrics-*` flags and
  vLLM's metric names for every endpoint (no per-endpoint engine label); it contradicts a `dataLayer` section
  or declared data-layer plugins, which are then refused;
- gate `dataLayer`: deprecated in the reference, where it does nothing (the data layer is always on); here
  it logs that at startup.
This build has one source type (`metrics-data-source`) and one extractor type (`core-metrics-extractor`),
and scrapes one source per endpoint: more sources, or a source with other than one extractor, are refused.
"""

from __future__ import annotations

import enum
from collections.abc import Callable, Mapping
from dataclasses import dataclass, field
from typing import Any

from epp.datalayer.params import BUILTIN_ENGINES, CoreMetricsExtractorParams, MetricsDataSourceParams
from epp.units import unknown_keys

SOURCE_TYPE = "metrics-data-source"
EXTRACTOR_TYPE = "core-metrics-extractor"
LEGACY_GATE = "enableLegacyMetrics"
#: gates the reference keeps only for compatibility: accepted, and the startup log says they change nothing
NO_OP_GATES = {
    "dataLayer": "featureGates: dataLayer is deprecated and changes nothing (the data layer is always on); remove it",
    "haPopulateNonLeaderDatastore": "featureGates: haPopulateNonLeaderDatastore changes nothing: followers always "
    "run discovery and scraping (a warm table); remove it",
}
ROUTER_API_VERSION = "llm-d.ai/v1alpha1"
DATA_LAYER_FIELDS = ("sources", "injectDefaults")
#: llm-d-router's dataLayer fields this build does not have, with what to use instead
NOT_BUILT_FIELDS = {
    "discovery": "discovery plugins are not built; give endpoints with --endpoints-file, --endpoints, --pool-name "
    "or --endpoint-selector",
    "peerDiscovery": "cross-replica peer discovery is not built",
    "crossReplicaSyncerPluginRef": "cross-replica state sync is not built",
    "crossReplicaSyncInterval": "cross-replica state sync is not built",
}

Error = Callable[[str, str], None]


class DataLayerMode(enum.Enum):
    DEFAULT = "default source and extractor (no dataLayer section)"
    EXPLICIT = "the dataLayer section's source"
    LEGACY = "the flag-driven legacy scraper (enableLegacyMetrics)"
    OFF = "off (a dataLayer section with no source)"


#: enableLegacyMetrics: vLLM's names for every endpoint, whatever its engine label says
LEGACY_EXTRACTOR = CoreMetricsExtractorParams(engine_configs={"vllm": BUILTIN_ENGINES["vllm"]})


@dataclass(frozen=True)
class DataLayerConfig:
    mode: DataLayerMode = DataLayerMode.DEFAULT
    #: the source's parameters; None: from the --model-server-metrics-* flags
    source: MetricsDataSourceParams | None = None
    extractor: CoreMetricsExtractorParams = field(default_factory=CoreMetricsExtractorParams)
    #: (plugin name of the source, of its extractor), for describe()
    names: tuple[str, str] = (SOURCE_TYPE, EXTRACTOR_TYPE)

    @property
    def scrapes(self) -> bool:
        return self.mode is not DataLayerMode.OFF

    def source_or(self, from_flags: MetricsDataSourceParams) -> MetricsDataSourceParams:
        return self.source if self.source is not None else from_flags

    def describe(self) -> dict[str, Any] | None:
        """The effective `dataLayer` section; None when the config had none (it reads back the same)."""
        if self.mode in (DataLayerMode.LEGACY, DataLayerMode.DEFAULT):
            return None
        if self.mode is DataLayerMode.OFF:
            return {"sources": []}
        source, extractor = self.names
        return {"sources": [{"pluginRef": source, "extractors": [{"pluginRef": extractor}]}]}


def parse_data_layer(
    document: Mapping[str, Any],
    gates: list[str],
    plugin_types: Mapping[str, str],
    parameters: Mapping[str, Any],
    error: Error,
) -> DataLayerConfig | None:
    """`plugin_types`: declared plugin name → type; `parameters`: name → parsed parameters."""
    sources = [name for name, kind in plugin_types.items() if kind == SOURCE_TYPE]
    extractors = [name for name, kind in plugin_types.items() if kind == EXTRACTOR_TYPE]
    raw = document.get("dataLayer")
    if LEGACY_GATE in gates:
        if raw is not None:
            error("dataLayer", f"{LEGACY_GATE} scrapes with the --model-server-metrics-* flags and has no data layer; "
                  "remove the dataLayer section or the gate")  # fmt: skip
            return None
        if sources or extractors:
            names = ", ".join(sources + extractors)
            error("plugins", f"{names}: data-layer plugins have no effect under {LEGACY_GATE} (the "
                  "--model-server-metrics-* flags drive scraping); remove them or the gate")  # fmt: skip
            return None
        return DataLayerConfig(DataLayerMode.LEGACY, None, LEGACY_EXTRACTOR)
    if raw is None:
        return _implicit(sources, extractors, parameters, error)
    if not isinstance(raw, Mapping):
        error("dataLayer", "expected a mapping with sources: [{pluginRef, extractors: [{pluginRef}]}]")
        return None
    for key in raw:
        if key in NOT_BUILT_FIELDS:
            error(f"dataLayer.{key}", NOT_BUILT_FIELDS[key])
        elif key not in DATA_LAYER_FIELDS:
            error(f"dataLayer.{key}", f"unknown field; valid fields: {', '.join(DATA_LAYER_FIELDS)}")
    inject = raw.get("injectDefaults", document.get("apiVersion") == ROUTER_API_VERSION)
    if not isinstance(inject, bool):
        error("dataLayer.injectDefaults", f"expected true or false, got {inject!r}")
        return None
    listed = raw.get("sources") or []
    if not isinstance(listed, list):
        error("dataLayer.sources", "expected a list of {pluginRef, extractors: [{pluginRef}]}")
        return None
    if len(listed) > 1:
        error("dataLayer.sources", f"{len(listed)} sources: this build scrapes one metrics source per endpoint; "
              "list one metrics-data-source")  # fmt: skip
        return None
    if not listed:
        unused = sources + extractors
        if unused and not inject:
            error("dataLayer.sources", f"empty, so the declared {', '.join(unused)} would do nothing; list the "
                  "source (with its extractor) or remove the plugins")  # fmt: skip
            return None
        if inject:
            return _implicit(sources, extractors, parameters, error)
        return DataLayerConfig(DataLayerMode.OFF)
    return _explicit(listed[0], plugin_types, parameters, error)


def _implicit(
    sources: list[str], extractors: list[str], parameters: Mapping[str, Any], error: Error
) -> DataLayerConfig | None:
    for kind, names in ((SOURCE_TYPE, sources), (EXTRACTOR_TYPE, extractors)):
        if len(names) > 1:
            error("plugins", f"{len(names)} {kind} plugins ({', '.join(names)}): say which one runs with "
                  "dataLayer: {sources: [{pluginRef, extractors: [{pluginRef}]}]}")  # fmt: skip
            return None
    source = parameters[sources[0]] if sources else None
    extractor = parameters[extractors[0]] if extractors else CoreMetricsExtractorParams()
    chosen = (sources[0] if sources else SOURCE_TYPE, extractors[0] if extractors else EXTRACTOR_TYPE)
    return DataLayerConfig(DataLayerMode.DEFAULT, source, extractor, chosen)


def _explicit(
    entry: Any, plugin_types: Mapping[str, str], parameters: Mapping[str, Any], error: Error
) -> DataLayerConfig | None:
    path = "dataLayer.sources[0]"
    if not isinstance(entry, Mapping) or "pluginRef" not in entry:
        error(path, "expected {pluginRef, extractors: [{pluginRef}]}")
        return None
    extra = unknown_keys(entry, ("pluginRef", "extractors"))
    if extra:
        error(f"{path}.{extra[0]}", "unknown field; valid fields: pluginRef, extractors")
        return None
    source = entry["pluginRef"]
    if plugin_types.get(source) != SOURCE_TYPE:
        error(f"{path}.pluginRef", f"{source!r} must name a declared {SOURCE_TYPE} plugin")
        return None
    refs = entry.get("extractors") or []
    if not isinstance(refs, list) or len(refs) != 1:
        error(f"{path}.extractors", f"list exactly one {EXTRACTOR_TYPE} (a source without one reads nothing; this "
              "build has one extractor type)")  # fmt: skip
        return None
    ref = refs[0].get("pluginRef") if isinstance(refs[0], Mapping) else None
    if not isinstance(ref, str) or plugin_types.get(ref) != EXTRACTOR_TYPE:
        error(f"{path}.extractors[0].pluginRef", f"{ref!r} must name a declared {EXTRACTOR_TYPE} plugin")
        return None
    unused = [n for n, kind in plugin_types.items() if kind in (SOURCE_TYPE, EXTRACTOR_TYPE) and n not in (source, ref)]
    if unused:
        error("plugins", f"{', '.join(unused)}: declared but not in dataLayer.sources, so they would do nothing; "
              "remove them")  # fmt: skip
        return None
    return DataLayerConfig(DataLayerMode.EXPLICIT, parameters[source], parameters[ref], (source, ref))


#: flags that only shape scraping, and those that are a metrics-data-source's parameter defaults
SCRAPE_FLAGS = ("refresh-metrics-interval", "model-server-metrics-port")
SOURCE_FLAGS = (
    "model-server-metrics-scheme", "model-server-metrics-path", "model-server-metrics-https-insecure-skip-verify",
)  # fmt: skip


def flag_conflicts(data_layer: DataLayerConfig, given: set[str]) -> list[str]:
    """Flags (as given on the command line, dashed) that this data layer would ignore, each with the fix."""
    errors: list[str] = []
    if not data_layer.scrapes:
        errors += [f"--{flag}: nothing is scraped (the config's dataLayer lists no source); remove the flag or "
                   "list a source" for flag in (*SCRAPE_FLAGS, *SOURCE_FLAGS) if flag in given]  # fmt: skip
    elif data_layer.source is not None:
        source = data_layer.names[0]
        errors += [f"--{flag}: the config's metrics-data-source {source!r} sets how to scrape; give its scheme, path "
                   "or insecureSkipVerify parameter instead" for flag in SOURCE_FLAGS if flag in given]  # fmt: skip
    return errors

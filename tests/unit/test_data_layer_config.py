"""The config's dataLayer section and the data-layer feature gates, parsed."""

from __future__ import annotations

import pytest

from epp.app import start
from epp.cli import parse_settings
from epp.config.datalayer import LEGACY_EXTRACTOR, DataLayerMode, flag_conflicts
from epp.config.schema import ConfigError, EndpointPickerConfig, load_config_text
from epp.datalayer.params import CoreMetricsExtractorParams, MetricsDataSourceParams
from epp.servers import StartupError

HEAD = """\
apiVersion: inference.networking.x-k8s.io/v1alpha1
kind: EndpointPickerConfig
"""
LISTED = "dataLayer:\n  sources:\n  - pluginRef: src\n    extractors: [{pluginRef: ext}]\n"
SOURCES = """\
plugins:
- {type: queue-scorer}
- {type: metrics-data-source, name: src, parameters: {path: /custom}}
- {type: core-metrics-extractor, name: ext, parameters: {defaultEngine: sglang}}
"""


def load(text: str, head: str = HEAD) -> EndpointPickerConfig:
    return load_config_text(head + text, "test.yaml")


def errors_of(text: str, head: str = HEAD) -> str:
    with pytest.raises(ConfigError) as caught:
        load(text, head)
    return "\n".join(caught.value.errors)


def test_no_section_wires_the_default_source_from_the_flags() -> None:
    config = load("plugins: [{type: queue-scorer}]\n")
    layer = config.data_layer
    assert layer.mode is DataLayerMode.DEFAULT and layer.scrapes
    flags = MetricsDataSourceParams(path="/from-flags")
    assert layer.source_or(flags) is flags
    assert layer.extractor == CoreMetricsExtractorParams()


def test_no_section_uses_the_declared_source_and_extractor() -> None:
    layer = load(SOURCES).data_layer
    assert layer.mode is DataLayerMode.DEFAULT
    assert layer.source_or(MetricsDataSourceParams()).path == "/custom"
    assert layer.extractor.default_engine == "sglang"


def test_section_lists_the_source_and_its_extractor() -> None:
    layer = load(SOURCES + LISTED).data_layer
    assert layer.mode is DataLayerMode.EXPLICIT
    assert layer.source_or(MetricsDataSourceParams()).path == "/custom"
    assert layer.extractor.default_engine == "sglang"


@pytest.mark.parametrize("section", ["dataLayer: {}\n", "dataLayer: {sources: []}\n"])
def test_section_without_a_source_turns_scraping_off(section: str) -> None:
    layer = load("plugins: [{type: queue-scorer}]\n" + section).data_layer
    assert layer.mode is DataLayerMode.OFF and not layer.scrapes


def test_router_api_version_injects_the_default_source_into_an_empty_section() -> None:
    head = "apiVersion: llm-d.ai/v1alpha1\nkind: EndpointPickerConfig\n"
    layer = load("plugins: [{type: queue-scorer}]\ndataLayer: {}\n", head).data_layer
    assert layer.mode is DataLayerMode.DEFAULT
    off = load("plugins: [{type: queue-scorer}]\ndataLayer: {injectDefaults: false}\n", head)
    assert off.data_layer.mode is DataLayerMode.OFF


def test_legacy_gate_scrapes_with_the_flags_and_vllm_names() -> None:
    layer = load("featureGates: [enableLegacyMetrics]\nplugins: [{type: queue-scorer}]\n").data_layer
    assert layer.mode is DataLayerMode.LEGACY and layer.extractor is LEGACY_EXTRACTOR
    assert layer.extractor.engine({"inference.networking.k8s.io/engine-type": "sglang"}).name == "vllm"


@pytest.mark.parametrize(
    ("text", "needle"),
    [
        ("featureGates: [enableLegacyMetrics]\ndataLayer: {}\n", "remove the dataLayer section or the gate"),
        ("featureGates: [enableLegacyMetrics]\n" + SOURCES, "no effect under enableLegacyMetrics"),
        (SOURCES + "dataLayer: {sources: []}\n", "src, ext would do nothing"),
        (SOURCES + "dataLayer: {sources: [{pluginRef: ext, extractors: [{pluginRef: ext}]}]}\n",
         "sources[0].pluginRef: 'ext' must name a declared metrics-data-source"),
        (SOURCES + "dataLayer: {sources: [{pluginRef: src}]}\n", "list exactly one core-metrics-extractor"),
        (SOURCES + "dataLayer: {sources: [{pluginRef: src, extractors: [{pluginRef: src}]}]}\n",
         "extractors[0].pluginRef: 'src' must name a declared core-metrics-extractor"),
        (SOURCES + "- {type: metrics-data-source, name: two}\n"
         "dataLayer: {sources: [{pluginRef: src, extractors: [{pluginRef: ext}]}, {pluginRef: two}]}\n",
         "one metrics source per endpoint"),
        (SOURCES + "- {type: metrics-data-source, name: two}\n", "2 metrics-data-source plugins (src, two)"),
        (SOURCES + "- {type: metrics-data-source, name: two}\n"
         "dataLayer: {sources: [{pluginRef: src, extractors: [{pluginRef: ext}]}]}\n", "two: declared but not in"),
        ("dataLayer: {discovery: {pluginRef: file-discovery}}\n", "dataLayer.discovery: discovery plugins are not"),
        ("dataLayer: {crossReplicaSyncInterval: 1s}\n", "cross-replica state sync is not built"),
        ("dataLayer: {source: []}\n", "dataLayer.source: unknown field; valid fields: sources, injectDefaults"),
        ("dataLayer: [src]\n", "dataLayer: expected a mapping"),
        ("dataLayer: {injectDefaults: maybe}\n", "injectDefaults: expected true or false"),
    ],
)  # fmt: skip
def test_refusals_name_the_path_and_the_fix(text: str, needle: str) -> None:
    assert needle in errors_of(text)


def test_effective_config_shows_the_section() -> None:
    explicit = load(SOURCES + LISTED)
    assert explicit.describe()["dataLayer"] == {"sources": [{"pluginRef": "src", "extractors": [{"pluginRef": "ext"}]}]}
    off = load("plugins: [{type: queue-scorer}]\ndataLayer: {sources: []}\n")
    assert off.describe()["dataLayer"] == {"sources": []}
    assert "dataLayer" not in load("plugins: [{type: queue-scorer}]\n").describe()


def test_scrape_flags_the_data_layer_would_ignore_are_named() -> None:
    off = load("plugins: [{type: queue-scorer}]\ndataLayer: {}\n").data_layer
    assert flag_conflicts(off, {"refresh-metrics-interval", "v"}) == [
        "--refresh-metrics-interval: nothing is scraped (the config's dataLayer lists no source); remove the flag "
        "or list a source"
    ]
    declared = load(SOURCES).data_layer
    (error,) = flag_conflicts(declared, {"model-server-metrics-path", "refresh-metrics-interval"})
    assert error.startswith("--model-server-metrics-path: the config's metrics-data-source 'src' sets how")
    flags_only = load("plugins: [{type: queue-scorer}]\n").data_layer
    assert flag_conflicts(flags_only, {"model-server-metrics-path", "refresh-metrics-interval"}) == []
    legacy = load("featureGates: [enableLegacyMetrics]\n").data_layer
    assert flag_conflicts(legacy, {"model-server-metrics-scheme"}) == []


async def test_startup_stops_on_an_ignored_scrape_flag() -> None:
    argv = ["--endpoints", "127.0.0.1:1", "--model-server-metrics-path", "/m", "--config-text", SOURCES]
    with pytest.raises(StartupError, match="--model-server-metrics-path: the config's metrics-data-source 'src'"):
        await start(parse_settings(argv))

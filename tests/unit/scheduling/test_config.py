from __future__ import annotations

import re
import subprocess
import sys
from pathlib import Path

import pytest
import yaml

from epp.config.schema import ConfigError, default_config, load_config_file, load_config_text
from tests.support.istio_guide import STEP_2

ROOT = Path(__file__).resolve().parents[3]


def istio_configmap_text() -> str:
    """default-plugins.yaml exactly as the Istio guide's ConfigMap (step 2, kept verbatim in tests/support)."""
    configmap = next(d for d in yaml.safe_load_all(STEP_2) if d and d["kind"] == "ConfigMap")
    text: str = configmap["data"]["default-plugins.yaml"]
    return text


def test_istio_guide_configmap_loads_unchanged() -> None:
    config = load_config_text(istio_configmap_text(), "plugins-config")
    weights = {e.ref: e.weight for e in config.profiles[0].entries}
    assert weights == {
        "queue-scorer": 2,
        "kv-cache-utilization-scorer": 2,
        "prefix-cache-scorer": 3,
        "max-score-picker": 1,
    }


def test_builtin_default_is_config_recommended_yaml() -> None:
    config = default_config()
    shipped = load_config_file(str(Path(__file__).resolve().parents[3] / "config" / "recommended.yaml"))
    assert config.describe() == shipped.describe()
    assert [(e.ref, e.weight) for e in config.profiles[0].entries] == [
        ("predicted-ttft-scorer", 1), ("lora-affinity-scorer", 1), ("max-score-picker", 1)
    ]  # fmt: skip
    assert config.parser == "openai-parser" and config.saturation_detector == "utilization-detector"


def test_the_reference_profile_ships_as_default_plugins_yaml() -> None:
    config = load_config_file(str(Path(__file__).resolve().parents[3] / "config" / "default-plugins.yaml"))
    assert [(e.ref, e.weight) for e in config.profiles[0].entries] == [
        ("queue-scorer", 2), ("kv-cache-utilization-scorer", 2), ("prefix-cache-scorer", 3), ("max-score-picker", 1)
    ]  # fmt: skip


@pytest.mark.parametrize(
    ("text", "message"),
    [
        ("plugins: [{type: nope}]", r"plugins\[0\]\.type: unknown plugin type 'nope'; known types: .*queue-scorer"),
        ("featureGates: [fast]", r"featureGates\[0\]: unknown feature gate 'fast'; known: flowControl"),
        ("plugins: [{type: queue-scorer}]\nschedulingProfiles: [{name: a, plugins: [{pluginRef: x}]}]",
         r"schedulingProfiles\[0\]\.plugins\[0\]\.pluginRef: 'x' is not a plugin declared"),
        ("plugins: [{type: random-picker}, {type: max-score-picker}]\n"
         "schedulingProfiles: [{name: a, plugins: [{pluginRef: random-picker}, {pluginRef: max-score-picker}]}]",
         r"two pickers"),
        ("plugins: [{type: max-score-picker, parameters: {maxNumOfEndpoints: two}}]",
         r"plugins\[0\]\.parameters\.maxNumOfEndpoints: expected an integer, got 'two'"),
        ("plugins: [{type: approx-prefix-cache-producer, parameters: {blockSizeTokens: 0}}]",
         r"blockSizeTokens must be positive"),
        ("plugins: [{type: queue-scorer, parameters: {weight: 2}}]", r"unknown parameter of queue-scorer"),
        ("plugins: [{type: concurrency-detector, parameters: {'': 1, 0: 2, null: 3}}]",
         r"plugins\[0\]\.parameters\.: unknown parameter of concurrency-detector; known: concurrencyMode"),
        ("plugins: [{type: queue-scorer, 7: x}]", r"plugins\[0\]\.7: unknown field; valid fields: type, name"),
    ],
)  # fmt: skip
def test_errors_name_the_path_and_the_fix(text: str, message: str) -> None:
    with pytest.raises(ConfigError) as error:
        load_config_text(text, "cfg.yaml")
    assert any(re.search(message, line) for line in error.value.errors), error.value.errors


def test_config_check_command(tmp_path: Path) -> None:
    good = subprocess.run([sys.executable, "-m", "epp.cli", "config", "check", str(ROOT / "config" / "lora.yaml")],
                          capture_output=True, text=True)  # fmt: skip
    assert good.returncode == 0 and "lora-affinity-scorer" in good.stdout
    bad = tmp_path / "bad.yaml"
    bad.write_text("plugins: [{type: queue-scorerr}]\n")
    result = subprocess.run(
        [sys.executable, "-m", "epp.cli", "config", "check", str(bad)], capture_output=True, text=True
    )
    assert result.returncode == 1 and "plugins[0].type: unknown plugin type 'queue-scorerr'" in result.stderr


@pytest.mark.parametrize("path", sorted((ROOT / "config").glob("*.yaml")), ids=lambda p: p.name)
def test_every_shipped_config_is_valid_and_routable_by_the_shipped_envoy(path: Path) -> None:
    config = load_config_text(path.read_text(), str(path))
    # deploy/envoy's ORIGINAL_DST cluster routes to one ip:port; a fallback list would be a 503 there
    counts = {name: getattr(instance.plugin, "count", 1) for name, instance in config.plugins.items()}
    assert all(count == 1 for count in counts.values()), counts


def test_effective_config_with_engine_settings_prints_and_loads_again() -> None:
    import yaml

    text = """
plugins:
- type: core-metrics-extractor
  parameters:
    defaultEngine: custom
    engineConfigs:
    - {name: custom, queuedRequestsSpec: 'q{a="1"}', runningRequestsSpec: r, kvUsageSpec: kv}
- type: queue-scorer
"""
    from epp.datalayer.params import CoreMetricsExtractorParams

    config = load_config_text(text, "t")
    printed = yaml.safe_dump(config.describe(), sort_keys=False)  # used to raise RepresenterError
    assert 'q{a="1"}' in printed
    extractor = next(p for p in yaml.safe_load(printed)["plugins"] if p["type"] == "core-metrics-extractor")
    parameters = config.plugins["core-metrics-extractor"].plugin.parameters
    assert CoreMetricsExtractorParams.from_dict(extractor["parameters"], "printed") == parameters

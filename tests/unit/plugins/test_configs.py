"""The example configs for these plugins pass `epp config check`; effective parameters read back unchanged."""

from __future__ import annotations

from pathlib import Path

import pytest
import yaml

from epp.config.check import main as config_check
from epp.config.schema import load_config_file
from epp.scheduling.registry import plugin_type

CONFIG = Path(__file__).resolve().parents[3] / "config"
EXAMPLES = ["pd-disagg.yaml", "session-affinity.yaml", "inflight-load.yaml", "conformance-testing.yaml"]


@pytest.mark.parametrize("name", EXAMPLES)
def test_example_passes_config_check(name: str, capsys: pytest.CaptureFixture[str]) -> None:
    assert config_check([str(CONFIG / name)]) == 0
    effective = yaml.safe_load(capsys.readouterr().out)
    loaded = load_config_file(str(CONFIG / name))
    for described in effective["plugins"]:  # what `config check` prints parses back to the same parameters
        cls = plugin_type(described["type"])
        parameters = cls.parse_parameters(described["parameters"], described["name"])
        assert parameters == loaded.plugins[described["name"]].plugin.parameters


def test_examples_use_the_new_plugins() -> None:
    pd = load_config_file(str(CONFIG / "pd-disagg.yaml"))
    assert [p.name for p in pd.profiles] == ["decode", "prefill"]
    assert pd.plugins["disagg-profile-handler"].type == "disagg-profile-handler"
    assert load_config_file(str(CONFIG / "inflight-load.yaml")).saturation_detector == "concurrency-detector"


def test_broken_example_fails_with_the_path_and_the_fix(tmp_path: Path, capsys: pytest.CaptureFixture[str]) -> None:
    broken = tmp_path / "pd.yaml"
    broken.write_text(
        (CONFIG / "pd-disagg.yaml").read_text().replace("prefill: prefix-based-pd-decider", "prefill: pd")
    )
    assert config_check([str(broken)]) == 1
    assert (
        "plugins[6].parameters.deciders.prefill: 'pd' is not declared under plugins; declared deciders: "
        "prefix-based-pd-decider" in capsys.readouterr().err
    )

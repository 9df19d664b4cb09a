"""A scorer from a separately installed distribution is found through the `epp.plugins` entry points."""

from __future__ import annotations

import shutil
import subprocess
import sys
from collections.abc import Iterator
from pathlib import Path

import pytest

from epp.config.schema import ConfigError, load_config_text
from epp.scheduling.framework import build_scheduler
from epp.scheduling.registry import plugin_types
from tests.support.plugins import pool, request

FIXTURE = Path(__file__).resolve().parents[2] / "fixtures" / "thirdparty_scorer"
CONFIG = """
plugins:
- type: queue-scorer
- type: idle-first-scorer
  parameters: {maxRunning: 1}
schedulingProfiles:
- name: default
  plugins: [{pluginRef: queue-scorer, weight: 1}, {pluginRef: idle-first-scorer, weight: 2}]
"""


@pytest.fixture
def installed(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> Iterator[Path]:
    """pip-installs the fixture distribution into a private directory and puts it on sys.path."""
    source = tmp_path / "src"
    shutil.copytree(FIXTURE, source)  # the build writes egg-info and build/ beside the sources
    target = tmp_path / "site"
    subprocess.run(
        [sys.executable, "-m", "pip", "install", "--quiet", "--disable-pip-version-check", "--no-index",
         "--no-deps", "--no-build-isolation", "--target", str(target), str(source)],
        check=True, capture_output=True, timeout=120,
    )  # fmt: skip
    assert list(target.glob("epp_idle_first_scorer-0.1.0.dist-info"))
    monkeypatch.syspath_prepend(str(target))
    plugin_types.cache_clear()
    yield target
    plugin_types.cache_clear()
    sys.modules.pop("epp_idle_first", None)


def test_unknown_before_installation() -> None:
    with pytest.raises(ConfigError, match=r"plugins\[1\]\.type: unknown plugin type 'idle-first-scorer'"):
        load_config_text(CONFIG, "t")


def test_installed_scorer_loads_from_config_and_changes_the_pick(installed: Path) -> None:
    scorer_type = plugin_types()["idle-first-scorer"]
    assert scorer_type.__module__ == "epp_idle_first"
    assert str(installed) in sys.modules["epp_idle_first"].__file__  # type: ignore[operator]
    table = pool(3)
    table.waiting_queue[:3] = [0, 4, 0]
    table.running_requests[:3] = [2, 1, 3]
    config = load_config_text(CONFIG, "t")
    assert config.plugins["idle-first-scorer"].plugin.parameters.max_running == 1
    scheduler = build_scheduler(config, table)
    # queue alone: slots 0 and 2 (1.0 each); with idle-first at weight 2: slot 1 = 0 + 2·1 = 2 beats 1 + 2·0 = 1
    for _ in range(10):
        assert list(scheduler.schedule(request(), table, table.live_slots()).primary) == [1]
    queue_only = build_scheduler(load_config_text("plugins: [{type: queue-scorer}]", "t"), table)
    assert {int(queue_only.schedule(request(), table, table.live_slots()).primary[0]) for _ in range(40)} == {0, 2}

"""docs/plugins.md names every in-tree plugin type, and its scorer example is the tested fixture verbatim."""

from __future__ import annotations

import re
from importlib.metadata import entry_points
from pathlib import Path

ROOT = Path(__file__).resolve().parents[3]
DOC = (ROOT / "docs" / "plugins.md").read_text()


def test_every_in_tree_type_is_documented() -> None:
    in_tree = [e.name for e in entry_points(group="epp.plugins") if e.value.startswith("epp.plugins.")]
    assert len(in_tree) > 30
    missing = [name for name in in_tree if f"`{name}`" not in DOC]
    assert not missing, f"docs/plugins.md does not describe: {', '.join(missing)}"


def test_scorer_example_is_the_installed_fixture() -> None:
    fixture = ROOT / "tests" / "fixtures" / "thirdparty_scorer"
    (example,) = re.findall(r"```python\n(.*?)```", DOC, re.S)
    assert example == (fixture / "epp_idle_first" / "__init__.py").read_text()
    (entry,) = re.findall(r"```toml\n(.*?)```", DOC, re.S)
    assert entry in (fixture / "pyproject.toml").read_text()

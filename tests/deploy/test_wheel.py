"""The wheel the image is built from (the Dockerfile's context: pyproject.toml, README.md, epp, epp_pb, plugins):
the plugins install as epp.plugins, no top-level `plugins`, and neither the simulated vLLM nor the test API
server ships; what the local stack needs is said, not raised."""

from __future__ import annotations

import os
import shutil
import subprocess
import sys
import zipfile
from pathlib import Path

import pytest

from epp.devstack import needs
from epp.devstack.needs import missing
from tests.deploy.validation import REPO

IMAGE_CONTEXT = ("pyproject.toml", "README.md", "epp", "epp_pb", "plugins")


@pytest.fixture(scope="module")
def image_wheel(tmp_path_factory: pytest.TempPathFactory) -> Path:
    context = tmp_path_factory.mktemp("context")
    for name in IMAGE_CONTEXT:
        source = REPO / name
        if source.is_dir():
            ignore = shutil.ignore_patterns("__pycache__", "*.pyc")
            shutil.copytree(source, context / name, symlinks=True, ignore=ignore)
        else:
            shutil.copy(source, context / name)
    out = tmp_path_factory.mktemp("dist")
    command = [sys.executable, "-m", "pip", "wheel", "--quiet", "--no-deps", "--no-build-isolation", "-w", str(out)]
    subprocess.run([*command, str(context)], check=True, timeout=120, env={**os.environ, "PIP_NO_INDEX": "1"})
    (wheel,) = out.glob("epp-*.whl")
    return wheel


def test_plugins_install_under_epp_and_nothing_else_at_the_top(image_wheel: Path) -> None:
    names = zipfile.ZipFile(image_wheel).namelist()
    tops = {name.split("/")[0] for name in names if not name.split("/")[0].endswith(".dist-info")}
    assert tops == {"epp", "epp_pb"}, "no top-level plugins, vllmsim or kubesim package"
    assert "epp/plugins/scorers.py" in names and "epp/plugins/prefix_index.py" in names


def test_entry_points_name_epp_plugins(image_wheel: Path) -> None:
    archive = zipfile.ZipFile(image_wheel)
    (entry_points,) = [n for n in archive.namelist() if n.endswith(".dist-info/entry_points.txt")]
    text = archive.read(entry_points).decode()
    assert "queue-scorer = epp.plugins.scorers:QueueScorer" in text
    assert " = plugins." not in text
    assert "vllm-sim = epp.devstack.needs:vllm_sim" in text, "the command says what it needs where vllmsim is absent"


def test_the_local_stack_names_what_an_installed_wheel_lacks(tmp_path: Path) -> None:
    problems = missing(tmp_path / "deploy" / "envoy")
    assert len(problems) == 1 and "envoy.yaml" in problems[0] and "source checkout" in problems[0]
    assert missing() == [], "a checkout with the test extra has everything"


def test_vllm_sim_without_the_simulator_says_what_it_needs(
    monkeypatch: pytest.MonkeyPatch, capsys: pytest.CaptureFixture[str]
) -> None:
    find_spec = needs.importlib.util.find_spec
    monkeypatch.setattr(needs.importlib.util, "find_spec", lambda name: None if name == "vllmsim" else find_spec(name))
    assert needs.vllm_sim() == 2
    assert "package vllmsim" in capsys.readouterr().err
    assert any("vllmsim" in problem for problem in needs.missing())

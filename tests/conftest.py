"""Suite-wide: everything the tests write to the temp directory (epp, Envoy, kubesim and Prometheus logs
and state) goes under pytest's base temp, which keeps the last three runs for inspection and removes
older ones, instead of accumulating in /tmp. The soft limit of open files is raised to the hard one, as epp
does at startup, so a user whose login shell sets 1,024 can hold the e2e tests' thousand connections (Envoy and
epp started by the tests inherit it)."""

from __future__ import annotations

import os
import tempfile
from collections.abc import Iterator

import pytest

from epp.servers import raise_open_files_limit

raise_open_files_limit()


@pytest.fixture(scope="session", autouse=True)
def suite_temp_directory(tmp_path_factory: pytest.TempPathFactory) -> Iterator[None]:
    directory = tmp_path_factory.mktemp("tmp", numbered=False)
    saved_env, saved_default = os.environ.get("TMPDIR"), tempfile.tempdir
    os.environ["TMPDIR"] = str(directory)  # subprocesses (epp, kubelet pods) inherit it
    tempfile.tempdir = str(directory)
    yield
    tempfile.tempdir = saved_default
    if saved_env is None:
        os.environ.pop("TMPDIR", None)
    else:
        os.environ["TMPDIR"] = saved_env

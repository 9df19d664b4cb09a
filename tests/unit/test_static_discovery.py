from __future__ import annotations

import os
from pathlib import Path

import pytest

from epp.datastore.table import EndpointTable
from epp.discovery.static import EndpointsFileWatcher, EndpointSpecError, parse_endpoints_flag


def test_endpoints_flag() -> None:
    endpoints = parse_endpoints_flag("10.0.0.1:8000, [fd00::2]:8001")
    assert [e.hostport for e in endpoints] == ["10.0.0.1:8000", "[fd00::2]:8001"]


@pytest.mark.parametrize(("value", "message"), [("10.0.0.1", "expected host:port"), ("10.0.0.1:0", "port 0"),
                                                ("a:1,a:1", "listed twice")])  # fmt: skip
def test_endpoints_flag_errors_name_the_value(value: str, message: str) -> None:
    with pytest.raises(EndpointSpecError, match=message):
        parse_endpoints_flag(value)


def write(path: Path, text: str) -> None:
    path.write_text(text)
    stamp = path.stat().st_mtime + 1
    os.utime(path, (stamp, stamp))


def test_endpoints_file_reload_keeps_slots_and_survives_broken_edits(tmp_path: Path) -> None:
    path = tmp_path / "endpoints.yaml"
    write(path, "endpoints:\n- {address: 10.0.0.1, port: 8000, name: a, labels: {role: decode}}\n"
                "- {address: 10.0.0.2, port: 8000, name: b}\n")  # fmt: skip
    table = EndpointTable(8)
    watcher = EndpointsFileWatcher(path, table)
    watcher.load_now()
    slot_a = table.slot_of("a")
    assert len(table) == 2 and table.endpoint(slot_a).labels == {"role": "decode"}  # type: ignore[arg-type]
    write(path, "- {address: 10.0.0.1, port: 8000, name: a, labels: {role: decode}}\n"
                "- {address: 10.0.0.3, port: 8000, name: c}\n")  # fmt: skip
    assert watcher.poll()
    assert table.slot_of("a") == slot_a and table.slot_of("b") is None and table.slot_of("c") is not None
    write(path, "- {address: 10.0.0.1, prt: 8000}\n")
    assert not watcher.poll()
    assert watcher.errors == 1 and len(table) == 2


def test_endpoints_file_errors_name_the_path(tmp_path: Path) -> None:
    path = tmp_path / "e.yaml"
    write(path, "- {address: 10.0.0.1, port: 99999}\n")
    with pytest.raises(EndpointSpecError, match=r"endpoints\[0\]\.port: port 99999"):
        EndpointsFileWatcher(path, EndpointTable(4)).load_now()


def test_endpoints_file_with_one_address_under_two_names_is_refused(tmp_path: Path) -> None:
    path = tmp_path / "e.yaml"
    write(path, "- {address: 10.0.0.1, port: 8000, name: a}\n- {address: 10.0.0.1, port: 8000, name: b}\n")
    with pytest.raises(EndpointSpecError, match=r"10\.0\.0\.1:8000 is listed twice \(as a and b\)"):
        EndpointsFileWatcher(path, EndpointTable(4)).load_now()

from __future__ import annotations

import asyncio
import logging
import os
import time
from collections.abc import Callable
from pathlib import Path

import pytest

from epp.datastore.table import Endpoint, EndpointTable
from epp.discovery import static
from epp.discovery.static import EndpointsFileWatcher, EndpointSpecError, parse_endpoints_flag


def test_endpoints_flag() -> None:
    endpoints = parse_endpoints_flag("10.0.0.1:8000, [fd00::2]:8001")
    assert [e.hostport for e in endpoints] == ["10.0.0.1:8000", "[fd00::2]:8001"]


@pytest.mark.parametrize(("value", "message"), [("10.0.0.1", "expected ip:port"), ("10.0.0.1:0", "port 0"),
                                                ("127.0.0.1:1,127.0.0.1:1", "listed twice")])  # fmt: skip
def test_endpoints_flag_errors_name_the_value(value: str, message: str) -> None:
    with pytest.raises(EndpointSpecError, match=message):
        parse_endpoints_flag(value)


def write(path: Path, text: str) -> None:
    path.write_text(text)
    stamp = path.stat().st_mtime + 1
    os.utime(path, (stamp, stamp))


def entries(*ports: int) -> str:
    return "endpoints:\n" + "".join(f"- {{address: 127.0.0.1, port: {port}}}\n" for port in ports)


def keys(table: EndpointTable) -> list[str]:
    return sorted(e.key for e in table.endpoints if e is not None)


def poll_settled(watcher: EndpointsFileWatcher) -> bool:
    """A change is read only once a second poll sees it unchanged."""
    assert not watcher.poll()
    return watcher.poll()


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
    assert poll_settled(watcher)
    assert table.slot_of("a") == slot_a and table.slot_of("b") is None and table.slot_of("c") is not None
    write(path, "- {address: 10.0.0.1, prt: 8000}\n")
    assert not poll_settled(watcher)
    assert watcher.errors == 1 and len(table) == 2
    assert not watcher.poll() and watcher.errors == 1  # a broken version is reported once


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


# --- more endpoints than the table holds ------------------------------------------------------------


def test_a_file_larger_than_the_table_is_refused_and_the_previous_list_stays(
    tmp_path: Path, caplog: pytest.LogCaptureFixture
) -> None:
    path = tmp_path / "e.yaml"
    write(path, entries(9001, 9002))
    table = EndpointTable(3)
    watcher = EndpointsFileWatcher(path, table)
    watcher.load_now()
    write(path, entries(9003, 9004, 9005, 9006))
    with caplog.at_level(logging.ERROR, logger="epp.discovery"):
        assert not poll_settled(watcher)
    assert keys(table) == ["127.0.0.1:9001", "127.0.0.1:9002"] and watcher.errors == 1
    assert "4 endpoints, more than the endpoint table's capacity of 3; start epp with --max-endpoints 4" in caplog.text
    write(path, entries(9007))
    assert poll_settled(watcher)
    assert keys(table) == ["127.0.0.1:9007"]


def test_a_file_larger_than_the_table_stops_startup(tmp_path: Path) -> None:
    path = tmp_path / "e.yaml"
    write(path, entries(9001, 9002, 9003, 9004))
    table = EndpointTable(3)
    with pytest.raises(EndpointSpecError, match=rf"{path}: 4 endpoints, .* capacity of 3; .*--max-endpoints 4"):
        EndpointsFileWatcher(path, table).load_now()
    assert len(table) == 0


async def test_the_watcher_keeps_polling_after_an_unexpected_error(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch, caplog: pytest.LogCaptureFixture
) -> None:
    monkeypatch.setattr(static, "POLL_INTERVAL_S", 0.01)
    path = tmp_path / "e.yaml"
    write(path, entries(9001))
    table = EndpointTable(4)
    watcher = EndpointsFileWatcher(path, table)
    watcher.load_now()
    replace_all = table.replace_all
    failures = [RuntimeError("boom")]

    def flaky(endpoints: list[Endpoint]) -> None:
        if failures:
            raise failures.pop()
        replace_all(endpoints)

    monkeypatch.setattr(table, "replace_all", flaky)
    write(path, entries(9002))
    with caplog.at_level(logging.ERROR, logger="epp.discovery"):
        watcher.start()
        try:
            deadline = time.monotonic() + 5
            while watcher.reloads == 0 and time.monotonic() < deadline:
                await asyncio.sleep(0.01)
        finally:
            await watcher.stop()
    assert keys(table) == ["127.0.0.1:9002"] and watcher.errors == 1
    [record] = [r for r in caplog.records if r.levelno == logging.ERROR]
    assert record.exc_info is not None and "still watching" in record.getMessage()


# --- files rewritten in place ---------------------------------------------------------------------


@pytest.mark.parametrize("text", ["", "\n  \n", "# rev 7\n"])
def test_an_empty_file_is_refused_and_the_previous_list_stays(
    tmp_path: Path, text: str, caplog: pytest.LogCaptureFixture
) -> None:
    path = tmp_path / "e.yaml"
    write(path, entries(9001, 9002))
    table = EndpointTable(4)
    watcher = EndpointsFileWatcher(path, table)
    watcher.load_now()
    write(path, text)
    with caplog.at_level(logging.ERROR, logger="epp.discovery"):
        assert not poll_settled(watcher)
    assert len(table) == 2 and watcher.errors == 1
    assert "the file is empty; to run with no endpoints write `endpoints: []`" in caplog.text


def test_an_empty_file_stops_startup(tmp_path: Path) -> None:
    path = tmp_path / "e.yaml"
    write(path, "")
    with pytest.raises(EndpointSpecError, match=rf"{path}: the file is empty; .* write `endpoints: \[\]`"):
        EndpointsFileWatcher(path, EndpointTable(4)).load_now()


@pytest.mark.parametrize("text", ["endpoints: []\n", "[]\n"])
def test_an_explicit_empty_list_means_no_endpoints(tmp_path: Path, text: str) -> None:
    path = tmp_path / "e.yaml"
    write(path, entries(9001))
    table = EndpointTable(4)
    watcher = EndpointsFileWatcher(path, table)
    watcher.load_now()
    write(path, text)
    assert poll_settled(watcher)
    assert len(table) == 0 and watcher.errors == 0


def test_a_file_still_being_written_is_applied_only_once_it_settles(tmp_path: Path) -> None:
    path = tmp_path / "e.yaml"
    write(path, entries(9001, 9002, 9003, 9004, 9005))
    table = EndpointTable(8)
    watcher = EndpointsFileWatcher(path, table)
    watcher.load_now()
    full = "# rev 2\n" + entries(9001, 9002, 9003, 9004, 9005)
    write(path, full[: full.index("- {address: 127.0.0.1, port: 9004")])  # a prefix that parses: 3 endpoints
    assert not watcher.poll()
    write(path, full)  # the writer finishes before the next poll
    assert not watcher.poll()
    assert len(table) == 5
    assert watcher.poll()
    assert len(table) == 5 and watcher.reloads == 1 and watcher.errors == 0


def rewrite_during_reads(monkeypatch: pytest.MonkeyPatch, path: Path, texts: list[str]) -> None:
    """Each read of `path` returns what it held, then a writer replaces it with the next of `texts`."""
    read_text: Callable[..., str] = Path.read_text

    def racing(self: Path, *args: object, **kwargs: object) -> str:
        text = read_text(self, *args, **kwargs)
        if self == path and texts:
            write(path, texts.pop(0))
        return text

    monkeypatch.setattr(Path, "read_text", racing)


def test_a_file_that_changes_while_read_is_not_applied(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    path = tmp_path / "e.yaml"
    write(path, entries(9001, 9002))
    table = EndpointTable(4)
    watcher = EndpointsFileWatcher(path, table)
    watcher.load_now()
    write(path, entries(9001))
    rewrite_during_reads(monkeypatch, path, [entries(9001, 9002, 9003)])
    assert not poll_settled(watcher)  # read the 1-endpoint version, but it changed meanwhile
    assert len(table) == 2 and watcher.errors == 0
    assert poll_settled(watcher)
    assert len(table) == 3


def test_startup_rereads_a_file_that_changes_while_read(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setattr(static, "START_RETRY_S", 0.0)
    path = tmp_path / "e.yaml"
    write(path, "")
    rewrite_during_reads(monkeypatch, path, [entries(9001, 9002)])
    table = EndpointTable(4)
    EndpointsFileWatcher(path, table).load_now()
    assert len(table) == 2


def test_startup_gives_up_on_a_file_that_keeps_changing(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setattr(static, "START_RETRY_S", 0.0)
    path = tmp_path / "e.yaml"
    write(path, entries(9001))
    rewrite_during_reads(monkeypatch, path, [entries(9001 + i) for i in range(static.START_ATTEMPTS)])
    with pytest.raises(EndpointSpecError, match=rf"{path}: the file kept changing .* rename it into place"):
        EndpointsFileWatcher(path, EndpointTable(4)).load_now()


# --- addresses must be IP literals ----------------------------------------------------------------


@pytest.mark.parametrize("value", ["localhost:8000", "127.0.0.1:8000,vllm-0.vllm.default.svc:8000"])
def test_host_names_are_refused_in_the_flag(value: str) -> None:
    host = value.split(",")[-1].rpartition(":")[0]
    with pytest.raises(EndpointSpecError, match=rf"{host!r} is not an IP address; the gateway routes to ip:port"
                                                r".*e\.g\. 127\.0\.0\.1 instead of localhost"):  # fmt: skip
        parse_endpoints_flag(value)


def test_host_names_are_refused_in_the_file(tmp_path: Path) -> None:
    path = tmp_path / "e.yaml"
    write(path, "- {address: 127.0.0.1, port: 8000}\n- {address: localhost, port: 8001}\n")
    with pytest.raises(EndpointSpecError, match=r"endpoints\[1\]\.address: 'localhost' is not an IP address; "
                                                r"the gateway routes to ip:port"):  # fmt: skip
        EndpointsFileWatcher(path, EndpointTable(4)).load_now()


def test_ip_literals_are_accepted_in_the_file(tmp_path: Path) -> None:
    path = tmp_path / "e.yaml"
    write(path, "- {address: 127.0.0.1, port: 8000}\n- {address: '::1', port: 8000}\n")
    table = EndpointTable(4)
    EndpointsFileWatcher(path, table).load_now()
    assert keys(table) == ["127.0.0.1:8000", "[::1]:8000"]

"""SharedColumns: a peer's numbers are added into the owner's columns by ip:port and taken out again."""

from __future__ import annotations

import numpy as np
import pytest

from epp.datastore.table import Endpoint, EndpointTable
from epp.shared.columns import SharedColumns


def _pool() -> tuple[EndpointTable, SharedColumns]:
    table = EndpointTable(8)
    for i in range(3):
        table.add(Endpoint(f"10.0.0.{i + 1}", 8000, name=f"pod-{i}"))
    shared = SharedColumns(table)
    shared.register("inflight/requests", table.inflight_requests)
    shared.register("inflight/tokens", table.inflight_tokens)
    return table, shared


def test_a_peers_report_adds_into_the_column_and_own_values_stay_apart() -> None:
    table, shared = _pool()
    table.inflight_requests[0] = 2.0  # this replica's own
    shared.receive("b", ["inflight/requests", "inflight/tokens"], ["10.0.0.1:8000"], np.array([[3.0, 30.0]]), False, 0)
    assert table.inflight_requests[0] == 5.0 and table.inflight_tokens[0] == 30.0
    assert shared.own(np.array([0], dtype=np.intp)).tolist() == [[2.0, 0.0]]
    # the owner releases one of its own: the peer's part stays
    table.inflight_requests[0] -= 1.0
    assert shared.own(np.array([0], dtype=np.intp)).tolist() == [[1.0, 0.0]]
    # a second peer adds up; a new report from the first replaces its earlier one
    shared.receive("c", ["inflight/requests"], ["10.0.0.1:8000"], np.array([[4.0]]), False, 0)
    shared.receive("b", ["inflight/requests", "inflight/tokens"], ["10.0.0.1:8000"], np.array([[1.0, 5.0]]), False, 0)
    assert table.inflight_requests[0] == 1.0 + 1.0 + 4.0 and table.inflight_tokens[0] == 5.0


def test_a_full_report_replaces_everything_the_peer_said_and_a_silent_peer_drops_out() -> None:
    table, shared = _pool()
    names = ["inflight/requests"]
    shared.receive("b", names, ["10.0.0.1:8000", "10.0.0.2:8000"], np.array([[1.0], [2.0]]), True, now=10.0)
    assert table.inflight_requests[:3].tolist() == [1.0, 2.0, 0.0]
    shared.receive("b", names, ["10.0.0.3:8000"], np.array([[7.0]]), True, now=11.0)
    assert table.inflight_requests[:3].tolist() == [0.0, 0.0, 7.0]
    shared.receive("c", names, ["10.0.0.3:8000"], np.array([[1.0]]), True, now=13.0)
    assert shared.expire(now=14.5, ttl=3.0) == ["b"]
    assert table.inflight_requests[:3].tolist() == [0.0, 0.0, 1.0]
    assert shared.peers == 1
    shared.forget("c")
    assert table.inflight_requests[:3].tolist() == [0.0, 0.0, 0.0]


def test_unknown_columns_are_ignored_and_missing_ones_count_zero() -> None:
    table, shared = _pool()
    shared.receive("b", ["other/column", "inflight/tokens"], ["10.0.0.2:8000"], np.array([[9.0, 4.0]]), False, 0)
    assert table.inflight_requests[1] == 0.0 and table.inflight_tokens[1] == 4.0


def test_an_endpoint_this_replica_learns_of_later_gets_the_peers_part_at_the_next_settle() -> None:
    table, shared = _pool()
    shared.receive("b", ["inflight/requests"], ["10.0.0.9:8000"], np.array([[3.0]]), False, 0)
    slot = table.add(Endpoint("10.0.0.9", 8000, name="late"))
    assert table.inflight_requests[slot] == 0.0
    shared.settle()
    assert table.inflight_requests[slot] == 3.0
    assert shared.own(np.array([slot], dtype=np.intp)).tolist() == [[0.0, 0.0]]


def test_a_slot_reused_by_another_endpoint_starts_without_the_old_ones_peer_part() -> None:
    table, shared = _pool()
    shared.receive("b", ["inflight/requests"], ["10.0.0.1:8000"], np.array([[3.0]]), False, 0)
    table.remove("pod-0")
    slot = table.add(Endpoint("10.0.0.7", 8000, name="new"))
    assert slot == 0
    shared.settle()
    assert table.inflight_requests[0] == 0.0
    assert shared.own(np.array([0], dtype=np.intp)).tolist() == [[0.0, 0.0]]


def test_changes_report_only_rows_whose_own_values_moved_and_full_reports_all() -> None:
    table, shared = _pool()
    hostports, values = shared.changes()
    assert hostports == ["10.0.0.1:8000", "10.0.0.2:8000", "10.0.0.3:8000"]  # first time: everything
    assert shared.changes() == ([], pytest.approx(np.zeros((0, 2))))
    table.inflight_requests[1] += 1.0
    table.inflight_tokens[1] += 50.0
    hostports, values = shared.changes()
    assert hostports == ["10.0.0.2:8000"] and values.tolist() == [[1.0, 50.0]]
    # a peer's report changes the column, not this replica's own values: nothing to publish
    shared.receive("b", ["inflight/requests"], ["10.0.0.3:8000"], np.array([[2.0]]), False, 0)
    assert shared.changes()[0] == []
    assert len(shared.changes(full=True)[0]) == 3


def test_registration_is_checked() -> None:
    table, shared = _pool()
    with pytest.raises(ValueError, match="registered twice"):
        shared.register("inflight/requests", table.inflight_requests)
    with pytest.raises(ValueError, match="shape"):
        shared.register("x", np.zeros(3))

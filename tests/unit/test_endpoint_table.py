"""EndpointTable membership: an address is one endpoint's, a move is a remove and an add, and the key and
address indexes always describe exactly the present rows."""

from __future__ import annotations

import random

import pytest

from epp.datastore.table import Endpoint, EndpointTable


def ranks(pod: str, ip: str, ports: list[int]) -> list[Endpoint]:
    return [Endpoint(ip, port, name=f"{pod}-rank-{i}") for i, port in enumerate(ports)]


def assert_consistent(table: EndpointTable) -> None:
    present = {slot: endpoint for slot, endpoint in table.items()}
    assert {endpoint.key: slot for slot, endpoint in present.items()} == table._slot_by_key
    assert {endpoint.hostport: slot for slot, endpoint in present.items()} == table._slot_by_hostport
    assert all(table.hostports[slot] == endpoint.hostport for slot, endpoint in present.items())


@pytest.mark.parametrize(
    ("before", "after"), [([8000, 8001], [8001, 8000]), ([8000, 8001, 8002], [8001, 8002]), ([8000], [8001, 8000])]
)
def test_reordered_target_ports_then_the_pod_leaves(before: list[int], after: list[int]) -> None:
    table = EndpointTable(16)
    table.replace_all(ranks("a", "10.0.0.1", before) + ranks("b", "10.0.0.2", before))
    table.replace_all(ranks("a", "10.0.0.1", after) + ranks("b", "10.0.0.2", after))
    assert_consistent(table)
    assert {table.endpoint(slot).hostport for slot in table.live_slots()} == {
        f"10.0.0.{n}:{port}" for n in (1, 2) for port in after
    }
    for endpoint in ranks("a", "10.0.0.1", after):
        assert table.remove(endpoint.key) is not None
    assert_consistent(table)
    assert sorted(e.key for _, e in table.items()) == [f"b-rank-{i}" for i in range(len(after))]


def test_an_endpoint_at_a_new_address_is_a_new_row() -> None:
    table = EndpointTable(8)
    slot = table.add(Endpoint("10.0.0.1", 8000, name="p"))
    table.inflight_requests[slot] = 3.0
    table.waiting_queue[slot] = 7.0
    epoch = table.epoch[slot]
    moved = table.add(Endpoint("10.0.0.9", 8000, name="p"))
    assert table.epoch[slot] > epoch  # whatever was charged to the old address is not released into it
    assert (table.inflight_requests[moved], table.waiting_queue[moved]) == (0.0, 0.0)
    assert table.slot_of_hostport("10.0.0.1:8000") is None and table.slot_of_hostport("10.0.0.9:8000") == moved
    assert_consistent(table)


def test_same_address_new_labels_is_an_update_in_place() -> None:
    table = EndpointTable(8)
    slot = table.add(Endpoint("10.0.0.1", 8000, name="p"))
    table.inflight_requests[slot] = 2.0
    epoch = table.epoch[slot]
    assert table.add(Endpoint("10.0.0.1", 8000, name="p", labels={"k": "v"}, metrics_port=9090)) == slot
    assert table.inflight_requests[slot] == 2.0 and table.epoch[slot] == epoch
    assert table.endpoint(slot).metrics_port == 9090
    assert_consistent(table)


def test_adding_at_an_address_another_endpoint_holds_removes_that_one() -> None:
    table = EndpointTable(8)
    table.add(Endpoint("10.0.0.1", 8000, name="old"))
    table.add(Endpoint("10.0.0.1", 8000, name="new"))
    assert [e.key for _, e in table.items()] == ["new"]
    assert_consistent(table)


def test_replace_all_refuses_two_endpoints_at_one_address() -> None:
    table = EndpointTable(8)
    with pytest.raises(ValueError, match=r"more than one endpoint at 10\.0\.0\.1:8000"):
        table.replace_all([Endpoint("10.0.0.1", 8000, name="x"), Endpoint("10.0.0.1", 8000, name="y")])


@pytest.mark.parametrize("seed", range(5))
def test_indexes_stay_consistent_under_random_pool_changes(seed: int) -> None:
    rng = random.Random(seed)
    table = EndpointTable(64)
    for _ in range(300):
        pods = rng.sample(range(8), rng.randint(0, 8))
        ports = rng.sample([8000, 8001, 8002, 8003], rng.randint(1, 4))
        wanted = [e for pod in pods for e in ranks(f"p{pod}", f"10.0.0.{pod + 1}", ports)]
        if rng.random() < 0.7:
            table.replace_all(wanted)
            assert sorted(e.key for _, e in table.items()) == sorted(e.key for e in wanted)
        else:  # one pod's change at a time, as the pod watch applies it
            for endpoint in wanted[: rng.randint(0, len(wanted))]:
                table.add(endpoint)
            for _, endpoint in list(table.items())[: rng.randint(0, 2)]:
                table.remove(endpoint.key)
        assert_consistent(table)


@pytest.mark.parametrize("shared", [False, True])
def test_rows_are_the_columns_in_their_order(shared: bool) -> None:
    """`rows` is the same memory as the named columns (a write to either shows in the other), also over a buffer
    another process maps."""
    from epp.datastore.table import COLUMNS

    buffer = bytearray(EndpointTable.buffer_size(6)) if shared else None
    table = EndpointTable(6, buffer=buffer)
    assert table.rows.shape == (len(COLUMNS), 6)
    for i, name in enumerate(COLUMNS):
        table.column(name)[3] = i + 1.5
    assert table.rows[:, 3].tolist() == [i + 1.5 for i in range(len(COLUMNS))]
    table.rows[COLUMNS.index("waiting_queue"), 2] = 7.0
    assert table.waiting_queue[2] == 7.0
    picked = table.rows[:12].take([3, 2], axis=1)
    assert picked[COLUMNS.index("inflight_requests")].tolist() == [COLUMNS.index("inflight_requests") + 1.5, 0.0]

"""Peers' prefix inserts applied together: inserts to one endpoint merge into one that leaves the index holding what
inserting them one by one would, the least recent first out."""

from __future__ import annotations

import numpy as np

from epp.datastore.table import Endpoint, EndpointTable
from epp.plugins.prefix import ApproxPrefixCacheProducer, PrefixParameters
from epp.shared.inserts import apply_inserts, latest_order


def keys(*values: int) -> np.ndarray:
    return np.array(values, dtype=np.uint64)


def producer_on(table: EndpointTable) -> ApproxPrefixCacheProducer:
    producer = ApproxPrefixCacheProducer("prefix", PrefixParameters(auto_tune=False, lru_capacity_per_server=6))
    producer.bind(table)
    return producer


def test_a_repeated_key_keeps_its_last_place() -> None:
    assert latest_order(keys(1, 2, 3, 2, 4, 1)).tolist() == [3, 2, 4, 1]
    assert latest_order(keys(5, 6)).tolist() == [5, 6]


def test_merged_inserts_leave_the_index_as_one_by_one_inserts_do() -> None:
    table = EndpointTable(4)
    table.add(Endpoint("127.0.0.1", 9000, name="a"))
    table.add(Endpoint("127.0.0.1", 9001, name="b"))
    inserts = [keys(10, 11, 12), keys(20, 11), keys(30, 31), keys(10, 40)]
    targets = [("127.0.0.1:9000",), ("127.0.0.1:9000", "127.0.0.1:9001"), ("127.0.0.1:9001",), ("127.0.0.1:9000",)]
    merged, one_by_one = producer_on(table), producer_on(table)
    assert apply_inserts(merged, table, targets, inserts) == 5
    for target, record in zip(targets, inserts, strict=True):
        apply_inserts(one_by_one, table, [target], [record])
    probe = keys(10, 11, 12, 20, 30, 31, 40)
    for producer in (merged, one_by_one):  # two more keys at a (capacity 6) evict its least recent, 12
        producer.learn_replicated(0, keys(50, 51))
    for slot in (0, 1):
        assert merged.index.holds(slot, probe).tolist() == one_by_one.index.holds(slot, probe).tolist()
    assert merged.index.holds(0, probe).tolist() == [True, True, False, True, False, False, True]

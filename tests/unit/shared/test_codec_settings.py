"""Records on the wire round-trip and malformed ones are refused; the --shared-state URL is checked."""

from __future__ import annotations

import dataclasses
from pathlib import Path

import numpy as np
import pytest

from epp.cli import parse_settings, validate
from epp.shared.codec import (
    DELTA,
    RecordError,
    decode_inserts,
    decode_load,
    encode_inserts,
    encode_load,
)
from epp.shared.inserts import InsertRecord
from epp.shared.settings import SharedStateError, parse_shared_state


def test_load_reports_round_trip() -> None:
    values = np.array([[1.0, 2.5], [0.0, 7.0]])
    fields = encode_load("a-1", 12.5, DELTA, ["x", "y"], ["10.0.0.1:80", "[::1]:81"], values)
    report = decode_load(fields)
    assert (report.replica, report.sent_at, report.kind) == ("a-1", 12.5, DELTA)
    assert report.names == ["x", "y"] and report.hostports == ["10.0.0.1:80", "[::1]:81"]
    assert report.values.tolist() == values.tolist()


def test_insert_batches_round_trip() -> None:
    records = [
        InsertRecord(("10.0.0.1:80",), np.array([5, 6, 2**64 - 1], dtype=np.uint64), 3.0),
        InsertRecord(("10.0.0.2:80", "10.0.0.3:80"), np.array([9], dtype=np.uint64), 2.0),
    ]
    batch = decode_inserts(encode_inserts("a", "prefix", records))
    assert (batch.replica, batch.plugin, batch.sent_at) == ("a", "prefix", 2.0)
    assert batch.hostports == [("10.0.0.1:80",), ("10.0.0.2:80", "10.0.0.3:80")]
    assert [k.tolist() for k in batch.keys] == [[5, 6, 2**64 - 1], [9]]


def test_malformed_records_are_refused() -> None:
    fields = encode_load("a", 1.0, DELTA, ["x"], ["h:1"], np.array([[1.0]]))
    with pytest.raises(RecordError, match="values"):
        decode_load({**fields, b"x": b"\0" * 16})
    with pytest.raises(RecordError, match="version"):
        decode_load({**fields, b"v": b"9"})
    with pytest.raises(RecordError, match="kind"):
        decode_load({**fields, b"k": b"nonsense"})
    inserts = encode_inserts("a", "p", [InsertRecord(("h:1",), np.array([1, 2], dtype=np.uint64), 0.0)])
    with pytest.raises(RecordError, match="keys"):
        decode_inserts({**inserts, b"x": b"\0" * 8})
    with pytest.raises(RecordError, match="malformed"):
        decode_inserts({k: v for k, v in inserts.items() if k != b"p"})


def test_the_url_and_password_file_are_parsed(tmp_path: Path) -> None:
    store = parse_shared_state("redis://valkey.epp.svc:6380/2")
    assert (store.host, store.port, store.db, store.tls, store.password) == ("valkey.epp.svc", 6380, 2, False, None)
    store = parse_shared_state("rediss://user:p%40ss@10.0.0.5")
    assert (store.port, store.tls, store.username, store.password) == (6379, True, "user", "p@ss")
    assert "p@ss" not in store.url and "***" in store.url
    assert store.client_url == "rediss://user@10.0.0.5:6379/0"
    secret = tmp_path / "password"
    secret.write_text("s3cret\n")
    assert parse_shared_state("redis://127.0.0.1:6379", str(secret)).password == "s3cret"


@pytest.mark.parametrize(
    ("url", "message"),
    [
        ("http://127.0.0.1:6379", "scheme 'http'"),
        ("127.0.0.1:6379", "scheme"),
        ("redis://:6379", "no host"),
        ("redis://h:6379/zero", "must be a number"),
        ("redis://h:6379/0?ssl_cert_reqs=none", "query options"),
        ("redis://h:99999", "--shared-state"),
    ],
)
def test_bad_urls_name_the_flag_and_the_fix(url: str, message: str) -> None:
    with pytest.raises(SharedStateError, match=message):
        parse_shared_state(url)


def test_the_flags_are_validated(tmp_path: Path) -> None:
    base = ["--endpoints", "127.0.0.1:8000"]
    assert validate(parse_settings([*base, "--shared-state", "redis://127.0.0.1:6379"])) == []
    settings = parse_settings([*base])
    settings = dataclasses.replace(settings, shared_state_password_file=str(tmp_path / "missing"))
    assert validate(settings) == ["--shared-state-password-file applies to --shared-state; give the store's URL too"]
    settings = dataclasses.replace(settings, shared_state="redis://u:pw@127.0.0.1")
    (tmp_path / "missing").write_text("x")
    assert "both given" in validate(settings)[0]
    settings = dataclasses.replace(settings, shared_state="redis://127.0.0.1")
    (tmp_path / "missing").unlink()
    assert "cannot read it" in validate(settings)[0]

"""session-affinity-scorer: both strategies, and the session token on the response through the ext_proc core."""

from __future__ import annotations

import base64

import numpy as np
import pytest

from epp.config.schema import ConfigError, load_config_text
from epp.director import Director
from epp.extproc.core import ExtProcStream
from epp.plugins.session import SessionAffinityScorer, decode_token, encode_token
from epp.requests.parsers import openai_parser
from epp.scheduling.framework import build_scheduler
from epp.scheduling.types import ProfileResult, SchedulingResult
from tests.support.extproc import body_msg, headers_msg, response_headers_msg, set_headers
from tests.support.plugins import make, pool, slots, state

ALL = slots(0, 1, 2, 3)


def token(key: str) -> str:
    return base64.b64encode(key.encode()).decode()


def after_pick(scorer: SessionAffinityScorer, cycle: object, slot: int) -> SchedulingResult:
    result = SchedulingResult({"default": ProfileResult(slots(slot))}, "default")
    scorer.pre_request(cycle, result)  # type: ignore[arg-type]
    return result


def test_encoded_endpoint_header_pins_the_named_endpoint() -> None:
    table = pool(4)
    scorer = make(SessionAffinityScorer)
    np.testing.assert_array_equal(scorer.score(state(table, {"x-session-token": token("pod-2")}), ALL), [0, 0, 1, 0])
    for bad in ({"x-session-token": "%%%"}, {"x-session-token": token("pod-9")}, {}):
        np.testing.assert_array_equal(scorer.score(state(table, bad), ALL), [0, 0, 0, 0])
    np.testing.assert_array_equal(scorer.score(state(table, {"x-session-token": token("pod-2")}), slots(0, 1)), [0, 0])


def test_encoded_endpoint_header_writes_the_pick_back() -> None:
    table = pool(4)
    scorer = make(SessionAffinityScorer)
    result = after_pick(scorer, state(table), 3)
    assert result.response_headers == {"x-session-token": token("pod-3")}
    assert decode_token(encode_token("ns/pod-3")) == "ns/pod-3"


def test_session_id_binds_refreshes_and_moves_only_when_its_endpoint_is_gone() -> None:
    table = pool(4)
    scorer = make(SessionAffinityScorer, {"strategy": "session_id"})
    clock = [0.0]
    scorer.clock = lambda: clock[0]
    session = {"x-session-id": "s1"}
    first = state(table, session)
    np.testing.assert_array_equal(scorer.score(first, ALL), [0, 0, 0, 0])  # unbound: no preference
    after_pick(scorer, first, 1)
    second = state(table, session)
    np.testing.assert_array_equal(scorer.score(second, ALL), [0, 1, 0, 0])
    after_pick(scorer, second, 2)  # picked elsewhere although its endpoint was a candidate: binding stays
    assert scorer.bindings["s1"][0] == "pod-1"
    third = state(table, session)
    np.testing.assert_array_equal(scorer.score(third, slots(0, 2, 3)), [0, 0, 0])  # pod-1 not a candidate
    after_pick(scorer, third, 2)
    assert scorer.bindings["s1"][0] == "pod-2"  # moved
    assert after_pick(scorer, state(table), 0).response_headers is None  # no session id: nothing to do


def test_session_id_sources_and_expiry() -> None:
    table = pool(2)
    scorer = make(
        SessionAffinityScorer,
        {
            "strategy": "session_id",
            "sessionIdConfig": {
                "sources": [{"header": "X-Conversation"}, {"header": "x-session-id"}],
                "evictionTtlSeconds": 30,
                "evictionSweepSeconds": 5,
            },
        },
    )
    clock = [0.0]
    scorer.clock = lambda: clock[0]
    after_pick(scorer, state(table, {"x-conversation": "c", "x-session-id": "s"}), 1)  # first source wins
    after_pick(scorer, state(table, {"x-session-id": "s"}), 0)
    assert {k: v[0] for k, v in scorer.bindings.items()} == {"c": "pod-1", "s": "pod-0"}
    clock[0] = 20.0
    after_pick(scorer, state(table, {"x-session-id": "s"}), 0)  # refreshes s at t = 20
    clock[0] = 40.0  # c was last used at 0: 40 > 30 s → swept; s (20 s ago) stays
    after_pick(scorer, state(table), 0)
    assert list(scorer.bindings) == ["s"]


@pytest.mark.parametrize(
    ("parameters", "message"),
    [
        ("{strategy: cookie}", r"plugins\[0\]\.parameters\.strategy: expected encoded_endpoint_header or session_id"),
        ("{sessionIdConfig: {sources: [{attribute: agent-identity}]}}",
         r"plugins\[0\]\.parameters\.sessionIdConfig\.sources\[0\]: expected \{header: NAME\}"),
        ("{sessionIdConfig: {evictionTtlSeconds: 0}}",
         r"sessionIdConfig\.evictionTtlSeconds: expected a positive number of seconds"),
        ("{headerName: x}", r"plugins\[0\]\.parameters\.headerName: unknown parameter of session-affinity-scorer"),
    ],
)  # fmt: skip
def test_session_parameter_errors(parameters: str, message: str) -> None:
    with pytest.raises(ConfigError, match=message):
        load_config_text(f"plugins: [{{type: session-affinity-scorer, parameters: {parameters}}}]", "t")


def test_token_round_trip_through_envoy_messages() -> None:
    table = pool(3)
    config = load_config_text(
        """
plugins: [{type: session-affinity-scorer}, {type: queue-scorer}]
schedulingProfiles:
- name: default
  plugins: [{pluginRef: session-affinity-scorer, weight: 10}, {pluginRef: queue-scorer}]
""",
        "t",
    )
    scheduler = build_scheduler(config, table)
    director = Director(table, scheduler, hooks=scheduler)
    body = b'{"model":"m","prompt":"hello"}'

    def exchange(headers: dict[str, str]) -> tuple[str, str]:
        stream = ExtProcStream(director, openai_parser)
        stream.process(headers_msg(headers))
        destination = set_headers(stream.process(body_msg(body))[0])["x-gateway-destination-endpoint"]
        (response,) = stream.process(response_headers_msg("application/json"))
        stream.close()
        return destination, set_headers(response)["x-session-token"]

    destination, session = exchange({})
    assert base64.b64decode(session).decode() == table.endpoint(table.slot_of_hostport(destination) or 0).key
    table.waiting_queue[table.slot_of_hostport(destination) or 0] = 100  # load alone would move it away
    for _ in range(5):
        assert exchange({"x-session-token": session}) == (destination, session)

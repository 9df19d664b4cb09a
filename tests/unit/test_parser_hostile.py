"""Inputs the fuzzers and property tests found that broke a parser, each answered as documented now; and every
kept fuzz corpus replayed through its target (what `python -m fuzz replay` does)."""

from __future__ import annotations

import time
from pathlib import Path

import pytest

from epp.config.schema import ConfigError, load_config_text
from epp.datalayer.extract import _label_value, extract
from epp.datalayer.params import BUILTIN_ENGINES
from epp.discovery.static import EndpointSpecError, parse_endpoints_text
from epp.k8s.watch import _event
from epp.migrate.convert import MigrationError, Options, plan_migration
from epp.migrate.manifests import ManifestError, load_text
from epp.requests.usage import SSEUsageScanner
from fuzz.targets import TARGETS

CORPUS = Path(__file__).resolve().parents[2] / "fuzz" / "corpus"
PLUGIN = "plugins:\n- type: queue-scorer\n"


@pytest.mark.parametrize(
    ("text", "path"),
    [
        ("plugins:\n- type: [queue-scorer]\n", "plugins[0].type"),
        ("plugins:\n- {type: queue-scorer, name: [a]}\n", "plugins[0].name"),
        (PLUGIN + "schedulingProfiles:\n- name: [p]\n  plugins: []\n", "schedulingProfiles[0]"),
        (
            PLUGIN + "schedulingProfiles:\n- name: p\n  plugins:\n  - pluginRef: [queue-scorer]\n",
            "schedulingProfiles[0].plugins[0]",
        ),
        (PLUGIN + "schedulingProfiles:\n- name: p\n  plugins: 1\n", "schedulingProfiles[0].plugins"),
        ("apiVersion: " + "[" * 600, "invalid YAML: nested too deeply"),
    ],
)
def test_config_values_of_the_wrong_type_are_config_errors_with_their_path(text: str, path: str) -> None:
    with pytest.raises(ConfigError) as raised:
        load_config_text(text, "c.yaml")
    assert any(line.startswith(f"c.yaml: {path}") for line in raised.value.errors), raised.value.errors


def test_config_errors_show_a_bounded_value_of_an_alias_bomb() -> None:
    bomb = "a: &a [x, x, x, x, x, x, x, x]\n" + "".join(
        f"{chr(98 + i)}: &{chr(98 + i)} [*{chr(97 + i)}, *{chr(97 + i)}, *{chr(97 + i)}, *{chr(97 + i)}]\n"
        for i in range(12)
    )
    with pytest.raises(ConfigError) as raised:
        load_config_text(bomb.replace("m: &m", "apiVersion: &m"), "c.yaml")  # 8 * 4**11 strings if printed whole
    assert max(len(line) for line in raised.value.errors) < 2000


@pytest.mark.parametrize(
    ("text", "message"),
    [
        ("- {address: 10.0.0.1, port: 8000, 1: 2}\n", r"unknown field\(s\) 1;"),
        ("- {address: 10.0.0.1, port: 8000, 1: 2, x: 3}\n", r"unknown field\(s\) 1, x;"),
        ("[" * 600, "nested too deeply"),
    ],
)
def test_endpoints_file_with_odd_keys_or_nesting_is_an_endpoint_spec_error(text: str, message: str) -> None:
    with pytest.raises(EndpointSpecError, match=message):
        parse_endpoints_text(text, Path("e.yaml"))


def test_migrate_refuses_unprintable_characters_and_deep_nesting_as_manifest_errors() -> None:
    with pytest.raises(ManifestError, match=r"m.yaml: document 1: invalid YAML .*#x0000"):
        load_text("kind: InferencePool\x00\n", "m.yaml")
    with pytest.raises(ManifestError, match="nested too deeply"):
        load_text("[" * 600, "m.yaml")


POOL = "apiVersion: inference.networking.x-k8s.io/v1alpha2\nkind: InferencePool\nmetadata: {name: p%s}\n"
POOL_SPEC = "spec: {selector: {app: a}, targetPortNumber: 8000, extensionRef: {name: e}}\n"


@pytest.mark.parametrize(
    ("text", "path"),
    [
        (POOL % ", namespace: [a]" + POOL_SPEC, "metadata.namespace"),
        (
            POOL.replace("InferencePool", "InferenceModel") % "" + "spec: {modelName: m, criticality: [Critical], "
            "poolRef: {name: p}}\n",
            "spec.criticality",
        ),
    ],
)
def test_migrate_values_of_the_wrong_type_are_migration_errors_with_their_path(text: str, path: str) -> None:
    with pytest.raises(MigrationError) as raised:
        plan_migration(load_text(text, "m.yaml"), Options())
    assert any(f": {path}: " in line for line in raised.value.errors), raised.value.errors


@pytest.mark.parametrize(
    "line",
    [
        b"0",
        b'"ADDED"',
        b"[]",
        b'{"type":"ADDED","object":[1]}',
        b'{"type":"ADDED","object":{"metadata":"x"}}',
        b"[" * 5000 + b"]" * 5000,
    ],
)
def test_watch_lines_that_are_not_event_objects_are_value_errors(line: bytes) -> None:
    # the reflector's run loop handles ValueError (logs, backs off, watches again); AttributeError and
    # RecursionError escaped it and ended the watch task
    with pytest.raises(ValueError):
        _event(line)


def test_label_values_are_read_pair_by_pair() -> None:
    assert _label_value(b'request_type="waiting\\\\",x="1"', b"x") == b"1"
    assert _label_value(b'request_type="waiting\\\\"', b"request_type") == b"waiting\\\\"
    assert _label_value(b'other="a, k=",k="v"', b"k") == b"v"
    triton = BUILTIN_ENGINES["triton-tensorrt-llm"]
    page = (
        b'nv_trt_llm_request_metrics{request_type="waiting\\\\"} 1\n'
        b'nv_trt_llm_request_metrics{request_type="waiting"} 7\n'
    )
    assert extract(page, triton).waiting == 7.0


@pytest.mark.parametrize("target", sorted(TARGETS))
def test_fuzz_corpus_replays_clean(target: str) -> None:
    files = sorted((CORPUS / target).iterdir())
    assert files, f"fuzz/corpus/{target} is empty"
    for path in files:
        TARGETS[target](path.read_bytes())


def test_sse_stream_without_newlines_costs_linear_time_and_keeps_scanning() -> None:
    # 16 MiB without a newline in 64 KiB chunks re-joined the whole line at every chunk: 24-44 s of event loop
    scanner = SSEUsageScanner()
    started = time.perf_counter()
    for _ in range(256):
        scanner.feed(b"x" * 65536)
    scanner.feed(b'\ndata: {"object":"text_completion","usage":{"prompt_tokens":3,"completion_tokens":1}}\n')
    assert time.perf_counter() - started < 2.0
    assert scanner.usage is not None and scanner.usage.prompt_tokens == 3
    assert len(scanner._tail) == 0


def test_a_request_body_mode_newer_than_the_protos_is_refused_with_its_number() -> None:
    # BodySendMode.Name() raised ValueError on a mode without a name: the stream ended in an UNKNOWN reset
    from .test_extproc_core import headers_msg, make_table, stream_for

    table = make_table("10.0.0.1:8000")
    stream = stream_for(table)
    (response,) = stream.process(headers_msg(mode=20))
    assert response.HasField("immediate_response")
    assert b"request_body_mode 20 is not supported" in response.immediate_response.body
    stream.close()
    assert table.inflight_requests.sum() == 0

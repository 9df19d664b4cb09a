# ruff: noqa: E501  (the tables name tests by their full node ids, one row a line)
"""Every command-line flag (`epp`, `epp bbr`) and every EndpointPickerConfig field either changes what the
process does or is refused with a message naming it: nothing is accepted and ignored.

The tables below say, for each input, how to observe it:
- `Refused(value)`: giving it stops startup with an error naming it (a feature not built, a retired input);
- `Probe(name)`: the probe of that name, in this file, starts the server in-process with and without the input
  and checks a difference a client, a model server or a scraper would see;
- `Covered(test)`: that test shows the effect (it must exist and name the input in its own source).
A flag or field missing from its table fails `test_every_input_has_a_row` with the row to add. Plugin
parameters have their own table in tests/unit/test_every_plugin_parameter.py: each one changes what its plugin
does (scores, kept candidates, picks, learned state) or is refused naming itself.
"""

from __future__ import annotations

import ast
import asyncio
import contextlib
import logging
import os
import re
import ssl
import tempfile
import time
from collections.abc import AsyncIterator, Awaitable, Callable, Iterator, Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import grpc
import pytest
from grpc_health.v1 import health_pb2, health_pb2_grpc

from epp import app as epp_app
from epp import tls
from epp.bbr import app as bbr_app
from epp.bbr.cli import parse_bbr_settings
from epp.bbr.settings import BbrSettings
from epp.cli import parse_settings
from epp.config import datalayer, flowcontrol, schema
from epp.devstack.envoy import free_port
from epp.extproc.messages import FULL_DUPLEX
from epp.settings import flag_specs
from epp_pb.envoy.service.ext_proc.v3 import external_processor_pb2 as pb
from kubesim.kubeconfig import write_kubeconfig
from kubesim.manifests import apply
from kubesim.server import KubeSim
from kubesim.testing import pod_manifest
from tests.e2e.http import get
from tests.support.extproc import body_msg, headers_msg, set_headers

REPO = Path(__file__).resolve().parents[2]
METHOD = "/envoy.service.ext_proc.v3.ExternalProcessor/Process"


@dataclass(frozen=True)
class Refused:
    value: str = "true"


@dataclass(frozen=True)
class Probe:
    name: str


@dataclass(frozen=True)
class Covered:
    test: str
    #: what the test calls the input when not by its own name (a config field parsed into a setting)
    as_named: str = ""


Evidence = Refused | Probe | Covered

#: --v and the zap flags, the same for `epp` and `epp bbr`
LOGGING_FLAGS: dict[str, Evidence] = {
    "v": Covered("tests/unit/test_zap_flags.py::test_log_level"),
    "zap-encoder": Covered("tests/unit/test_zap_flags.py::test_log_level"),
    "zap-log-level": Covered("tests/unit/test_zap_flags.py::test_log_level"),
    "zap-devel": Covered("tests/unit/test_zap_flags.py::test_zap_devel_false_means_production_defaults"),
    "zap-stacktrace-level": Covered("tests/unit/test_zap_flags.py::test_stacktrace_level"),
    "zap-time-encoding": Covered("tests/unit/test_zap_flags.py::test_time_encodings"),
}
EPP_FLAGS: dict[str, Evidence] = {
    "grpc-port": Covered("tests/e2e/test_lifecycle.py::test_a_port_in_use_stops_startup_with_the_flag_and_no_traceback"),
    "grpc-health-port": Covered(
        "tests/e2e/test_lifecycle.py::test_a_port_in_use_stops_startup_with_the_flag_and_no_traceback"
    ),
    "metrics-port": Covered("tests/e2e/test_lifecycle.py::test_a_port_in_use_stops_startup_with_the_flag_and_no_traceback"),
    "metrics-endpoint-auth": Covered("tests/e2e/test_metrics_auth.py::test_tokens_are_reviewed_by_the_api_server_over_tls"),
    "enable-pprof": Refused(),
    "pool-name": Covered("tests/e2e/test_k8s_discovery.py::test_pods_readiness_pool_edits_and_watch_drops"),
    "pool-namespace": Covered("tests/e2e/test_k8s_discovery.py::test_pods_readiness_pool_edits_and_watch_drops"),
    "pool-group": Covered("tests/e2e/test_k8s_migration.py::test_v1alpha2_and_v1_pools_side_by_side_then_v1_only"),
    "endpoint-selector": Covered("tests/e2e/test_k8s_discovery.py::test_selector_mode_without_the_pool_crd"),
    "endpoint-target-ports": Covered("tests/e2e/test_k8s_discovery.py::test_selector_mode_without_the_pool_crd"),
    "disable-endpoint-subset-filter": Probe("subset_filter"),
    "refresh-metrics-interval": Probe("scrape_interval"),
    "refresh-prometheus-metrics-interval": Probe("pool_gauge_refresh"),
    "metrics-staleness-threshold": Probe("staleness"),
    "secure-serving": Probe("secure_serving"),
    "cert-path": Covered("tests/e2e/test_lifecycle.py::test_tls_with_cert_path_and_reload"),
    "enable-cert-reload": Covered("tests/e2e/test_lifecycle.py::test_tls_with_cert_path_and_reload"),
    "health-checking": Covered("tests/e2e/test_lifecycle.py::test_health_checking_flag_serves_health_on_the_ext_proc_port"),
    "ha-enable-leader-election": Covered("tests/e2e/test_k8s_failover.py::test_leader_failover_keeps_routing_without_a_cold_start"),
    "ha-lease-duration": Covered("tests/e2e/test_k8s_failover.py::test_leader_failover_keeps_routing_without_a_cold_start"),
    "ha-renew-deadline": Covered("tests/e2e/test_k8s_failover.py::test_leader_failover_keeps_routing_without_a_cold_start"),
    "ha-retry-period": Covered("tests/e2e/test_k8s_failover.py::test_leader_failover_keeps_routing_without_a_cold_start"),
    "tracing": Probe("tracing"),
    "config-file": Covered("tests/e2e/test_flow_control.py::test_requests_wait_while_saturated_and_dispatch_when_load_falls"),
    "config-text": Probe("config_text"),
    **LOGGING_FLAGS,
    "model-server-metrics-scheme": Probe("metrics_scheme"),
    "model-server-metrics-path": Probe("metrics_path"),
    "model-server-metrics-https-insecure-skip-verify": Probe("metrics_verify"),
    "model-server-metrics-port": Probe("metrics_port"),
    "total-queued-requests-metric": Refused("vllm:num_requests_waiting"),
    "total-running-requests-metric": Refused("vllm:num_requests_running"),
    "kv-cache-usage-percentage-metric": Refused("vllm:kv_cache_usage_perc"),
    "lora-info-metric": Refused("vllm:lora_requests_info"),
    "cache-info-metric": Refused("vllm:cache_config_info"),
    "drain-timeout": Covered("tests/e2e/test_lifecycle.py::test_sigterm_goes_not_serving_and_lets_in_flight_streams_finish"),
    "grpc-max-recv-msg-size": Probe("max_recv"),
    "grpc-max-send-msg-size": Probe("max_send"),
    "max-request-body-bytes": Probe("max_body"),
    "stream-idle-timeout": Probe("idle_timeout"),
    "emit-endpoint-scores": Covered(
        "tests/e2e/test_debug_pages.py::test_endpoint_scores_reach_envoy_and_match_debug_decisions"
    ),
    "debug-decisions": Covered("tests/unit/test_debug_pages.py::test_queries_ring_bound_and_failures"),
    "shared-state": Covered(
        "tests/e2e/test_replicas.py::test_a_store_unreachable_at_start_leaves_the_replica_serving_and_it_joins_when_the_store_comes"
    ),
    "shared-state-password-file": Covered("tests/unit/shared/test_codec_settings.py::test_the_flags_are_validated"),
    "enable-grpc-stream-metrics": Refused(),
    "tls-min-version": Refused("1.3"),
    "tls-cipher-suites": Refused("TLS_AES_128_GCM_SHA256"),
    "metrics-cert-dir": Covered("tests/unit/test_metrics_tls.py::test_metrics_over_tls_and_with_client_certificates"),
    "metrics-client-ca-file": Covered(
        "tests/unit/test_metrics_tls.py::test_metrics_over_tls_and_with_client_certificates"
    ),
    "allow-experimental-plugins": Refused(),
    "endpoints": Probe("endpoints"),
    "endpoints-file": Probe("endpoints_file"),
    "max-endpoints": Covered("tests/unit/test_static_discovery.py::test_a_file_larger_than_the_table_stops_startup"),
}  # fmt: skip

BBR_FLAGS_EVIDENCE: dict[str, Evidence] = {
    "grpc-port": Probe("bbr_ports"),
    "grpc-health-port": Probe("bbr_ports"),
    "metrics-port": Probe("bbr_ports"),
    "streaming": Probe("bbr_streaming"),
    "metrics-endpoint-auth": Refused(),
    "enable-pprof": Refused(),
    "secure-serving": Probe("bbr_secure_serving"),
    # the same function as epp's opens the port: epp.servers.add_extproc_port
    "cert-path": Covered("tests/e2e/test_lifecycle.py::test_tls_with_cert_path_and_reload"),
    "enable-cert-reload": Covered("tests/e2e/test_lifecycle.py::test_tls_with_cert_path_and_reload"),
    # the same logging set-up as epp's (epp.servers.run_server → epp.flags.log_options)
    **LOGGING_FLAGS,
    "drain-timeout": Probe("bbr_drain"),
    "grpc-max-recv-msg-size": Probe("bbr_max_recv"),
    "grpc-max-send-msg-size": Probe("bbr_max_send"),
    "max-request-body-bytes": Probe("bbr_max_body"),
    "stream-idle-timeout": Probe("bbr_idle_timeout"),
}  # fmt: skip

CONFIG_FIELDS: dict[str, Evidence] = {
    "apiVersion": Covered("tests/unit/test_data_layer_config.py::test_router_api_version_injects_the_default_source_into_an_empty_section"),
    "kind": Refused("Deployment"),
    "featureGates": Covered("tests/e2e/test_flow_control.py::test_requests_wait_while_saturated_and_dispatch_when_load_falls"),
    "featureGates: flowControl": Covered("tests/e2e/test_flow_control.py::test_requests_wait_while_saturated_and_dispatch_when_load_falls"),
    "featureGates: enableLegacyMetrics": Probe("legacy_metrics"),
    "featureGates: dataLayer": Probe("no_op_gates"),
    "featureGates: haPopulateNonLeaderDatastore": Probe("no_op_gates"),
    "plugins": Covered("tests/unit/plugins/test_detectors.py::test_concurrency_detector_in_a_profile_and_as_the_saturation_detector"),
    "schedulingProfiles": Covered("tests/unit/plugins/test_detectors.py::test_concurrency_detector_in_a_profile_and_as_the_saturation_detector"),
    "saturationDetector": Covered("tests/unit/plugins/test_detectors.py::test_concurrency_detector_in_a_profile_and_as_the_saturation_detector"),
    "parser": Probe("parser"),
    "flowControl": Covered("tests/unit/test_flow_control_config.py::test_sections_parse_with_quantities_durations_and_policy_refs"),
    "flowControl.maxBytes": Covered("tests/unit/flowcontrol/test_queue.py::test_capacity_limits", "max_bytes"),
    "flowControl.maxRequests": Covered("tests/unit/flowcontrol/test_queue.py::test_capacity_limits", "max_requests"),
    # parsed into QueueSettings fields by tests/unit/test_flow_control_config.py, whose effects these show:
    "flowControl.defaultRequestTTL": Covered("tests/unit/flowcontrol/test_queue.py::test_expiry_and_removal", "default_ttl"),
    "flowControl.defaultPriorityBand": Covered("tests/unit/test_flow_control_config.py::test_sections_parse_with_quantities_durations_and_policy_refs"),
    "flowControl.priorityBands": Covered("tests/unit/test_flow_control_config.py::test_sections_parse_with_quantities_durations_and_policy_refs"),
    "flowControl.usageLimitPolicyPluginRef": Covered("tests/unit/test_flow_control_config.py::test_errors_name_the_path_and_what_is_valid"),
    "flowControl.priorityBands[].priority": Covered("tests/unit/test_flow_control_config.py::test_sections_parse_with_quantities_durations_and_policy_refs"),
    "flowControl.priorityBands[].maxBytes": Covered("tests/unit/test_flow_control_config.py::test_sections_parse_with_quantities_durations_and_policy_refs"),
    "flowControl.priorityBands[].maxRequests": Covered("tests/unit/test_flow_control_config.py::test_sections_parse_with_quantities_durations_and_policy_refs"),
    "flowControl.priorityBands[].fairnessPolicyRef": Covered("tests/unit/test_flow_control_config.py::test_sections_parse_with_quantities_durations_and_policy_refs"),
    "flowControl.priorityBands[].orderingPolicyRef": Covered("tests/unit/test_flow_control_config.py::test_sections_parse_with_quantities_durations_and_policy_refs"),
    "dataLayer": Probe("data_layer_off"),
    "dataLayer.sources": Probe("data_layer_source"),
    "dataLayer.injectDefaults": Covered("tests/unit/test_data_layer_config.py::test_router_api_version_injects_the_default_source_into_an_empty_section"),
    "dataLayer.discovery": Covered("tests/unit/test_data_layer_config.py::test_refusals_name_the_path_and_the_fix"),
    "dataLayer.peerDiscovery": Refused("{}"),
    "dataLayer.crossReplicaSyncerPluginRef": Refused("syncer"),
    "dataLayer.crossReplicaSyncInterval": Covered("tests/unit/test_data_layer_config.py::test_refusals_name_the_path_and_the_fix"),
}  # fmt: skip


def config_fields() -> set[str]:
    """Every field the config parser knows (it refuses any other as unknown)."""
    fields = set(schema._TOP_LEVEL)
    fields |= {f"featureGates: {gate}" for gate in schema.FEATURE_GATES}
    fields |= {f"dataLayer.{key}" for key in (*datalayer.DATA_LAYER_FIELDS, *datalayer.NOT_BUILT_FIELDS)}
    fields |= {f"flowControl.{key}" for key in flowcontrol._GLOBAL_FIELDS}
    fields |= {f"flowControl.priorityBands[].{key}" for key in flowcontrol._BAND_FIELDS}
    return fields


@pytest.mark.parametrize(
    ("table", "known", "where"),
    [
        (EPP_FLAGS, {s.name for s in flag_specs()}, "EPP_FLAGS (epp flag --{})"),
        (BBR_FLAGS_EVIDENCE, {s.name for s in flag_specs(BbrSettings)}, "BBR_FLAGS_EVIDENCE (epp bbr flag --{})"),
        (CONFIG_FIELDS, config_fields(), "CONFIG_FIELDS (config field {})"),
    ],
)
def test_every_input_has_a_row(table: dict[str, Evidence], known: set[str], where: str) -> None:
    missing = sorted(known - set(table))
    assert not missing, (
        f"add a row to {__name__.replace('.', '/')}.py {where.format(', '.join(missing))}: Refused(value) if it is "
        "refused, Probe(name) with a probe showing what it changes, or Covered('tests/...::test') naming the test that does"
    )
    assert not sorted(set(table) - known), "rows for inputs that no longer exist: remove them"


# --- Refused ------------------------------------------------------------------------------------------------


def refused_rows() -> Iterator[Any]:
    for name, evidence in EPP_FLAGS.items():
        if isinstance(evidence, Refused):
            yield pytest.param("epp", name, evidence.value, id=f"epp --{name}")
    for name, evidence in BBR_FLAGS_EVIDENCE.items():
        if isinstance(evidence, Refused):
            yield pytest.param("bbr", name, evidence.value, id=f"bbr --{name}")


@pytest.mark.parametrize(("program", "flag", "value"), list(refused_rows()))
def test_refused_flags_stop_startup_naming_themselves(
    program: str, flag: str, value: str, capsys: pytest.CaptureFixture[str]
) -> None:
    parse = parse_settings if program == "epp" else parse_bbr_settings
    base = ["--endpoints", "127.0.0.1:8000"] if program == "epp" else []
    with pytest.raises(SystemExit) as exited:
        parse([*base, f"--{flag}={value}"])
    assert exited.value.code == 2
    assert f"--{flag}" in capsys.readouterr().err


@pytest.mark.parametrize(
    ("field", "value"), [pytest.param(k, v.value, id=k) for k, v in CONFIG_FIELDS.items() if isinstance(v, Refused)]
)
def test_refused_config_fields_name_their_path(field: str, value: str) -> None:
    head, _, key = field.partition(".")
    text = f"{head}: {{{key}: {value}}}\n" if key else f"{head}: {value}\n"
    with pytest.raises(schema.ConfigError) as caught:
        schema.load_config_text(text, "c.yaml")
    assert any(f"c.yaml: {field}" in error for error in caught.value.errors), caught.value.errors


# --- Covered ------------------------------------------------------------------------------------------------


def covered_rows() -> Iterator[Any]:
    for table in (EPP_FLAGS, BBR_FLAGS_EVIDENCE, CONFIG_FIELDS):
        for name, evidence in table.items():
            if isinstance(evidence, Covered):
                label = f"{name} ← {evidence.test.rsplit('::')[-1]}"
                yield pytest.param(name, evidence.test, evidence.as_named, id=label)


@pytest.mark.parametrize(("name", "test", "as_named"), list(covered_rows()))
def test_covering_tests_exist_and_name_their_input(name: str, test: str, as_named: str) -> None:
    path, _, function = test.partition("::")
    source = (REPO / path).read_text()
    module = ast.parse(source)
    node = next(
        (n for n in ast.walk(module) if isinstance(n, ast.FunctionDef | ast.AsyncFunctionDef) and n.name == function),
        None,
    )
    assert node is not None, f"{test} does not exist: point the row for {name} at the test that shows its effect"
    lines = source.splitlines()
    first = min([d.lineno for d in node.decorator_list] + [node.lineno])
    text = "\n".join(lines[first - 1 : node.end_lineno])
    # flags are often gathered in a module-level constant the test passes on
    constants = [n for n in module.body if isinstance(n, ast.Assign | ast.AnnAssign)]
    text += "\n".join("\n".join(lines[n.lineno - 1 : n.end_lineno]) for n in constants)
    spellings = [as_named] if as_named else _spellings(name)
    assert any(s in text for s in spellings), f"{test} does not mention {name}"


def _spellings(name: str) -> list[str]:
    if name.startswith("featureGates: "):
        return [name.split(": ")[1]]
    leaf = name.rsplit(".", 1)[-1].removeprefix("priorityBands[].")
    return [f"--{name}", name.replace("-", "_"), leaf]


# --- Probes -------------------------------------------------------------------------------------------------


class MetricsPages:
    """Model-server /metrics on 127.0.0.1 (plain or TLS) recording what each connection sent first."""

    PAGE = b'vllm:num_requests_waiting{model_name="m"} 3\nvllm:kv_cache_usage_perc{model_name="m"} 0.25\n'
    SGLANG = b'sglang:num_queue_reqs{model_name="m"} 7\nsglang:token_usage{model_name="m"} 0.5\n'

    def __init__(self, tls_context: ssl.SSLContext | None = None, page: bytes = PAGE) -> None:
        self.tls_context = tls_context
        self.page = page
        self.requests: list[bytes] = []
        self.port = 0
        self._server: asyncio.Server | None = None

    async def __aenter__(self) -> MetricsPages:
        self._server = await asyncio.start_server(self._handle, "127.0.0.1", 0, ssl=self.tls_context)
        self.port = self._server.sockets[0].getsockname()[1]
        return self

    async def __aexit__(self, *exc: object) -> None:
        assert self._server is not None
        self._server.close()

    async def _handle(self, reader: asyncio.StreamReader, writer: asyncio.StreamWriter) -> None:
        buffer = b""
        with contextlib.suppress(Exception):
            while chunk := await reader.read(65536):
                buffer += chunk
                if not buffer.startswith(b"GET"):  # e.g. a TLS ClientHello to this plain server
                    self.requests.append(buffer[:3])
                    break
                while b"\r\n\r\n" in buffer:
                    head, buffer = buffer.split(b"\r\n\r\n", 1)
                    self.requests.append(head.split(b"\r\n", 1)[0])
                    writer.write(b"HTTP/1.1 200 OK\r\nContent-Length: %d\r\n\r\n" % len(self.page) + self.page)
                    await writer.drain()
        writer.close()


@dataclass
class Running:
    grpc_port: int
    metrics_port: int
    runtime: Any


@contextlib.asynccontextmanager
async def running(program: str, argv: Sequence[str], scrape: bool = True) -> AsyncIterator[Running]:
    """`epp` (or `epp bbr`) in this process, plaintext unless argv says otherwise, on free ports; `scrape=False`
    (for probes that do not look at model-server metrics) saves starting the scrape process."""
    metrics_port = free_port()
    ports = ["--grpc-port", "0", "--grpc-health-port", "0", "--metrics-port", str(metrics_port)]
    if program == "epp" and not scrape:
        argv = [*argv, *config_arg("dataLayer: {}\n")]
    if program == "epp":
        settings = parse_settings([*ports, "--secure-serving=false", "--tracing=false", *argv])
        runtime: Any = await epp_app.start(settings)
        stop: Callable[[Any], Awaitable[None]] = epp_app.stop
    else:
        settings = parse_bbr_settings([*ports, "--secure-serving=false", *argv])
        runtime = await bbr_app.start(settings)
        stop = bbr_app.stop
    try:
        yield Running(runtime.grpc_port, metrics_port, runtime)
    finally:
        await stop(runtime)


async def exchange(
    port: int, messages: Sequence[pb.ProcessingRequest], hold: float = 0.0, secure: bool = False, read: int = 1
) -> list[pb.ProcessingResponse] | grpc.StatusCode:
    """Send `messages` on one ext_proc stream, keep it open `hold` seconds, return the first `read`
    responses (or the status code the stream failed with)."""

    async def requests() -> AsyncIterator[pb.ProcessingRequest]:
        for message in messages:
            yield message
        await asyncio.sleep(hold)

    target = f"127.0.0.1:{port}"
    if secure:
        credentials = grpc.ssl_channel_credentials()
        channel = grpc.aio.secure_channel(target, credentials)
    else:
        channel = grpc.aio.insecure_channel(target)
    async with channel:
        call = channel.stream_stream(
            METHOD, request_serializer=pb.ProcessingRequest.SerializeToString,
            response_deserializer=pb.ProcessingResponse.FromString,
        )(requests())  # fmt: skip
        responses: list[pb.ProcessingResponse] = []
        try:
            async for response in call:
                responses.append(response)
                if len(responses) >= read:
                    call.cancel()
                    break
        except grpc.aio.AioRpcError as error:
            return error.code()
        return responses


def request(body: bytes = b'{"model":"m","prompt":"hello"}', **headers: str) -> list[pb.ProcessingRequest]:
    return [headers_msg(headers, mode=FULL_DUPLEX), body_msg(body)]


def routed_to(responses: list[pb.ProcessingResponse] | grpc.StatusCode) -> str:
    """The endpoint picked, "" if the stream was answered with an error; raises if the stream failed."""
    assert isinstance(responses, list), f"stream failed: {responses}"
    if responses[0].HasField("immediate_response"):
        return ""
    return set_headers(responses[0])["x-gateway-destination-endpoint"]


def status_of(responses: list[pb.ProcessingResponse] | grpc.StatusCode) -> int:
    assert isinstance(responses, list), f"stream failed: {responses}"
    return int(responses[0].immediate_response.status.code) if responses[0].HasField("immediate_response") else 200


async def wait_until(condition: Callable[[], bool], timeout: float = 10.0) -> None:
    deadline = time.monotonic() + timeout
    while not condition():
        assert time.monotonic() < deadline, "condition not reached in time"
        await asyncio.sleep(0.02)


def gauge(page: bytes, name: str) -> float | None:
    match = re.search(rb"^" + re.escape(name.encode()) + rb"(?:\{[^}]*\})? (\S+)$", page, re.M)
    return float(match.group(1)) if match else None


ENDPOINTS = ["--endpoints", "127.0.0.1:1,127.0.0.1:2"]


async def probe_subset_filter() -> None:
    subset = [headers_msg(mode=FULL_DUPLEX, subset=["127.0.0.9:8000"]), body_msg(b'{"model":"m","prompt":"p"}')]
    async with running("epp", ENDPOINTS, scrape=False) as default:
        assert status_of(await exchange(default.grpc_port, subset)) == 503  # no candidate in the subset
    async with running("epp", [*ENDPOINTS, "--disable-endpoint-subset-filter"], scrape=False) as ignoring:
        assert routed_to(await exchange(ignoring.grpc_port, subset)) in ("127.0.0.1:1", "127.0.0.1:2")


async def probe_max_body(program: str = "epp") -> None:
    body = b'{"model":"m","prompt":"' + b"x" * 200 + b'"}'
    argv = ENDPOINTS if program == "epp" else []
    async with running(program, argv, scrape=False) as default:
        assert status_of(await exchange(default.grpc_port, request(body))) == 200
    async with running(program, [*argv, "--max-request-body-bytes", "100"], scrape=False) as limited:
        assert status_of(await exchange(limited.grpc_port, request(body))) == 413


async def probe_idle_timeout(program: str = "epp") -> None:
    argv = ENDPOINTS if program == "epp" else []
    headers_only = [headers_msg(mode=FULL_DUPLEX)]
    async with running(program, argv, scrape=False) as default:
        assert await exchange(default.grpc_port, headers_only, hold=0.6, read=1) == []
    async with running(program, [*argv, "--stream-idle-timeout", "150ms"], scrape=False) as idle:
        assert await exchange(idle.grpc_port, headers_only, hold=3.0) == grpc.StatusCode.DEADLINE_EXCEEDED


async def probe_max_recv(program: str = "epp") -> None:
    argv = ENDPOINTS if program == "epp" else []
    body = b'{"model":"m","prompt":"' + b"x" * 4096 + b'"}'
    async with running(program, argv, scrape=False) as default:
        assert status_of(await exchange(default.grpc_port, request(body))) == 200
    async with running(program, [*argv, "--grpc-max-recv-msg-size", "2KiB"], scrape=False) as limited:
        assert await exchange(limited.grpc_port, request(body)) == grpc.StatusCode.RESOURCE_EXHAUSTED


async def probe_max_send(program: str = "epp") -> None:
    argv = ENDPOINTS if program == "epp" else []
    body = b'{"model":"m","prompt":"' + b"x" * 4096 + b'"}'  # streamed back in one body chunk
    async with running(program, argv, scrape=False) as default:
        assert len(await exchange(default.grpc_port, request(body), read=2)) == 2
    async with running(program, [*argv, "--grpc-max-send-msg-size", "2KiB"], scrape=False) as limited:
        assert await exchange(limited.grpc_port, request(body), read=2) == grpc.StatusCode.RESOURCE_EXHAUSTED


async def probe_config_text() -> None:
    text = (REPO / "config" / "conformance-testing.yaml").read_text()
    steer = request(**{"test-epp-endpoint-selection": "127.0.0.1"})
    async with running("epp", ["--endpoints", "127.0.0.1:1"], scrape=False) as default:
        assert routed_to(await exchange(default.grpc_port, request())) == "127.0.0.1:1"
    async with running("epp", ["--endpoints", "127.0.0.1:1", "--config-text", text]) as conformance:
        assert routed_to(await exchange(conformance.grpc_port, request())) == ""  # nothing selected: refused
        assert routed_to(await exchange(conformance.grpc_port, steer)) == "127.0.0.1:1"


async def probe_tracing() -> None:
    parent = "00-4bf92f3577b34da6a3ce929d0e0e4736-00f067aa0ba902b7-01"  # sampled: the child is sampled too
    with_parent = request(traceparent=parent)
    async with running("epp", [*ENDPOINTS, "--tracing=true"], scrape=False) as traced:
        headers = set_headers((await exchange(traced.grpc_port, with_parent))[0])  # type: ignore[index]
        assert headers["traceparent"].startswith("00-4bf92f3577b34da6a3ce929d0e0e4736-")
    async with running("epp", ENDPOINTS, scrape=False) as untraced:  # the harness gives --tracing=false
        assert "traceparent" not in set_headers((await exchange(untraced.grpc_port, with_parent))[0])  # type: ignore[index]


def gets(pages: MetricsPages) -> list[bytes]:
    return [r for r in pages.requests if r.startswith(b"GET ")]


async def probe_metrics_path() -> None:
    async with MetricsPages() as pages:
        async with running("epp", ["--endpoints", f"127.0.0.1:{pages.port}"]):
            await wait_until(lambda: bool(gets(pages)))
        assert gets(pages)[0] == b"GET /metrics HTTP/1.1"
        pages.requests.clear()
        async with running("epp", ["--endpoints", f"127.0.0.1:{pages.port}", "--model-server-metrics-path", "/m2"]):
            await wait_until(lambda: bool(gets(pages)))
        assert gets(pages)[0] == b"GET /m2 HTTP/1.1"


async def probe_metrics_scheme() -> None:
    async with MetricsPages() as pages:
        async with running("epp", ["--endpoints", f"127.0.0.1:{pages.port}", "--model-server-metrics-scheme", "https"]):
            await wait_until(lambda: bool(pages.requests))
        assert pages.requests[0].startswith(b"\x16\x03") and not gets(pages)  # a TLS handshake, no plain GET


def self_signed_server_context() -> ssl.SSLContext:
    cert, key = tls.self_signed_pair()
    directory = Path(tempfile.mkdtemp(prefix="epp-probe-"))
    (directory / "tls.crt").write_bytes(cert)
    (directory / "tls.key").write_bytes(key)
    context = ssl.SSLContext(ssl.PROTOCOL_TLS_SERVER)
    context.load_cert_chain(directory / "tls.crt", directory / "tls.key")
    return context


async def probe_metrics_verify() -> None:
    https = ["--model-server-metrics-scheme", "https"]
    async with MetricsPages(self_signed_server_context()) as pages:
        async with running("epp", ["--endpoints", f"127.0.0.1:{pages.port}", *https]):  # default: skip verification
            await wait_until(lambda: bool(gets(pages)))
        pages.requests.clear()
        verify = ["--model-server-metrics-https-insecure-skip-verify=false"]
        async with running("epp", ["--endpoints", f"127.0.0.1:{pages.port}", *https, *verify]) as verifying:
            await wait_until(lambda: verifying.runtime.scrape_plane.errors_total > 0)
            _, page = await asyncio.to_thread(get, verifying.metrics_port, "/metrics")
            assert (gauge(page, "inference_pool_scrape_errors_total") or 0) > 0  # the pool's counter follows
        assert not gets(pages)  # the self-signed certificate is refused: nothing asked for


async def count_scrapes(argv: list[str], seconds: float) -> int:
    async with MetricsPages() as pages, running("epp", ["--endpoints", f"127.0.0.1:{pages.port}", *argv]):
        await wait_until(lambda: bool(gets(pages)))
        pages.requests.clear()
        await asyncio.sleep(seconds)
        return len(gets(pages))  # counted before the stop: a stopping epp keeps serving (and scraping) a while


async def probe_scrape_interval() -> None:
    fast = await count_scrapes([], 1.0)  # every 50ms
    slow = await count_scrapes(["--refresh-metrics-interval", "400ms"], 1.0)
    assert slow <= 4 and fast >= 3 * max(slow, 1), (fast, slow)


async def ready_pods(argv: list[str], pages: MetricsPages, wait_scraped: float = 0.4) -> float | None:
    pages.requests.clear()
    async with running("epp", ["--endpoints", f"127.0.0.1:{pages.port}", *argv]) as epp:
        get(epp.metrics_port, "/metrics")  # before any scrape: the pool gauges are computed (and cached) here
        await wait_until(lambda: bool(gets(pages)))
        await asyncio.sleep(wait_scraped)
        _, page = get(epp.metrics_port, "/metrics")
        return gauge(page, "inference_pool_ready_pods")


async def probe_staleness() -> None:
    async with MetricsPages() as pages:
        fast_refresh = ["--refresh-prometheus-metrics-interval", "10ms"]
        assert await ready_pods(fast_refresh, pages) == 1.0
        assert await ready_pods([*fast_refresh, "--metrics-staleness-threshold", "1us"], pages) == 0.0


async def probe_pool_gauge_refresh() -> None:
    async with MetricsPages() as pages:
        # the pool gauges are computed at the first /metrics read (before any scrape) and kept for the interval
        assert await ready_pods(["--refresh-prometheus-metrics-interval", "1h"], pages) == 0.0
        assert await ready_pods(["--refresh-prometheus-metrics-interval", "10ms"], pages) == 1.0


def config_arg(text: str) -> list[str]:
    """A config with a queue-scorer and `text` (more plugins as `- {...}` lines, then other sections)."""
    return ["--config-text", "plugins:\n- {type: queue-scorer}\n" + text]


async def probe_data_layer_off() -> None:
    async with MetricsPages() as pages:
        async with running("epp", ["--endpoints", f"127.0.0.1:{pages.port}", *config_arg("dataLayer: {}\n")]) as off:
            await asyncio.sleep(0.4)
            assert off.runtime.scrape_plane is None
        assert pages.requests == []
    assert await count_scrapes(config_arg(""), 0.2) > 0


async def probe_data_layer_source() -> None:
    text = ("- {type: metrics-data-source, name: src, parameters: {path: /listed}}\n"
            "- {type: core-metrics-extractor, name: ext}\n"
            "dataLayer: {sources: [{pluginRef: src, extractors: [{pluginRef: ext}]}]}\n")  # fmt: skip
    async with MetricsPages() as pages:
        async with running("epp", ["--endpoints", f"127.0.0.1:{pages.port}", *config_arg(text)]):
            await wait_until(lambda: bool(gets(pages)))
        assert gets(pages)[0] == b"GET /listed HTTP/1.1"


async def per_pod_queue(argv: list[str], pages: MetricsPages) -> float | None:
    endpoints = Path(tempfile.mkdtemp(prefix="epp-probe-")) / "endpoints.yaml"
    label = "inference.networking.k8s.io/engine-type"
    endpoints.write_text(f"endpoints:\n- {{address: 127.0.0.1, port: {pages.port}, labels: {{{label}: sglang}}}}\n")
    pages.requests.clear()
    async with running("epp", ["--endpoints-file", str(endpoints), *argv]) as epp:
        await wait_until(lambda: len(gets(pages)) >= 2)
        _, page = get(epp.metrics_port, "/metrics")
        return gauge(page, "inference_pool_per_pod_queue_size")


async def probe_legacy_metrics() -> None:
    async with MetricsPages(page=MetricsPages.SGLANG) as pages:
        assert await per_pod_queue(config_arg(""), pages) == 7.0  # the endpoint's engine label: SGLang's names
        legacy = config_arg("featureGates: [enableLegacyMetrics]\n")
        assert await per_pod_queue(legacy, pages) == 0.0  # vLLM's names for every endpoint


async def probe_no_op_gates() -> None:
    records: list[str] = []
    handler = logging.Handler()
    handler.emit = lambda record: records.append(record.getMessage())  # type: ignore[method-assign]
    logging.getLogger("epp").addHandler(handler)
    try:
        async with running(
            "epp", [*ENDPOINTS, *config_arg("featureGates: [dataLayer, haPopulateNonLeaderDatastore]\n")]
        ):
            pass
    finally:
        logging.getLogger("epp").removeHandler(handler)
    assert any("dataLayer is deprecated and changes nothing" in r for r in records)
    assert any("haPopulateNonLeaderDatastore changes nothing" in r for r in records)


async def probe_bbr_streaming() -> None:
    unannounced = [headers_msg()]  # Envoy without protocol_config
    async with running("bbr", []) as buffered:  # the reference's default: BUFFERED, headers answered at once
        responses = await exchange(buffered.grpc_port, unannounced, hold=0.3)
        assert isinstance(responses, list) and responses[0].WhichOneof("response") == "request_headers"
    async with running("bbr", ["--streaming"]) as streaming:  # FULL_DUPLEX_STREAMED: held until the body
        assert await exchange(streaming.grpc_port, unannounced, hold=0.3) == []


async def probe_secure_serving(program: str = "epp") -> None:
    argv = ENDPOINTS if program == "epp" else []
    async with running(program, argv, scrape=False) as plaintext:  # the harness gives --secure-serving=false
        assert status_of(await exchange(plaintext.grpc_port, request())) == 200
    async with running(program, [*argv, "--secure-serving=true"], scrape=False) as secure:
        assert await exchange(secure.grpc_port, request()) == grpc.StatusCode.UNAVAILABLE  # plaintext is refused


async def probe_endpoints() -> None:
    async with running("epp", ["--endpoints", "127.0.0.1:5"], scrape=False) as epp:
        assert routed_to(await exchange(epp.grpc_port, request())) == "127.0.0.1:5"


async def probe_bbr_drain() -> None:
    for drain, finishes in (("30s", True), ("0s", False)):
        settings = parse_bbr_settings(["--grpc-port", "0", "--grpc-health-port", "0", "--metrics-port", "0",
                                       "--secure-serving=false", "--drain-timeout", drain])  # fmt: skip
        runtime = await bbr_app.start(settings)
        in_flight = asyncio.ensure_future(exchange(runtime.grpc_port, [headers_msg(mode=FULL_DUPLEX)], hold=0.5))
        await asyncio.sleep(0.2)
        await bbr_app.stop(runtime)  # SIGTERM's path
        outcome = await in_flight
        # within the drain window the open stream ends on its own (no responses yet); without one it is cut
        assert (outcome == []) is finishes, (drain, outcome)


async def probe_bbr_ports() -> None:
    grpc_port, health_port, metrics_port = free_port(), free_port(), free_port()
    argv = ["--grpc-port", str(grpc_port), "--grpc-health-port", str(health_port), "--metrics-port", str(metrics_port)]
    runtime = await bbr_app.start(parse_bbr_settings(["--secure-serving=false", *argv]))
    try:
        assert status_of(await exchange(grpc_port, request())) == 200
        async with grpc.aio.insecure_channel(f"127.0.0.1:{health_port}") as channel:
            check = health_pb2_grpc.HealthStub(channel).Check
            answer = await check(health_pb2.HealthCheckRequest(service=""), timeout=2)
            assert answer.status == health_pb2.HealthCheckResponse.SERVING
        status, page = await asyncio.to_thread(get, metrics_port, "/metrics")
        assert status == 200 and b"bbr_success_total 1.0" in page
    finally:
        await bbr_app.stop(runtime)


async def probe_parser() -> None:
    passthrough = config_arg("- {type: passthrough-parser}\nparser: {pluginRef: passthrough-parser}\n")
    not_json = request(b"plain text, no model")
    async with running("epp", ENDPOINTS, scrape=False) as openai:
        assert status_of(await exchange(openai.grpc_port, not_json)) == 400
    async with running("epp", [*ENDPOINTS, *passthrough]) as raw:
        assert status_of(await exchange(raw.grpc_port, not_json)) == 200


@contextlib.contextmanager
def environment(**values: str) -> Iterator[None]:
    saved = {key: os.environ.get(key) for key in values}
    os.environ.update(values)
    try:
        yield
    finally:
        for key, value in saved.items():
            if value is None:
                os.environ.pop(key, None)
            else:
                os.environ[key] = value


async def probe_metrics_port() -> None:
    """A pool with one target port is scraped on --model-server-metrics-port instead (Kubernetes discovery)."""
    api = KubeSim(inference_crds=False)
    await api.start()
    kubeconfig = write_kubeconfig(api, Path(tempfile.mkdtemp(prefix="epp-probe-")) / "kubeconfig")
    apply(api.store, pod_manifest("model-0", "127.0.0.1", {"app": "m"}))
    selector = ["--endpoint-selector", "app=m", "--endpoint-target-ports", "1", "--pool-namespace", "default"]
    try:
        with environment(KUBECONFIG=str(kubeconfig), POD_NAME="epp-6b8f9d7c5-k2m4n", NAMESPACE="default"):
            async with MetricsPages() as pages:
                async with running("epp", selector):
                    await asyncio.sleep(0.5)
                assert pages.requests == []  # scraped on the target port 1: nobody there
                async with running("epp", [*selector, "--model-server-metrics-port", str(pages.port)]):
                    await wait_until(lambda: bool(gets(pages)))
    finally:
        await api.stop()


async def probe_endpoints_file() -> None:
    """The file's endpoints are the candidates, and a new version of the file replaces them."""
    path = Path(tempfile.mkdtemp(prefix="epp-probe-")) / "endpoints.yaml"
    path.write_text("endpoints:\n- {address: 127.0.0.1, port: 7}\n")
    async with running("epp", ["--endpoints-file", str(path)], scrape=False) as epp:
        assert routed_to(await exchange(epp.grpc_port, request())) == "127.0.0.1:7"
        replacement = path.with_suffix(".new")
        replacement.write_text("endpoints:\n- {address: 127.0.0.1, port: 8}\n")
        replacement.rename(path)
        deadline = time.monotonic() + 10
        while routed_to(await exchange(epp.grpc_port, request())) != "127.0.0.1:8":
            assert time.monotonic() < deadline, "the new endpoints file was not applied"
            await asyncio.sleep(0.1)


PROBES: dict[str, Callable[[], Awaitable[None]]] = {
    "subset_filter": probe_subset_filter,
    "max_body": probe_max_body,
    "idle_timeout": probe_idle_timeout,
    "max_recv": probe_max_recv,
    "max_send": probe_max_send,
    "config_text": probe_config_text,
    "tracing": probe_tracing,
    "metrics_path": probe_metrics_path,
    "metrics_scheme": probe_metrics_scheme,
    "metrics_verify": probe_metrics_verify,
    "scrape_interval": probe_scrape_interval,
    "staleness": probe_staleness,
    "pool_gauge_refresh": probe_pool_gauge_refresh,
    "data_layer_off": probe_data_layer_off,
    "data_layer_source": probe_data_layer_source,
    "legacy_metrics": probe_legacy_metrics,
    "no_op_gates": probe_no_op_gates,
    "bbr_streaming": probe_bbr_streaming,
    "bbr_secure_serving": lambda: probe_secure_serving("bbr"),
    "secure_serving": probe_secure_serving,
    "endpoints": probe_endpoints,
    "bbr_drain": probe_bbr_drain,
    "bbr_ports": probe_bbr_ports,
    "parser": probe_parser,
    "metrics_port": probe_metrics_port,
    "endpoints_file": probe_endpoints_file,
    "bbr_max_body": lambda: probe_max_body("bbr"),
    "bbr_idle_timeout": lambda: probe_idle_timeout("bbr"),
    "bbr_max_recv": lambda: probe_max_recv("bbr"),
    "bbr_max_send": lambda: probe_max_send("bbr"),
}


def probe_names() -> list[str]:
    names = {e.name for t in (EPP_FLAGS, BBR_FLAGS_EVIDENCE, CONFIG_FIELDS) for e in t.values() if isinstance(e, Probe)}
    return sorted(names)


def test_every_probe_named_in_a_row_exists() -> None:
    assert set(probe_names()) == set(PROBES)


@pytest.mark.parametrize("name", probe_names())
async def test_probe(name: str) -> None:
    await PROBES[name]()

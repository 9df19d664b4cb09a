"""Health with leader election (reference §1.3) and the Kubernetes flags' validation."""

from __future__ import annotations

import pytest
from grpc_health.v1 import health_pb2

from epp.cli import parse_settings
from epp.health import EXTPROC_SERVICE, HealthState
from epp.k8s.runtime import deployment_of

SERVING, NOT_SERVING, UNKNOWN = (
    health_pb2.HealthCheckResponse.SERVING,
    health_pb2.HealthCheckResponse.NOT_SERVING,
    health_pb2.HealthCheckResponse.SERVICE_UNKNOWN,
)


def test_without_leader_election_every_name_follows_sync() -> None:
    state = HealthState()
    assert {state.status_of(s) for s in ("", "inference-extension", "liveness", EXTPROC_SERVICE)} == {NOT_SERVING}
    state.synced = True
    assert {state.status_of(s) for s in ("", "inference-extension", "liveness", EXTPROC_SERVICE)} == {SERVING}


def test_with_leader_election_readiness_is_the_synced_leader_and_liveness_always() -> None:
    state = HealthState()
    state.leader_election = True
    state.synced = True
    assert state.status_of("liveness") == SERVING
    for name in ("readiness", "", EXTPROC_SERVICE):
        assert state.status_of(name) == NOT_SERVING
    assert state.status_of("inference-extension") == UNKNOWN
    state.leader = True
    for name in ("readiness", "", EXTPROC_SERVICE):
        assert state.status_of(name) == SERVING
    state.synced = False
    assert state.status_of("readiness") == NOT_SERVING
    state.synced, state.draining = True, True
    assert state.status_of("readiness") == NOT_SERVING and state.status_of("liveness") == SERVING


def test_pool_flags_are_accepted() -> None:
    settings = parse_settings(["--pool-name", "p", "--pool-group", "inference.networking.x-k8s.io"])
    assert (settings.pool_name, settings.pool_group) == ("p", "inference.networking.x-k8s.io")
    assert parse_settings(["--pool-name", "p", "--ha-enable-leader-election"]).ha_enable_leader_election is True
    assert parse_settings(["--pool-name", "p", "--model-server-metrics-port", "9100"]).model_server_metrics_port == 9100


@pytest.mark.parametrize(
    ("argv", "message"),
    [
        (["--pool-name", "p", "--pool-group", "example.com"], "--pool-group 'example.com'"),
        (["--endpoint-selector", "app=x"], "needs --endpoint-target-ports"),
        (["--pool-name", "p", "--endpoint-target-ports", "8000"], "applies to --endpoint-selector"),
        (["--endpoints", "127.0.0.1:8000", "--ha-enable-leader-election"], "--ha-enable-leader-election applies"),
        (["--endpoints", "127.0.0.1:8000", "--model-server-metrics-port", "9100"], "applies to Kubernetes"),
        (["--pool-name", "p", "--ha-enable-leader-election", "--ha-renew-deadline", "20s"], "--ha-lease-duration"),
        (["--pool-name", "p", "--endpoint-selector", "app=x", "--endpoint-target-ports", "8000"], "exactly one"),
    ],
)
def test_kubernetes_flag_errors(argv: list[str], message: str, capsys: pytest.CaptureFixture[str]) -> None:
    with pytest.raises(SystemExit):
        parse_settings(argv)
    assert message in capsys.readouterr().err


def test_selector_mode_needs_pod_name(monkeypatch: pytest.MonkeyPatch, capsys: pytest.CaptureFixture[str]) -> None:
    monkeypatch.delenv("POD_NAME", raising=False)
    with pytest.raises(SystemExit):
        parse_settings(["--endpoint-selector", "app=x", "--endpoint-target-ports", "8000"])
    assert "POD_NAME" in capsys.readouterr().err
    monkeypatch.setenv("POD_NAME", "epp-7d9c8b6f4-x2x7z")
    settings = parse_settings(["--endpoint-selector", "app=x,tier=gpu", "--endpoint-target-ports", "8000,8001"])
    assert settings.endpoint_target_ports == (8000, 8001)
    with pytest.raises(SystemExit):
        parse_settings(["--endpoint-selector", "app x", "--endpoint-target-ports", "8000"])
    assert "is not key=value" in capsys.readouterr().err


def test_deployment_of_pod_name() -> None:
    assert deployment_of("epp-7d9c8b6f4-x2x7z") == "epp"
    assert deployment_of("vllm-llama3-epp-5d8f7c9b6d-abcde") == "vllm-llama3-epp"
    assert deployment_of("standalone") == "standalone"

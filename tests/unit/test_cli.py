from __future__ import annotations

import pytest

from epp.cli import FLAGS, NOT_BUILT, build_parser, parse_duration, parse_quantity, parse_settings

BASE = ["--endpoints", "127.0.0.1:8000"]


def test_defaults_match_the_reference() -> None:
    settings = parse_settings(BASE)
    assert (settings.grpc_port, settings.grpc_health_port, settings.metrics_port) == (9002, 9003, 9090)
    assert settings.secure_serving is True
    assert settings.refresh_metrics_interval == 0.05
    assert settings.metrics_staleness_threshold == 2.0
    assert settings.v == 2
    assert settings.drain_timeout == 30.0


def test_pflag_forms() -> None:
    settings = parse_settings([*BASE, "--secure-serving=false", "--v", "4", "--grpc-port=9100", "--health-checking"])
    assert settings.secure_serving is False
    assert settings.v == 4
    assert settings.grpc_port == 9100
    assert settings.health_checking is True
    assert {"secure_serving", "v", "grpc_port", "health_checking"} <= settings.explicit


@pytest.mark.parametrize(
    ("text", "seconds"), [("50ms", 0.05), ("2s", 2.0), ("1m30s", 90.0), ("0", 0.0), ("1.5h", 5400)]
)
def test_durations(text: str, seconds: float) -> None:
    assert parse_duration(text) == pytest.approx(seconds)


@pytest.mark.parametrize("text", ["50", "ms", "2 s", "1x"])
def test_bad_durations(text: str) -> None:
    with pytest.raises(Exception, match="invalid duration"):
        parse_duration(text)


@pytest.mark.parametrize(("text", "size"), [("25MiB", 25 * 2**20), ("4Mi", 4 * 2**20), ("10M", 10**7), ("1024", 1024)])
def test_quantities(text: str, size: int) -> None:
    assert parse_quantity(text) == size


def test_exactly_one_endpoint_source(capsys: pytest.CaptureFixture[str]) -> None:
    with pytest.raises(SystemExit):
        parse_settings([])
    assert "exactly one source of endpoints" in capsys.readouterr().err
    with pytest.raises(SystemExit):
        parse_settings([*BASE, "--endpoints-file", "x.yaml"])


@pytest.mark.parametrize("flag", sorted(NOT_BUILT))
def test_flags_of_unbuilt_features_fail_loudly(flag: str, capsys: pytest.CaptureFixture[str]) -> None:
    kind = next(k for name, _, k, _ in FLAGS if name == flag)
    value = "true" if kind.__name__ == "parse_bool" else ("8000" if "ports" in flag else "x")
    with pytest.raises(SystemExit):
        parse_settings([*BASE, f"--{flag}={value}"])
    assert f"--{flag}" in capsys.readouterr().err


def test_disabling_an_unbuilt_default_on_feature_is_fine() -> None:
    assert parse_settings([*BASE, "--tracing=false", "--enable-pprof=false"]).tracing is False


def test_deprecated_metric_flags_are_startup_errors(capsys: pytest.CaptureFixture[str]) -> None:
    with pytest.raises(SystemExit):
        parse_settings([*BASE, "--kv-cache-usage-percentage-metric", "vllm:gpu_cache_usage_perc"])
    assert "engineConfigs" in capsys.readouterr().err


def test_help_lists_every_flag() -> None:
    text = build_parser().format_help()
    for flag, *_ in FLAGS:
        assert f"--{flag}" in text


def test_request_body_limit_and_idle_timeout_flags(capsys: pytest.CaptureFixture[str]) -> None:
    defaults = parse_settings(["--endpoints", "10.0.0.1:8000"])
    assert defaults.max_request_body_bytes == 64 * 1024 * 1024 and defaults.stream_idle_timeout == 300.0
    given = parse_settings(
        ["--endpoints", "10.0.0.1:8000", "--max-request-body-bytes", "1MiB", "--stream-idle-timeout", "0"]
    )
    assert given.max_request_body_bytes == 1 << 20 and given.stream_idle_timeout == 0.0
    with pytest.raises(SystemExit):
        parse_settings(["--endpoints", "10.0.0.1:8000", "--max-request-body-bytes", "0"])
    assert "--max-request-body-bytes 0: must be positive" in capsys.readouterr().err


def test_metrics_port_flags(capsys: pytest.CaptureFixture[str]) -> None:
    defaults = parse_settings(BASE)
    assert defaults.metrics_endpoint_auth is True and defaults.debug_decisions == 100
    assert defaults.emit_endpoint_scores is False
    given = parse_settings(
        [*BASE, "--emit-endpoint-scores", "--debug-decisions", "0", "--metrics-endpoint-auth=false",
         "--metrics-cert-dir", "/certs", "--metrics-client-ca-file", "/certs/ca.crt"]
    )  # fmt: skip
    assert given.emit_endpoint_scores and given.debug_decisions == 0 and given.metrics_client_ca_file
    kubernetes = parse_settings(["--pool-name", "pool", "--metrics-endpoint-auth=true"])
    assert kubernetes.metrics_endpoint_auth is True
    for args, message in (
        (["--metrics-endpoint-auth=true"], "--metrics-endpoint-auth=true checks bearer tokens with the Kubernetes API"),
        (["--metrics-client-ca-file", "ca.crt"], "--metrics-client-ca-file needs --metrics-cert-dir"),
        (["--debug-decisions", "-1"], "--debug-decisions -1: keep 0 (none) to 100000"),
        (["--debug-decisions", "100001"], "--debug-decisions 100001"),
    ):
        with pytest.raises(SystemExit):
            parse_settings([*BASE, *args])
        assert message in capsys.readouterr().err, args

"""`epp bbr`: the body-based routing server's flags, as the reference's `bbr` binary (gRPC :9004, health :9005,
metrics :9090, TLS by default, `--streaming` for FULL_DUPLEX_STREAMED) with epp's logging, TLS and limit flags."""

from __future__ import annotations

import sys
from collections.abc import Sequence

from epp.cli import FLAGS, NOT_BUILT, Settings, build_parser, parse_bool, parse_flags, parse_port, validate_serving

#: flags shared with `epp` (same meaning), then body-based routing's own or its different defaults
_SHARED = (
    "metrics-endpoint-auth", "enable-pprof", "secure-serving", "cert-path", "enable-cert-reload", "v",
    "zap-encoder", "zap-log-level", "zap-devel", "zap-stacktrace-level", "zap-time-encoding", "drain-timeout",
    "grpc-max-recv-msg-size", "grpc-max-send-msg-size", "max-request-body-bytes", "stream-idle-timeout",
)  # fmt: skip
BBR_FLAGS = (
    ("grpc-port", 9004, parse_port, "ext_proc gRPC listen port"),
    ("grpc-health-port", 9005, parse_port, "gRPC health service port"),
    ("metrics-port", 9090, parse_port, "Prometheus /metrics port"),
    (
        "streaming",
        False,
        parse_bool,
        "assume FULL_DUPLEX_STREAMED when Envoy does not announce its body mode (false: BUFFERED, as the reference)",
    ),
    *(flag for flag in FLAGS if flag[0] in _SHARED),
)
_DESCRIPTION = (
    "Body-based routing: an ext_proc server placed before route selection that copies the request body's "
    "model into the x-gateway-model-name header, so routes can choose the InferencePool by model."
)


#: refused when given as true, whatever `epp` itself builds: body-based routing has its own metrics server
BBR_NOT_BUILT = {
    **{flag: why for flag, why in NOT_BUILT.items() if flag in _SHARED},
    "metrics-endpoint-auth": "authentication of epp bbr's /metrics is not built; give --metrics-endpoint-auth=false",
    "enable-pprof": "pprof is a Go runtime feature; profile epp bbr with py-spy instead",
}


def validate(settings: Settings) -> list[str]:
    return validate_serving(settings, BBR_NOT_BUILT)


def parse_bbr_settings(argv: Sequence[str]) -> Settings:
    return parse_flags(argv, build_parser(BBR_FLAGS, "epp bbr", _DESCRIPTION), validate)


def main(argv: Sequence[str] | None = None) -> int:
    settings = parse_bbr_settings(list(sys.argv[1:] if argv is None else argv))
    from epp.bbr.app import run

    return run(settings)

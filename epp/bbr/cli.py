"""`epp bbr`: the body-based routing server's flags, as the reference's `bbr` binary (gRPC :9004, health :9005,
metrics :9090, TLS by default, `--streaming` for FULL_DUPLEX_STREAMED) with epp's logging, TLS and limit flags
(epp/bbr/settings.py)."""

from __future__ import annotations

import sys
from collections.abc import Sequence

from epp.bbr.settings import BbrSettings
from epp.flags import NOT_BUILT, build_parser, parse_flags, validate_serving
from epp.settings import flag_specs

_DESCRIPTION = (
    "Body-based routing: an ext_proc server placed before route selection that copies the request body's "
    "model into the x-gateway-model-name header, so routes can choose the InferencePool by model."
)
_FLAGS = {spec.name for spec in flag_specs(BbrSettings)}

#: refused when given as true, whatever `epp` itself builds: body-based routing has its own metrics server
BBR_NOT_BUILT = {
    **{flag: why for flag, why in NOT_BUILT.items() if flag in _FLAGS},
    "metrics-endpoint-auth": "authentication of epp bbr's /metrics is not built; give --metrics-endpoint-auth=false",
    "enable-pprof": "pprof is a Go runtime feature; profile epp bbr with py-spy instead",
}


def validate(settings: BbrSettings) -> list[str]:
    return validate_serving(settings, BBR_NOT_BUILT)


def parse_bbr_settings(argv: Sequence[str]) -> BbrSettings:
    return parse_flags(argv, BbrSettings, build_parser(BbrSettings, "epp bbr", _DESCRIPTION), validate)


def main(argv: Sequence[str] | None = None) -> int:
    settings = parse_bbr_settings(list(sys.argv[1:] if argv is None else argv))
    from epp.bbr.app import run

    return run(settings)

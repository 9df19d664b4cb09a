"""`epp bbr`'s settings: the serving flags every ext_proc server here has (epp's meaning and defaults, except
the reference `bbr` binary's ports: gRPC :9004, health :9005) and `--streaming`."""

from __future__ import annotations

from dataclasses import dataclass

from epp.settings import ServingSettings, flag
from epp.units import parse_bool, parse_port


@dataclass(frozen=True, slots=True)
class BbrSettings(ServingSettings):
    grpc_port: int = flag(9004, parse_port, "ext_proc gRPC listen port")
    grpc_health_port: int = flag(9005, parse_port, "gRPC health service port")
    streaming: bool = flag(
        False,
        parse_bool,
        "assume FULL_DUPLEX_STREAMED when Envoy does not announce its body mode (false: BUFFERED, as the reference)",
    )

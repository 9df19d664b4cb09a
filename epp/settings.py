"""The EPP's settings: one typed, frozen field per command-line flag.

A flag is one declaration here: `name: type = flag(default, parse, help)` makes `--name-with-dashes` (the
reference's spelling), parsed by `parse` (epp/units.py; `parse_bool` makes a pflag-style boolean). The CLI
(epp/cli.py) builds the parser from these fields and checks the combinations; everything else reads the
settings as typed attributes.
"""

from __future__ import annotations

import dataclasses
from collections.abc import Callable, Iterator
from dataclasses import dataclass, field
from typing import TypeVar

from epp.units import parse_bool, parse_duration, parse_port, parse_ports, parse_quantity

T = TypeVar("T")
_SPEC = "flag"


@dataclass(frozen=True, slots=True)
class FlagSpec:
    """How one flag reads and what it says in --help."""

    name: str
    default: object
    parse: Callable[[str], object]
    help: str

    @property
    def dest(self) -> str:
        return self.name.replace("-", "_")

    @property
    def boolean(self) -> bool:
        return self.parse is parse_bool


def flag(default: T, parse: Callable[[str], T], help: str) -> T:
    """A settings field read from `--<field name with dashes>`."""
    return field(default=default, metadata={_SPEC: (parse, help)})


@dataclass(frozen=True, slots=True)
class ServingSettings:
    """The flags every ext_proc server here has (`epp` and `epp bbr`): ports, TLS, logging, limits."""

    grpc_port: int = flag(9002, parse_port, "ext_proc gRPC listen port")
    grpc_health_port: int = flag(9003, parse_port, "gRPC health service port")
    metrics_port: int = flag(9090, parse_port, "Prometheus /metrics port")
    metrics_endpoint_auth: bool = flag(
        True,
        parse_bool,
        "Kubernetes mode: /metrics and /debug need a bearer token the API server authenticates (TokenReview) and"
        " allows (SubjectAccessReview, nonResourceURL = the path, verb get); standalone there is no API server:"
        " the default serves them openly with a warning and an explicit true is refused",
    )
    enable_pprof: bool = flag(True, parse_bool, "Go pprof endpoints (not available in the Python EPP)")
    secure_serving: bool = flag(True, parse_bool, "serve ext_proc over TLS")
    cert_path: str = flag("", str, "directory with tls.crt and tls.key (empty: self-signed)")
    enable_cert_reload: bool = flag(False, parse_bool, "reload --cert-path files when they change")
    v: int = flag(2, int, "log verbosity: 1 quiet, 2 default, 3 verbose, 4 debug, 5 trace")
    zap_encoder: str = flag("", str, "log encoding: json or console (unset: console with --zap-devel, else json)")
    zap_log_level: str = flag(
        "", str, "log level: debug, info, error, panic or a verbosity > 0; wins over --v when set"
    )
    zap_devel: bool = flag(
        True, parse_bool, "development defaults (console, stack traces from warn); false: production"
    )
    zap_stacktrace_level: str = flag(
        "", str, "info, error or panic: lines from it carry a stack trace (unset: warn/error)"
    )
    zap_time_encoding: str = flag("", str, "epoch, millis, nano, iso8601, rfc3339 or rfc3339nano (unset: rfc3339)")
    drain_timeout: float = flag(30.0, parse_duration, "on SIGTERM, how long in-flight streams may take to finish")
    grpc_max_recv_msg_size: int = flag(16 * 1024 * 1024, parse_quantity, "largest gRPC message accepted (e.g. 25MiB)")
    grpc_max_send_msg_size: int = flag(16 * 1024 * 1024, parse_quantity, "largest gRPC message sent")
    # Not in the reference (hardening):
    max_request_body_bytes: int = flag(
        64 * 1024 * 1024,
        parse_quantity,
        "longest request body buffered for a pick (e.g. 64MiB); longer ones are answered 413",
    )
    stream_idle_timeout: float = flag(
        300.0,
        parse_duration,
        "close an ext_proc stream that sends no message for this long, releasing its pick (0: never); keep it"
        " above the longest silence of a request, e.g. a non-streaming generation",
    )

    #: the flags the user gave (field names), as opposed to defaults
    explicit: frozenset[str] = frozenset()


@dataclass(frozen=True, slots=True)
class Settings(ServingSettings):
    """`epp`'s flags."""

    pool_name: str = flag("", str, "InferencePool name (Kubernetes discovery)")
    pool_namespace: str = flag("", str, "InferencePool namespace (flag → NAMESPACE env → default)")
    pool_group: str = flag("inference.networking.k8s.io", str, "InferencePool API group")
    endpoint_selector: str = flag("", str, "pod label selector k=v,k2=v2 (Kubernetes without the InferencePool CRD)")
    endpoint_target_ports: tuple[int, ...] = flag(
        (), parse_ports, "target ports for --endpoint-selector, comma separated"
    )
    disable_endpoint_subset_filter: bool = flag(False, parse_bool, "ignore the envoy.lb.subset_hint metadata")
    refresh_metrics_interval: float = flag(0.05, parse_duration, "model-server /metrics scrape interval")
    refresh_prometheus_metrics_interval: float = flag(5.0, parse_duration, "refresh interval of the pool gauges")
    metrics_staleness_threshold: float = flag(
        2.0,
        parse_duration,
        "age after which an endpoint's metrics are stale; an endpoint whose scrapes have failed this long gets no"
        " new requests while another is reachable",
    )
    health_checking: bool = flag(False, parse_bool, "also serve gRPC health on the ext_proc port")
    ha_enable_leader_election: bool = flag(False, parse_bool, "leader election through a coordination.k8s.io Lease")
    ha_lease_duration: float = flag(15.0, parse_duration, "leader election: how long a lease not renewed stays held")
    ha_renew_deadline: float = flag(
        10.0, parse_duration, "leader election: the leader steps down if it cannot renew this long"
    )
    ha_retry_period: float = flag(2.0, parse_duration, "leader election: interval between acquire / renew attempts")
    tracing: bool = flag(True, parse_bool, "OpenTelemetry tracing")
    config_file: str = flag("", str, "EndpointPickerConfig file")
    config_text: str = flag("", str, "EndpointPickerConfig as text")
    model_server_metrics_scheme: str = flag("http", str, "deprecated: scheme of model-server metrics")
    model_server_metrics_path: str = flag("/metrics", str, "deprecated: path of model-server metrics")
    model_server_metrics_https_insecure_skip_verify: bool = flag(True, parse_bool, "deprecated: skip TLS verification")
    model_server_metrics_port: int = flag(
        0, parse_port, "deprecated: scrape this port when the pool has one target port"
    )
    total_queued_requests_metric: str = flag("", str, "deprecated: configure via engineConfigs")
    total_running_requests_metric: str = flag("", str, "deprecated: configure via engineConfigs")
    kv_cache_usage_percentage_metric: str = flag("", str, "deprecated: configure via engineConfigs")
    lora_info_metric: str = flag("", str, "deprecated: configure via engineConfigs")
    cache_info_metric: str = flag("", str, "deprecated: configure via engineConfigs")
    emit_endpoint_scores: bool = flag(
        False,
        parse_bool,
        "every scored endpoint's total score in the envoy.lb dynamic metadata key"
        " x-gateway-destination-endpoint-scores",
    )
    enable_grpc_stream_metrics: bool = flag(False, parse_bool, "ext_proc stream metrics")
    tls_min_version: str = flag("", str, "minimum TLS version of the ext_proc server")
    tls_cipher_suites: str = flag("", str, "TLS cipher suites of the ext_proc server")
    metrics_cert_dir: str = flag("", str, "serve the metrics port over TLS with tls.crt and tls.key of this directory")
    metrics_client_ca_file: str = flag(
        "", str, "with --metrics-cert-dir: require client certificates signed by this CA"
    )
    allow_experimental_plugins: bool = flag(False, parse_bool, "allow Alpha-stability plugins")
    # Not in the reference (debugging):
    debug_decisions: int = flag(
        100,
        int,
        "routing decisions kept for /debug/decisions and the status page (0: none recorded); each keeps its"
        " profiles' arrays: about 8 bytes x (filters + scorers + 1) per candidate",
    )
    # Standalone discovery (not in the reference):
    endpoints: str = flag("", str, "static endpoints ip:port[,ip:port...] (standalone, no Kubernetes)")
    endpoints_file: str = flag("", str, "YAML file of endpoints (address, port, name, labels); re-read on change")
    max_endpoints: int = flag(16384, int, "capacity of the endpoint table")
    # Active-active replicas (not in the reference):
    shared_state: str = flag(
        "",
        str,
        "Redis or Valkey URL redis://[user:password@]host:port[/db] (rediss:// for TLS): replicas share in-flight"
        " load and prefix learning and route as one (empty: this replica routes on its own state)",
    )
    shared_state_password_file: str = flag("", str, "file holding the --shared-state password (instead of the URL's)")


def flag_specs(settings_type: type[ServingSettings] = Settings) -> Iterator[FlagSpec]:
    """Every flag of a program's settings (`epp`'s by default), the shared serving flags first."""
    for spec in dataclasses.fields(settings_type):
        if _SPEC in spec.metadata:
            parse, help_text = spec.metadata[_SPEC]
            yield FlagSpec(spec.name.replace("_", "-"), spec.default, parse, help_text)


def flag_values(settings: ServingSettings) -> dict[str, object]:
    """Every flag's value by field name (what /debug/config shows)."""
    return {spec.dest: getattr(settings, spec.dest) for spec in flag_specs(type(settings))}

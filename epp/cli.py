"""`epp` command line: the reference EPP's flags (same names, forms and defaults) plus standalone discovery.

Forms accepted as pflag does: `--flag value`, `--flag=value`, bare `--bool-flag` (= true) and
`--bool-flag=false`. A flag whose feature is not built yet stops the process with a message naming it.
Sub-commands: `epp config check FILE`, `epp migrate PATH...` (v1alpha2 → v1 manifests), `epp bbr` (body-based
routing, its own ext_proc server).
"""

from __future__ import annotations

import argparse
import os
import re
import sys
from collections.abc import Callable, Mapping, Sequence
from dataclasses import dataclass, field
from typing import Any

from epp.observability.logging import ENCODERS, LogOptions

_DURATION_PART = re.compile(r"(\d+(?:\.\d*)?|\.\d+)(ns|us|µs|ms|s|m|h)")
_DURATION_UNITS = {"ns": 1e-9, "us": 1e-6, "µs": 1e-6, "ms": 1e-3, "s": 1.0, "m": 60.0, "h": 3600.0}
_QUANTITY = re.compile(r"^(\d+(?:\.\d+)?)\s*([KMGT]i?B?|[kKMGT]B?|B)?$")
_QUANTITY_UNITS = {"": 1, "B": 1, "k": 10**3, "K": 10**3, "M": 10**6, "G": 10**9, "T": 10**12}


def parse_duration(text: str) -> float:
    """Go duration (`50ms`, `2s`, `1m30s`, `0`) → seconds."""
    value = text.strip()
    if value in ("0", "-0", "+0"):
        return 0.0
    position, total = 0, 0.0
    for match in _DURATION_PART.finditer(value):
        if match.start() != position:
            break
        total += float(match.group(1)) * _DURATION_UNITS[match.group(2)]
        position = match.end()
    if position != len(value) or position == 0:
        raise argparse.ArgumentTypeError(f"invalid duration {text!r}; use a number with a unit, e.g. 50ms, 2s, 1m30s")
    return total


def parse_bool(text: str) -> bool:
    lowered = text.strip().lower()
    if lowered in ("1", "t", "true"):
        return True
    if lowered in ("0", "f", "false"):
        return False
    raise argparse.ArgumentTypeError(f"invalid boolean {text!r}; use true or false")


def parse_quantity(text: str) -> int:
    """`25MiB`, `4Mi`, `10M`, `1048576` → bytes."""
    match = _QUANTITY.match(text.strip())
    if not match:
        raise argparse.ArgumentTypeError(f"invalid size {text!r}; use bytes or a quantity such as 4MiB, 25Mi, 10M")
    number, unit = float(match.group(1)), (match.group(2) or "").removesuffix("B")
    factor = 1024 ** "KMGT".index(unit[0]) * 1024 if unit.endswith("i") else _QUANTITY_UNITS[unit]
    return int(number * factor)


def parse_port(text: str) -> int:
    try:
        port = int(text)
    except ValueError:
        raise argparse.ArgumentTypeError(f"invalid port {text!r}") from None
    if not 0 <= port <= 65535:
        raise argparse.ArgumentTypeError(f"port {port} out of range 0..65535")
    return port


def parse_ports(text: str) -> list[int]:
    ports = list(dict.fromkeys(parse_port(p) for p in text.split(",") if p.strip()))
    if not 1 <= len(ports) <= 8:
        raise argparse.ArgumentTypeError(f"--endpoint-target-ports takes 1 to 8 ports, got {text!r}")
    return ports


@dataclass
class Settings:
    values: dict[str, Any]
    #: flags the user actually gave (dest names)
    explicit: set[str] = field(default_factory=set)

    def __getattr__(self, name: str) -> Any:
        try:
            return self.values[name]
        except KeyError:
            raise AttributeError(name) from None


# (flag, default, parser, help). A parser of parse_bool makes a pflag-style boolean.
_Flag = tuple[str, Any, Callable[[str], Any], str]
FLAGS: tuple[_Flag, ...] = (
    ("grpc-port", 9002, parse_port, "ext_proc gRPC listen port"),
    ("grpc-health-port", 9003, parse_port, "gRPC health service port"),
    ("metrics-port", 9090, parse_port, "Prometheus /metrics port"),
    (
        "metrics-endpoint-auth",
        True,
        parse_bool,
        "Kubernetes mode: /metrics and /debug need a bearer token the API server authenticates (TokenReview) and"
        " allows (SubjectAccessReview, nonResourceURL = the path, verb get); standalone there is no API server:"
        " the default serves them openly with a warning and an explicit true is refused",
    ),
    ("enable-pprof", True, parse_bool, "Go pprof endpoints (not available in the Python EPP)"),
    ("pool-name", "", str, "InferencePool name (Kubernetes discovery)"),
    ("pool-namespace", "", str, "InferencePool namespace (flag → NAMESPACE env → default)"),
    ("pool-group", "inference.networking.k8s.io", str, "InferencePool API group"),
    ("endpoint-selector", "", str, "pod label selector k=v,k2=v2 (Kubernetes without the InferencePool CRD)"),
    ("endpoint-target-ports", [], parse_ports, "target ports for --endpoint-selector, comma separated"),
    ("disable-endpoint-subset-filter", False, parse_bool, "ignore the envoy.lb.subset_hint metadata"),
    ("refresh-metrics-interval", 0.05, parse_duration, "model-server /metrics scrape interval"),
    ("refresh-prometheus-metrics-interval", 5.0, parse_duration, "refresh interval of the pool gauges"),
    (
        "metrics-staleness-threshold",
        2.0,
        parse_duration,
        "age after which an endpoint's metrics are stale; an endpoint whose scrapes have failed this long gets no"
        " new requests while another is reachable",
    ),
    ("secure-serving", True, parse_bool, "serve ext_proc over TLS"),
    ("cert-path", "", str, "directory with tls.crt and tls.key (empty: self-signed)"),
    ("enable-cert-reload", False, parse_bool, "reload --cert-path files when they change"),
    ("health-checking", False, parse_bool, "also serve gRPC health on the ext_proc port"),
    ("ha-enable-leader-election", False, parse_bool, "leader election through a coordination.k8s.io Lease"),
    ("ha-lease-duration", 15.0, parse_duration, "leader election: how long a lease not renewed stays held"),
    ("ha-renew-deadline", 10.0, parse_duration, "leader election: the leader steps down if it cannot renew this long"),
    ("ha-retry-period", 2.0, parse_duration, "leader election: interval between acquire / renew attempts"),
    ("tracing", True, parse_bool, "OpenTelemetry tracing"),
    ("config-file", "", str, "EndpointPickerConfig file"),
    ("config-text", "", str, "EndpointPickerConfig as text"),
    ("v", 2, int, "log verbosity: 1 quiet, 2 default, 3 verbose, 4 debug, 5 trace"),
    ("zap-encoder", "", str, "log encoding: json or console (unset: console with --zap-devel, else json)"),
    ("zap-log-level", "", str, "log level: debug, info, error, panic or a verbosity > 0; wins over --v when set"),
    ("zap-devel", True, parse_bool, "development defaults (console, stack traces from warn); false: production"),
    ("zap-stacktrace-level", "", str, "info, error or panic: lines from it carry a stack trace (unset: warn/error)"),
    ("zap-time-encoding", "", str, "epoch, millis, nano, iso8601, rfc3339 or rfc3339nano (unset: rfc3339)"),
    ("model-server-metrics-scheme", "http", str, "deprecated: scheme of model-server metrics"),
    ("model-server-metrics-path", "/metrics", str, "deprecated: path of model-server metrics"),
    ("model-server-metrics-https-insecure-skip-verify", True, parse_bool, "deprecated: skip TLS verification"),
    ("model-server-metrics-port", 0, parse_port, "deprecated: scrape this port when the pool has one target port"),
    ("total-queued-requests-metric", "", str, "deprecated: configure via engineConfigs"),
    ("total-running-requests-metric", "", str, "deprecated: configure via engineConfigs"),
    ("kv-cache-usage-percentage-metric", "", str, "deprecated: configure via engineConfigs"),
    ("lora-info-metric", "", str, "deprecated: configure via engineConfigs"),
    ("cache-info-metric", "", str, "deprecated: configure via engineConfigs"),
    ("drain-timeout", 30.0, parse_duration, "on SIGTERM, how long in-flight streams may take to finish"),
    ("grpc-max-recv-msg-size", 16 * 1024 * 1024, parse_quantity, "largest gRPC message accepted (e.g. 25MiB)"),
    ("grpc-max-send-msg-size", 16 * 1024 * 1024, parse_quantity, "largest gRPC message sent"),
    # Not in the reference (hardening):
    (
        "max-request-body-bytes",
        64 * 1024 * 1024,
        parse_quantity,
        "longest request body buffered for a pick (e.g. 64MiB); longer ones are answered 413",
    ),
    (
        "stream-idle-timeout",
        300.0,
        parse_duration,
        "close an ext_proc stream that sends no message for this long, releasing its pick (0: never); keep it"
        " above the longest silence of a request, e.g. a non-streaming generation",
    ),
    (
        "emit-endpoint-scores",
        False,
        parse_bool,
        "every scored endpoint's total score in the envoy.lb dynamic metadata key"
        " x-gateway-destination-endpoint-scores",
    ),
    ("enable-grpc-stream-metrics", False, parse_bool, "ext_proc stream metrics"),
    ("tls-min-version", "", str, "minimum TLS version of the ext_proc server"),
    ("tls-cipher-suites", "", str, "TLS cipher suites of the ext_proc server"),
    ("metrics-cert-dir", "", str, "serve the metrics port over TLS with tls.crt and tls.key of this directory"),
    ("metrics-client-ca-file", "", str, "with --metrics-cert-dir: require client certificates signed by this CA"),
    ("allow-experimental-plugins", False, parse_bool, "allow Alpha-stability plugins"),
    # Not in the reference (debugging):
    (
        "debug-decisions",
        100,
        int,
        "routing decisions kept for /debug/decisions and the status page (0: none recorded); each keeps its"
        " profiles' arrays: about 8 bytes x (filters + scorers + 1) per candidate",
    ),
    # Standalone discovery (not in the reference):
    ("endpoints", "", str, "static endpoints ip:port[,ip:port...] (standalone, no Kubernetes)"),
    ("endpoints-file", "", str, "YAML file of endpoints (address, port, name, labels); re-read on change"),
    ("max-endpoints", 16384, int, "capacity of the endpoint table"),
    # Active-active replicas (not in the reference):
    (
        "shared-state",
        "",
        str,
        "Redis or Valkey URL redis://[user:password@]host:port[/db] (rediss:// for TLS): replicas share in-flight"
        " load and prefix learning and route as one (empty: this replica routes on its own state)",
    ),
    ("shared-state-password-file", "", str, "file holding the --shared-state password (instead of the URL's)"),
)

_DEPRECATED_METRIC_FLAGS = (
    "total-queued-requests-metric",
    "total-running-requests-metric",
    "kv-cache-usage-percentage-metric",
    "lora-info-metric",
    "cache-info-metric",
)

#: flag → why it stops the process when given (features not built in this version)
NOT_BUILT: dict[str, str] = {
    "enable-pprof": "pprof is a Go runtime feature; profile the Python EPP with py-spy instead",
    "enable-grpc-stream-metrics": "ext_proc stream metrics are not built yet",
    "tls-min-version": "TLS version selection is not supported by the gRPC Python server",
    "tls-cipher-suites": "TLS cipher-suite selection is not supported by the gRPC Python server",
    "allow-experimental-plugins": "there are no experimental (Alpha) plugins to allow in this build",
}


def _dest(flag: str) -> str:
    return flag.replace("-", "_")


class _Recorder(argparse.Action):
    def __call__(
        self, parser: argparse.ArgumentParser, namespace: argparse.Namespace, values: Any, option: Any = None
    ) -> None:
        setattr(namespace, self.dest, values)
        namespace._explicit.add(self.dest)


_DESCRIPTION = (
    "Endpoint Picker for the Gateway API Inference Extension (Envoy ext_proc). "
    "Sub-commands: 'epp config check FILE', 'epp migrate PATH...', 'epp bbr --help' (body-based routing)."
)


def find_flag(name: str) -> _Flag:
    return next(f for f in FLAGS if f[0] == name)


def build_parser(
    flags: Sequence[_Flag] = FLAGS, prog: str = "epp", description: str = _DESCRIPTION
) -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(prog=prog, description=description, allow_abbrev=False)
    for flag, default, kind, help_text in flags:
        extra: dict[str, Any] = {}
        if kind is parse_bool:
            extra = {"nargs": "?", "const": True, "metavar": "BOOL"}
        parser.add_argument(
            f"--{flag}",
            dest=_dest(flag),
            default=default,
            type=kind,
            action=_Recorder,
            help=f"{help_text} (default {default!r})",
            **extra,
        )
    return parser


def parse_flags(
    argv: Sequence[str], parser: argparse.ArgumentParser, check: Callable[[Settings], list[str]]
) -> Settings:
    """Parse `argv`; on any error from `check` print them all (each prefixed with the program) and exit 2."""
    namespace = argparse.Namespace(_explicit=set())
    parser.parse_args(list(argv), namespace=namespace)
    explicit: set[str] = namespace._explicit
    values = {k: v for k, v in vars(namespace).items() if k != "_explicit"}
    settings = Settings(values, explicit)
    errors = check(settings)
    if errors:
        parser.exit(2, "".join(f"{parser.prog}: {e}\n" for e in errors))
    return settings


def parse_settings(argv: Sequence[str]) -> Settings:
    return parse_flags(argv, build_parser(), validate)


def validate_serving(settings: Settings, not_built: Mapping[str, str] = NOT_BUILT) -> list[str]:
    """Checks of the flags every ext_proc server here has (epp and epp bbr): unbuilt features (`not_built`:
    flag → why it is refused when given), logging, TLS, request limits."""
    errors: list[str] = []
    for flag, why in not_built.items():
        dest = _dest(flag)
        if dest not in settings.explicit:
            continue
        if settings.values[dest] is False:  # an unbuilt switch given off asks for nothing
            continue
        errors.append(f"--{flag}: {why}")
    if settings.v < 0:
        errors.append(f"--v {settings.v}: verbosity must be 0 or more")
    if settings.zap_encoder and settings.zap_encoder not in ENCODERS:
        errors.append(f"--zap-encoder {settings.zap_encoder!r}: use json or console")
    else:
        try:
            log_options(settings)
        except ValueError as exc:
            errors.append(str(exc))
    if settings.enable_cert_reload and not settings.cert_path:
        errors.append("--enable-cert-reload needs --cert-path")
    if settings.max_request_body_bytes <= 0:
        errors.append(f"--max-request-body-bytes {settings.max_request_body_bytes}: must be positive")
    if settings.stream_idle_timeout < 0:
        errors.append(f"--stream-idle-timeout {settings.stream_idle_timeout}s: must be 0 (never) or more")
    return errors


def validate(settings: Settings) -> list[str]:
    errors: list[str] = []
    given = settings.explicit
    for flag in _DEPRECATED_METRIC_FLAGS:
        if _dest(flag) in given:
            errors.append(
                f"--{flag} is no longer supported; configure metric names via engineConfigs of the "
                "core-metrics-extractor in the EndpointPickerConfig"
            )
    errors.extend(validate_serving(settings))
    if settings.config_file and settings.config_text:
        errors.append("--config-file and --config-text are mutually exclusive; give one")
    sources = [
        f for f in ("pool-name", "endpoint-selector", "endpoints", "endpoints-file") if settings.values[_dest(f)]
    ]
    if len(sources) != 1:
        errors.append(
            "exactly one source of endpoints is required: --endpoints, --endpoints-file, --pool-name or "
            f"--endpoint-selector (got {', '.join('--' + s for s in sources) or 'none'})"
        )
    errors.extend(_validate_kubernetes(settings))
    if settings.model_server_metrics_scheme not in ("http", "https"):
        errors.append(f"--model-server-metrics-scheme {settings.model_server_metrics_scheme!r}: use http or https")
    if settings.max_endpoints <= 0:
        errors.append(f"--max-endpoints {settings.max_endpoints}: must be positive")
    if not 0 <= settings.debug_decisions <= MAX_DEBUG_DECISIONS:
        errors.append(f"--debug-decisions {settings.debug_decisions}: keep 0 (none) to {MAX_DEBUG_DECISIONS}")
    errors.extend(_validate_metrics_port(settings))
    errors.extend(_validate_shared_state(settings))
    return errors


MAX_DEBUG_DECISIONS = 100_000


def _validate_metrics_port(settings: Settings) -> list[str]:
    errors: list[str] = []
    kubernetes = bool(settings.pool_name or settings.endpoint_selector)
    if "metrics_endpoint_auth" in settings.explicit and settings.metrics_endpoint_auth and not kubernetes:
        errors.append(
            "--metrics-endpoint-auth=true checks bearer tokens with the Kubernetes API (TokenReview and "
            "SubjectAccessReview), which standalone discovery does not use; give --pool-name or "
            "--endpoint-selector, or --metrics-endpoint-auth=false (with --metrics-cert-dir and "
            "--metrics-client-ca-file to require client certificates instead)"
        )
    if settings.metrics_client_ca_file and not settings.metrics_cert_dir:
        errors.append("--metrics-client-ca-file needs --metrics-cert-dir (client certificates are checked over TLS)")
    return errors


def _validate_shared_state(settings: Settings) -> list[str]:
    if not settings.shared_state:
        if settings.shared_state_password_file:
            return ["--shared-state-password-file applies to --shared-state; give the store's URL too"]
        return []
    from epp.shared.settings import SharedStateError, parse_shared_state

    try:
        parse_shared_state(settings.shared_state, settings.shared_state_password_file)
    except SharedStateError as exc:
        return [str(exc)]
    return []


_POOL_GROUPS = ("inference.networking.k8s.io", "inference.networking.x-k8s.io")
_KUBERNETES_ONLY = ("pool-namespace", "pool-group", "ha-enable-leader-election", "model-server-metrics-port")


def _validate_kubernetes(settings: Settings) -> list[str]:
    errors: list[str] = []
    given = settings.explicit
    kubernetes = bool(settings.pool_name or settings.endpoint_selector)
    if settings.pool_group not in _POOL_GROUPS:
        errors.append(
            f"--pool-group {settings.pool_group!r}: use inference.networking.k8s.io (InferencePool v1) or "
            "inference.networking.x-k8s.io (InferencePool v1alpha2)"
        )
    if settings.endpoint_selector:
        from epp.k8s.pool import PoolSpecError, parse_selector_flag

        try:
            parse_selector_flag(settings.endpoint_selector)
        except PoolSpecError as exc:
            errors.append(str(exc))
    if settings.endpoint_selector and not settings.endpoint_target_ports:
        errors.append("--endpoint-selector needs --endpoint-target-ports (the model servers' ports, e.g. 8000)")
    if settings.endpoint_target_ports and not settings.endpoint_selector:
        errors.append(
            "--endpoint-target-ports applies to --endpoint-selector; with --pool-name the pool names its ports"
        )
    if settings.endpoint_selector and not os.environ.get("POD_NAME"):
        errors.append(
            "--endpoint-selector needs the POD_NAME environment variable (the downward API's metadata.name) to name "
            "the pool after the EPP's Deployment"
        )
    for flag in _KUBERNETES_ONLY:
        if _dest(flag) in given and settings.values[_dest(flag)] and not kubernetes:
            errors.append(f"--{flag} applies to Kubernetes discovery; give --pool-name or --endpoint-selector")
    if settings.ha_enable_leader_election and not (
        settings.ha_lease_duration > settings.ha_renew_deadline > settings.ha_retry_period > 0
    ):
        errors.append(
            f"leader election needs --ha-lease-duration ({settings.ha_lease_duration}s) > --ha-renew-deadline "
            f"({settings.ha_renew_deadline}s) > --ha-retry-period ({settings.ha_retry_period}s) > 0"
        )
    return errors


def log_options(settings: Settings) -> LogOptions:
    """The logging set-up the --v and --zap-* flags ask for (ValueError naming a bad value)."""
    return LogOptions.from_flags(
        settings.v,
        encoder=settings.zap_encoder,
        log_level=settings.zap_log_level,
        devel=settings.zap_devel,
        stacktrace_level=settings.zap_stacktrace_level,
        time_encoding=settings.zap_time_encoding,
    )


def main(argv: Sequence[str] | None = None) -> int:
    args = list(sys.argv[1:] if argv is None else argv)
    if args[:2] == ["config", "check"]:
        from epp.config.check import main as config_check

        return config_check(args[2:])
    if args and args[0] == "config":
        print("usage: epp config check FILE", file=sys.stderr)
        return 2
    if args and args[0] == "migrate":
        from epp.migrate.cli import main as migrate

        return migrate(args[1:])
    if args and args[0] == "bbr":
        from epp.bbr.cli import main as bbr

        return bbr(args[1:])
    settings = parse_settings(args)
    if not settings.pool_namespace:
        settings.values["pool_namespace"] = os.environ.get("NAMESPACE", "default")
    from epp.app import run

    return run(settings)


if __name__ == "__main__":
    raise SystemExit(main())

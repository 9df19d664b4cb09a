"""`epp` command line: the reference EPP's flags (same names, forms and defaults) plus standalone discovery.

Forms accepted as pflag does: `--flag value`, `--flag=value`, bare `--bool-flag` (= true) and
`--bool-flag=false`. A flag whose feature is not built yet stops the process with a message naming it.
Sub-commands: `epp config check FILE`, `epp migrate PATH...` (v1alpha2 → v1 manifests).
"""

from __future__ import annotations

import argparse
import dataclasses
import os
import sys
from collections.abc import Sequence

from epp.settings import Settings, flag_specs

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
    "zap-stacktrace-level": "stack-trace level selection is not built yet",
    "zap-devel": "zap development mode has no equivalent in this build",
}
#: flags whose value is fine only when it is the (disabled) default
_ONLY_FALSE = {
    "enable-pprof",
    "allow-experimental-plugins",
    "enable-grpc-stream-metrics",
    "zap-devel",
}


def _dest(flag: str) -> str:
    return flag.replace("-", "_")


class _Recorder(argparse.Action):
    def __call__(
        self,
        parser: argparse.ArgumentParser,
        namespace: argparse.Namespace,
        values: str | Sequence[object] | None,
        option: str | None = None,
    ) -> None:
        setattr(namespace, self.dest, values)
        namespace._explicit.add(self.dest)


def build_parser() -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(
        prog="epp",
        description="Endpoint Picker for the Gateway API Inference Extension (Envoy ext_proc). "
        "Sub-commands: 'epp config check FILE', 'epp migrate PATH...'.",
        allow_abbrev=False,
    )
    for spec in flag_specs():
        boolean = {"nargs": "?", "const": True, "metavar": "BOOL"} if spec.boolean else {}
        parser.add_argument(
            f"--{spec.name}",
            dest=spec.dest,
            default=spec.default,
            type=spec.parse,
            action=_Recorder,
            help=f"{spec.help} (default {spec.default!r})",
            **boolean,  # type: ignore[arg-type]
        )
    return parser


def read_flags(argv: Sequence[str]) -> Settings:
    """The settings the flags give (argparse exits on a value that does not parse); not yet validated."""
    namespace = argparse.Namespace(_explicit=set())
    build_parser().parse_args(list(argv), namespace=namespace)
    given = {spec.dest: getattr(namespace, spec.dest) for spec in flag_specs()}
    return Settings(**given, explicit=frozenset(namespace._explicit))


def parse_settings(argv: Sequence[str]) -> Settings:
    settings = read_flags(argv)
    errors = validate(settings)
    if errors:
        build_parser().exit(2, "".join(f"epp: {e}\n" for e in errors))
    return settings


def validate(settings: Settings) -> list[str]:
    errors: list[str] = []
    given = settings.explicit
    for flag in _DEPRECATED_METRIC_FLAGS:
        if _dest(flag) in given:
            errors.append(
                f"--{flag} is no longer supported; configure metric names via engineConfigs of the "
                "core-metrics-extractor in the EndpointPickerConfig"
            )
    for flag, why in NOT_BUILT.items():
        dest = _dest(flag)
        if dest not in given:
            continue
        if flag in _ONLY_FALSE and getattr(settings, dest) is False:
            continue
        errors.append(f"--{flag}: {why}")
    if settings.config_file and settings.config_text:
        errors.append("--config-file and --config-text are mutually exclusive; give one")
    sources = [
        f for f in ("pool-name", "endpoint-selector", "endpoints", "endpoints-file") if getattr(settings, _dest(f))
    ]
    if len(sources) != 1:
        errors.append(
            "exactly one source of endpoints is required: --endpoints, --endpoints-file, --pool-name or "
            f"--endpoint-selector (got {', '.join('--' + s for s in sources) or 'none'})"
        )
    errors.extend(_validate_kubernetes(settings))
    if settings.v < 0:
        errors.append(f"--v {settings.v}: verbosity must be 0 or more")
    if settings.zap_encoder not in ("json", "console"):
        errors.append(f"--zap-encoder {settings.zap_encoder!r}: use json or console")
    if settings.model_server_metrics_scheme not in ("http", "https"):
        errors.append(f"--model-server-metrics-scheme {settings.model_server_metrics_scheme!r}: use http or https")
    if settings.enable_cert_reload and not settings.cert_path:
        errors.append("--enable-cert-reload needs --cert-path")
    if settings.max_request_body_bytes <= 0:
        errors.append(f"--max-request-body-bytes {settings.max_request_body_bytes}: must be positive")
    if settings.stream_idle_timeout < 0:
        errors.append(f"--stream-idle-timeout {settings.stream_idle_timeout}s: must be 0 (never) or more")
    if settings.max_endpoints <= 0:
        errors.append(f"--max-endpoints {settings.max_endpoints}: must be positive")
    if not 0 <= settings.debug_decisions <= MAX_DEBUG_DECISIONS:
        errors.append(f"--debug-decisions {settings.debug_decisions}: keep 0 (none) to {MAX_DEBUG_DECISIONS}")
    errors.extend(_validate_metrics_port(settings))
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
        if _dest(flag) in given and getattr(settings, _dest(flag)) and not kubernetes:
            errors.append(f"--{flag} applies to Kubernetes discovery; give --pool-name or --endpoint-selector")
    if settings.ha_enable_leader_election and not (
        settings.ha_lease_duration > settings.ha_renew_deadline > settings.ha_retry_period > 0
    ):
        errors.append(
            f"leader election needs --ha-lease-duration ({settings.ha_lease_duration}s) > --ha-renew-deadline "
            f"({settings.ha_renew_deadline}s) > --ha-retry-period ({settings.ha_retry_period}s) > 0"
        )
    return errors


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
    settings = parse_settings(args)
    if not settings.pool_namespace:
        settings = dataclasses.replace(settings, pool_namespace=os.environ.get("NAMESPACE", "default"))
    from epp.app import run

    return run(settings)


if __name__ == "__main__":
    raise SystemExit(main())

"""`epp` command line: the reference EPP's flags (same names, forms and defaults) plus standalone discovery.

Forms accepted, and flags of features not built, as epp/flags.py says.
Sub-commands: `epp config check FILE`, `epp migrate PATH...` (v1alpha2 → v1 manifests), `epp bbr` (body-based
routing, its own ext_proc server).
"""

from __future__ import annotations

import argparse
import dataclasses
import os
import sys
from collections.abc import Sequence

from epp import flags
from epp.flags import NOT_BUILT, validate_serving
from epp.settings import Settings

_DEPRECATED_METRIC_FLAGS = (
    "total-queued-requests-metric",
    "total-running-requests-metric",
    "kv-cache-usage-percentage-metric",
    "lora-info-metric",
    "cache-info-metric",
)

_DESCRIPTION = (
    "Endpoint Picker for the Gateway API Inference Extension (Envoy ext_proc). "
    "Sub-commands: 'epp config check FILE', 'epp migrate PATH...', 'epp bbr --help' (body-based routing)."
)


def build_parser() -> argparse.ArgumentParser:
    return flags.build_parser(Settings, "epp", _DESCRIPTION)


def read_flags(argv: Sequence[str]) -> Settings:
    """`epp`'s settings the flags give (argparse exits on a value that does not parse); not yet validated."""
    return flags.read_flags(argv, Settings, build_parser())


def parse_settings(argv: Sequence[str]) -> Settings:
    return flags.parse_flags(argv, Settings, build_parser(), validate)


def validate(settings: Settings) -> list[str]:
    errors: list[str] = []
    given = settings.explicit
    for flag in _DEPRECATED_METRIC_FLAGS:
        if flags.dest(flag) in given:
            errors.append(
                f"--{flag} is no longer supported; configure metric names via engineConfigs of the "
                "core-metrics-extractor in the EndpointPickerConfig"
            )
    errors.extend(validate_serving(settings, NOT_BUILT))
    if settings.config_file and settings.config_text:
        errors.append("--config-file and --config-text are mutually exclusive; give one")
    sources = [
        f for f in ("pool-name", "endpoint-selector", "endpoints", "endpoints-file") if getattr(settings, flags.dest(f))
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
        if flags.dest(flag) in given and getattr(settings, flags.dest(flag)) and not kubernetes:
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
    if args and args[0] == "bbr":
        from epp.bbr.cli import main as bbr

        return bbr(args[1:])
    settings = parse_settings(args)
    if not settings.pool_namespace:
        settings = dataclasses.replace(settings, pool_namespace=os.environ.get("NAMESPACE", "default"))
    from epp.app import run

    return run(settings)


if __name__ == "__main__":
    raise SystemExit(main())

"""Flags into settings for every program here (`epp`, `epp bbr`), and the checks of the serving flags they share.

Forms accepted as pflag does: `--flag value`, `--flag=value`, bare `--bool-flag` (= true) and
`--bool-flag=false`. A flag whose feature is not built yet stops the process with a message naming it.
"""

from __future__ import annotations

import argparse
from collections.abc import Callable, Mapping, Sequence
from typing import TypeVar

from epp.observability.logging import ENCODERS, LogOptions
from epp.settings import ServingSettings, flag_specs

S = TypeVar("S", bound=ServingSettings)

#: flag → why it stops the process when given (features not built in this version)
NOT_BUILT: dict[str, str] = {
    "enable-pprof": "pprof is a Go runtime feature; profile the Python EPP with py-spy instead",
    "enable-grpc-stream-metrics": "ext_proc stream metrics are not built yet",
    "tls-min-version": "TLS version selection is not supported by the gRPC Python server",
    "tls-cipher-suites": "TLS cipher-suite selection is not supported by the gRPC Python server",
    "allow-experimental-plugins": "there are no experimental (Alpha) plugins to allow in this build",
}


def dest(flag: str) -> str:
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


def build_parser(settings_type: type[ServingSettings], prog: str, description: str) -> argparse.ArgumentParser:
    """The parser of a program's flags: one option per field of `settings_type`."""
    parser = argparse.ArgumentParser(prog=prog, description=description, allow_abbrev=False)
    for spec in flag_specs(settings_type):
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


def read_flags(argv: Sequence[str], settings_type: type[S], parser: argparse.ArgumentParser) -> S:
    """A program's settings from its flags (`parser` built from `settings_type`); not yet validated."""
    namespace = argparse.Namespace(_explicit=set())
    parser.parse_args(list(argv), namespace=namespace)
    given = {spec.dest: getattr(namespace, spec.dest) for spec in flag_specs(settings_type)}
    return settings_type(**given, explicit=frozenset(namespace._explicit))


def parse_flags(
    argv: Sequence[str], settings_type: type[S], parser: argparse.ArgumentParser, check: Callable[[S], list[str]]
) -> S:
    """Parse `argv`; on any error from `check` print them all (each prefixed with the program) and exit 2."""
    settings = read_flags(argv, settings_type, parser)
    errors = check(settings)
    if errors:
        parser.exit(2, "".join(f"{parser.prog}: {e}\n" for e in errors))
    return settings


def validate_serving(settings: ServingSettings, not_built: Mapping[str, str] = NOT_BUILT) -> list[str]:
    """Checks of the flags every ext_proc server here has (epp and epp bbr): unbuilt features (`not_built`:
    flag → why it is refused when given), logging, TLS, request limits."""
    errors: list[str] = []
    for flag, why in not_built.items():
        field = dest(flag)
        if field not in settings.explicit:
            continue
        if getattr(settings, field) is False:  # an unbuilt switch given off asks for nothing
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


def log_options(settings: ServingSettings) -> LogOptions:
    """The logging set-up the --v and --zap-* flags ask for (ValueError naming a bad value)."""
    return LogOptions.from_flags(
        settings.v,
        encoder=settings.zap_encoder,
        log_level=settings.zap_log_level,
        devel=settings.zap_devel,
        stacktrace_level=settings.zap_stacktrace_level,
        time_encoding=settings.zap_time_encoding,
    )

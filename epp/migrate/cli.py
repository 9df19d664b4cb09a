"""`epp migrate`: convert v1alpha2 inference-extension manifests to v1, or list what still uses v1alpha2.

    epp migrate [options] PATH...        write the three steps of the migration (stdout or --out DIR)
    epp migrate --check PATH...          list every v1alpha2 use; exit 1 when there is one

Exit status: 0 done (or, with --check, nothing found), 1 v1alpha2 still in use (--check), 2 bad input/usage.
"""

from __future__ import annotations

import argparse
import sys
from collections.abc import Sequence
from pathlib import Path
from typing import Any, TextIO

import yaml

from epp.migrate.check import find_v1alpha2
from epp.migrate.convert import CRITICALITY_PRIORITY, MigrationError, Options, Plan, plan_migration
from epp.migrate.manifests import ManifestError, load_paths
from epp.units import parse_whole_number

#: (file name under --out, header comment) of the three steps
STEPS: tuple[tuple[str, str], ...] = (
    (
        "step1-v1-resources.yaml",
        "Step 1: the v1 InferencePools with their InferenceObjectives and InferenceModelRewrites, next to the\n"
        "v1alpha2 stack. Each v1 pool needs a running EPP started with --pool-name <v1 pool> (deploy/kubernetes).\n"
        "Requests pick an InferenceObjective by name in the x-gateway-inference-objective header.",
    ),
    (
        "step2-httproute-split.yaml",
        "Step 2: routes to both pools side by side, traffic split between them. Watch the v1 stack, then step 3.",
    ),
    (
        "step3-httproute-v1.yaml",
        "Step 3: routes to the v1 pools only. Then delete the v1alpha2 pools, InferenceModels and their EPPs,\n"
        "check with `epp migrate --check`, and delete the v1alpha2 CRDs.",
    ),
)


def build_parser() -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(
        prog="epp migrate",
        description="Convert v1alpha2 (inference.networking.x-k8s.io) InferencePool and InferenceModel manifests "
        "to the v1 InferencePool, InferenceObjective and InferenceModelRewrite, plus the HTTPRoute steps of the "
        "zero-downtime migration (both pools side by side with a weight split, then 100%% to v1).",
        allow_abbrev=False,
    )
    parser.add_argument("paths", nargs="+", metavar="PATH", help="manifest files or directories; - reads stdin")
    parser.add_argument(
        "--check", action="store_true", help="only list what still uses v1alpha2 (file:line, kind, name)"
    )
    parser.add_argument("--out", metavar="DIR", help="write one file per step into DIR instead of stdout")
    parser.add_argument(
        "--step", type=int, choices=(1, 2, 3), help="print only this step (1 resources, 2 split, 3 all to v1)"
    )
    parser.add_argument(
        "--rename-pool",
        action="append",
        default=[],
        metavar="OLD=NEW",
        help="name of the v1 pool made from v1alpha2 pool OLD (default: the same name)",
    )
    parser.add_argument(
        "--epp-service",
        action="append",
        default=[],
        metavar="POOL=SERVICE",
        help="EPP Service of v1 pool POOL (default: the v1alpha2 pool's extensionRef.name)",
    )
    parser.add_argument(
        "--v1-weight",
        type=_percent,
        default=50,
        metavar="PERCENT",
        help="share of traffic for the v1 pool in step 2, 1..99 (default 50)",
    )
    parser.add_argument(
        "--priority",
        action="append",
        default=[],
        metavar="CRITICALITY=N",
        help="priority for a criticality (default "
        + ", ".join(f"{k}={v}" for k, v in CRITICALITY_PRIORITY.items())
        + ")",
    )
    return parser


def main(argv: Sequence[str], stdin: TextIO | None = None) -> int:
    parser = build_parser()
    args = parser.parse_args(list(argv))
    try:
        options = _options(args)
    except ValueError as exc:
        parser.error(str(exc))
    try:
        manifests = load_paths(args.paths, stdin)
    except ManifestError as exc:
        return _fail(exc.errors)
    if args.check:
        findings = find_v1alpha2(manifests)
        for finding in findings:
            print(finding)
        if not findings:
            print(f"no v1alpha2 inference API in use ({len(manifests)} objects checked)")
            return 0
        print(f"{len(findings)} v1alpha2 use(s) left; `epp migrate` converts them (docs/migration.md)", file=sys.stderr)
        return 1
    try:
        plan = plan_migration(manifests, options)
    except MigrationError as exc:
        return _fail(exc.errors)
    for note in plan.notes:
        print(f"note: {note}", file=sys.stderr)
    if not plan.resources and not plan.split_routes:
        print(f"nothing to migrate: no v1alpha2 objects in {len(manifests)} objects", file=sys.stderr)
        return 0
    if not plan.split_routes:
        print(
            "note: no HTTPRoute routes to a v1alpha2 InferencePool in the input, so steps 2 and 3 are empty; "
            "include your HTTPRoutes to get them",
            file=sys.stderr,
        )
    if args.out:
        return _write_out(Path(args.out), plan, args.step)
    sys.stdout.write(render_steps(plan, args.step))
    return 0


def render_steps(plan: Plan, only: int | None = None) -> str:
    """The steps as one multi-document YAML text (or just step `only`), each step under its header comment."""
    parts = []
    for number, (objects, (_, header)) in enumerate(zip(_step_objects(plan), STEPS, strict=True), start=1):
        if only is not None and number != only:
            continue
        parts.append(render_documents(objects, header))
    return "".join(parts)


def render_documents(objects: Sequence[dict[str, Any]], header: str) -> str:
    text = "".join(f"# {line}\n" for line in header.splitlines())
    for obj in objects:
        text += "---\n" + yaml.safe_dump(obj, sort_keys=False, default_flow_style=False, allow_unicode=True)
    return text


def _step_objects(plan: Plan) -> tuple[list[dict[str, Any]], ...]:
    return plan.resources, plan.split_routes, plan.final_routes


def _write_out(directory: Path, plan: Plan, only: int | None) -> int:
    if directory.exists() and not directory.is_dir():
        return _fail([f"--out {directory}: exists and is not a directory"])
    directory.mkdir(parents=True, exist_ok=True)
    for number, (objects, (file_name, header)) in enumerate(zip(_step_objects(plan), STEPS, strict=True), start=1):
        if only is not None and number != only:
            continue
        path = directory / file_name
        path.write_text(render_documents(objects, header), encoding="utf-8")
        print(f"wrote {path} ({len(objects)} objects)", file=sys.stderr)
    return 0


def _options(args: argparse.Namespace) -> Options:
    pool_names = _pairs(args.rename_pool, "--rename-pool", "OLD=NEW")
    epp_services = _pairs(args.epp_service, "--epp-service", "POOL=SERVICE")
    priorities = dict(CRITICALITY_PRIORITY)
    for criticality, text in _pairs(args.priority, "--priority", "CRITICALITY=N").items():
        if criticality not in CRITICALITY_PRIORITY:
            raise ValueError(f"--priority {criticality}={text}: criticality must be one of {', '.join(priorities)}")
        try:
            priorities[criticality] = int(text)
        except ValueError:
            raise ValueError(f"--priority {criticality}={text}: the priority must be an integer") from None
    return Options(pool_names=pool_names, epp_services=epp_services, v1_weight=args.v1_weight, priorities=priorities)


def _pairs(values: Sequence[str], flag: str, form: str) -> dict[str, str]:
    pairs: dict[str, str] = {}
    for value in values:
        key, sep, target = value.partition("=")
        if not sep or not key or not target:
            raise ValueError(f"{flag} {value!r}: use {form}")
        if key in pairs and pairs[key] != target:
            raise ValueError(f"{flag}: {key} given twice ({pairs[key]}, {target})")
        pairs[key] = target
    return pairs


def _percent(text: str) -> int:
    return parse_whole_number(text, 1, 99, "percentage", "step 3 sends 100% to v1")


def _fail(errors: Sequence[str]) -> int:
    for line in errors:
        print(f"error: {line}", file=sys.stderr)
    return 2

"""deploy/kubernetes/bbr rendered with kustomize: the objects validate, the container's args parse with
`epp bbr`'s own parser, and its ports, probes and Service are the ones those args open."""

from __future__ import annotations

from typing import Any

import pytest

from epp.bbr.cli import parse_bbr_settings
from tests.deploy.render import KUSTOMIZE_DIR, render
from tests.deploy.validation import object_errors
from tests.support.manifests import one

BBR = KUSTOMIZE_DIR / "bbr"


@pytest.fixture(scope="module")
def objects() -> list[dict[str, Any]]:
    return render(BBR)


def container(objects: list[dict[str, Any]]) -> dict[str, Any]:
    containers = one(objects, "Deployment")["spec"]["template"]["spec"]["containers"]
    assert len(containers) == 1
    return containers[0]


def test_objects_validate(objects: list[dict[str, Any]]) -> None:
    assert sorted(o["kind"] for o in objects) == ["Deployment", "Service"]
    for obj in objects:
        assert object_errors(obj) == [], obj["metadata"]["name"]


def test_args_are_epp_bbr_and_its_ports_are_the_containers(objects: list[dict[str, Any]]) -> None:
    bbr = container(objects)
    assert bbr["args"][0] == "bbr"
    settings = parse_bbr_settings(bbr["args"][1:])
    ports = {p["name"]: p["containerPort"] for p in bbr["ports"]}
    assert ports == {"grpc": settings.grpc_port, "grpc-health": settings.grpc_health_port, "metrics": 9090}
    assert settings.metrics_port == 9090 and settings.secure_serving
    for probe in ("livenessProbe", "readinessProbe"):
        assert bbr[probe]["grpc"]["port"] == settings.grpc_health_port


def test_service_reaches_the_ext_proc_port_over_http2(objects: list[dict[str, Any]]) -> None:
    service = one(objects, "Service")
    deployment = one(objects, "Deployment")
    assert service["spec"]["selector"] == deployment["spec"]["selector"]["matchLabels"]
    grpc = next(p for p in service["spec"]["ports"] if p["name"] == "grpc")
    assert (grpc["port"], grpc["targetPort"], grpc["appProtocol"]) == (9004, "grpc", "http2")


def test_runs_as_non_root_with_a_read_only_root(objects: list[dict[str, Any]]) -> None:
    pod = one(objects, "Deployment")["spec"]["template"]["spec"]
    assert pod["securityContext"]["runAsNonRoot"] and not pod["automountServiceAccountToken"]
    assert container(objects)["securityContext"]["readOnlyRootFilesystem"]

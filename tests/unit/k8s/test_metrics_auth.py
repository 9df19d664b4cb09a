"""--metrics-endpoint-auth in Kubernetes mode: TokenReview then SubjectAccessReview, asked of kubesim with the
client the EPP uses, RBAC evaluated by kubesim from ClusterRoles and bindings as an API server would."""

from __future__ import annotations

import asyncio
import base64
import json
from pathlib import Path

import pytest
from kubernetes_asyncio import client, config
from kubernetes_asyncio.client.exceptions import ApiException

from epp.k8s.metrics_auth import NOT_CONNECTED, TokenReviewGuard
from kubesim.kubeconfig import write_kubeconfig
from kubesim.manifests import apply, load_manifests
from kubesim.objects import ApiError
from kubesim.server import KubeSim
from kubesim.testing import METRICS_READER_RBAC

NAMESPACED_RULES = """
apiVersion: v1
kind: Namespace
metadata: {name: team}
---
apiVersion: rbac.authorization.k8s.io/v1
kind: Role
metadata: {name: pod-reader, namespace: team}
rules:
- apiGroups: [""]
  resources: ["pods"]
  verbs: ["get", "list"]
---
apiVersion: rbac.authorization.k8s.io/v1
kind: RoleBinding
metadata: {name: bob-reads-pods, namespace: team}
roleRef: {apiGroup: rbac.authorization.k8s.io, kind: Role, name: pod-reader}
subjects:
- {kind: User, name: bob}
- {kind: ServiceAccount, name: picker, namespace: team}
"""


def setup_users(sim: KubeSim) -> None:
    sim.add_user("scraper-token", "system:serviceaccount:monitoring:prometheus", ("system:serviceaccounts",))
    sim.add_user("alice-token", "alice", ("developers",))
    sim.add_user("admin-token", "admin", ("system:masters",))
    for manifest in load_manifests(METRICS_READER_RBAC.format(namespace="monitoring", name="prometheus")):
        apply(sim.store, manifest)


async def access(api: client.ApiClient, user: str, groups: list[str], path: str, verb: str = "get") -> bool:
    review = await client.AuthorizationV1Api(api).create_subject_access_review(
        client.V1SubjectAccessReview(
            spec=client.V1SubjectAccessReviewSpec(
                user=user, groups=groups, non_resource_attributes=client.V1NonResourceAttributes(path=path, verb=verb)
            )
        )
    )
    return bool(review.status.allowed)


async def test_kubesim_reviews_tokens_and_evaluates_rbac(sim: KubeSim, api: client.ApiClient) -> None:
    setup_users(sim)
    authn = client.AuthenticationV1Api(api)
    known = await authn.create_token_review(client.V1TokenReview(spec=client.V1TokenReviewSpec(token="scraper-token")))
    assert known.status.authenticated and known.status.user.username == "system:serviceaccount:monitoring:prometheus"
    assert known.status.user.groups == ["system:serviceaccounts"]
    unknown = await authn.create_token_review(client.V1TokenReview(spec=client.V1TokenReviewSpec(token="forged")))
    assert not unknown.status.authenticated and unknown.status.error

    scraper = "system:serviceaccount:monitoring:prometheus"
    assert await access(api, scraper, [], "/metrics")
    assert await access(api, scraper, [], "/debug/decisions")  # "/debug/*" is a prefix rule
    assert not await access(api, scraper, [], "/metrics", "post")
    assert not await access(api, scraper, [], "/healthz")
    assert not await access(api, "system:serviceaccount:other:prometheus", [], "/metrics")  # the binding's namespace
    assert not await access(api, "alice", ["developers"], "/metrics")
    assert await access(api, "admin", ["system:masters"], "/anything")

    for manifest in load_manifests(NAMESPACED_RULES):
        apply(sim.store, manifest)
    authz = client.AuthorizationV1Api(api)

    async def pods(user: str, namespace: str, verb: str) -> bool:
        attributes = client.V1ResourceAttributes(namespace=namespace, verb=verb, group="", resource="pods")
        spec = client.V1SubjectAccessReviewSpec(user=user, resource_attributes=attributes)
        review = await authz.create_subject_access_review(client.V1SubjectAccessReview(spec=spec))
        return bool(review.status.allowed)

    assert await pods("bob", "team", "list")
    assert not await pods("bob", "team", "delete")
    assert not await pods("bob", "other", "list")


async def test_guard_asks_the_api_server_and_caches_its_verdicts(sim: KubeSim, api: client.ApiClient) -> None:
    setup_users(sim)
    guard = TokenReviewGuard(asyncio.get_running_loop())

    async def check(header: str, path: str = "/metrics") -> tuple[str, str] | None:
        denial = await asyncio.to_thread(guard.check, header, path, "get")  # the metrics server's thread blocks
        return (denial.status, denial.message) if denial is not None else None

    assert await check("Bearer scraper-token") == (NOT_CONNECTED.status, NOT_CONNECTED.message)
    guard.attach(api)
    assert await check("") == ("401 Unauthorized", "Unauthorized")
    assert await check("Basic c2NyYXBlcjpwdw==") == ("401 Unauthorized", "Unauthorized")
    assert await check("Bearer forged") == ("401 Unauthorized", "Unauthorized")
    assert await check("Bearer alice-token") == ("403 Forbidden", "Authorization denied for user alice")
    assert await check("Bearer scraper-token") is None
    assert await check("Bearer scraper-token", "/debug/endpoints") is None
    assert await check("Bearer admin-token", "/debug") is None

    reviews = guard.reviews
    before = [path for _, path in sim.requests].count("/apis/authentication.k8s.io/v1/tokenreviews")
    for _ in range(5):
        assert await check("Bearer scraper-token") is None
        assert await check("Bearer alice-token") is not None
    after = [path for _, path in sim.requests].count("/apis/authentication.k8s.io/v1/tokenreviews")
    assert guard.reviews == reviews and after == before, "verdicts within their time to live are not asked again"

    guard.clock = lambda: 1e12  # every cached verdict has expired
    await sim.stop()  # the API server is gone: a server error, said, and not cached
    status, message = await check("Bearer scraper-token") or ("", "")
    assert status == "500 Internal Server Error" and "cannot review the token with the Kubernetes API" in message


#: bound to the pod-reader Role of NAMESPACED_RULES
SERVICE_ACCOUNT = """
apiVersion: v1
kind: ServiceAccount
metadata: {name: picker, namespace: team}
---
apiVersion: v1
kind: Secret
metadata:
  name: picker-token
  namespace: team
  annotations: {kubernetes.io/service-account.name: picker}
type: kubernetes.io/service-account-token
"""


async def test_a_service_account_s_requests_get_what_its_roles_grant(sim: KubeSim, tmp_path: Path) -> None:
    """A client with a service account's token (from a token Secret, as the token controller fills it) is
    authorized by RBAC on every request, as in a cluster; discovery stays open to it."""
    for manifest in load_manifests(NAMESPACED_RULES + "---" + SERVICE_ACCOUNT):
        apply(sim.store, manifest)
    token = sim.fill_service_account_token("team", "picker-token")
    secret = sim.store.get(sim.store.type_of("v1", "Secret"), "team", "picker-token")
    assert base64.b64decode(secret["data"]["token"]).decode() == token
    path = write_kubeconfig(sim, tmp_path / "picker", token=token)
    picker = await config.new_client_from_config(config_file=str(path))
    try:
        core = client.CoreV1Api(picker)
        assert (await core.list_namespaced_pod("team")).items == []
        await client.VersionApi(picker).get_code()
        denied = {
            # a RoleBinding grants in its own namespace only
            'list resource "pods" in API group "" in the namespace "default"': lambda: core.list_namespaced_pod(
                "default"
            ),
            'list resource "configmaps"': lambda: core.list_namespaced_config_map("team"),
            'create resource "pods"': lambda: core.create_namespaced_pod(
                "team", {"metadata": {"name": "p"}, "spec": {"containers": []}}
            ),
            'create resource "tokenreviews" in API group "authentication.k8s.io"': lambda: client.AuthenticationV1Api(
                picker
            ).create_token_review(client.V1TokenReview(spec=client.V1TokenReviewSpec(token=token))),
        }
        for what, call in denied.items():
            with pytest.raises(ApiException) as refused:
                await call()
            assert refused.value.status == 403
            message = json.loads(refused.value.body)["message"]
            assert message.startswith(f'User "system:serviceaccount:team:picker" cannot {what}'), message
    finally:
        await picker.close()
    with pytest.raises(ApiError, match="not a service-account token Secret"):
        apply(sim.store, {"apiVersion": "v1", "kind": "Secret", "metadata": {"name": "plain", "namespace": "team"}})
        sim.fill_service_account_token("team", "plain")

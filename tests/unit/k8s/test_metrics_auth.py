"""--metrics-endpoint-auth in Kubernetes mode: TokenReview then SubjectAccessReview, asked of kubesim with the
client the EPP uses, RBAC evaluated by kubesim from ClusterRoles and bindings as an API server would."""

from __future__ import annotations

import asyncio

from kubernetes_asyncio import client

from epp.k8s.metrics_auth import NOT_CONNECTED, TokenReviewGuard
from kubesim.manifests import apply, load_manifests
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

"""`--metrics-endpoint-auth` in Kubernetes mode: who may read /metrics and /debug, asked of the API server.

As controller-runtime's metrics filter (the reference's): the request's bearer token goes to a TokenReview
(authentication.k8s.io/v1); the user it names, to a SubjectAccessReview (authorization.k8s.io/v1) for the
non-resource URL of the request path with verb `get`. A scraper needs a ClusterRole with
`nonResourceURLs: ["/metrics"], verbs: ["get"]` (and `/debug`, `/debug/*` for the debug pages); the EPP's
own service account needs `create` on tokenreviews and subjectaccessreviews.

Answers: no or a non-bearer Authorization header, or a token the API server does not authenticate → 401
`Unauthorized`; a user not allowed → 403 `Authorization denied for user NAME`; the API server unreachable
or failing → 500 naming the failure (not cached). Verdicts are cached per (token, path): an allowed one for
a minute, a refused one for ten seconds, so a Prometheus scraping every few seconds costs two reviews a
minute. The check runs on the metrics server's thread and waits for the reviews, which run on the event
loop with the EPP's Kubernetes client.
"""

from __future__ import annotations

import asyncio
import hashlib
import logging
import time
from collections.abc import Callable
from typing import Any

from kubernetes_asyncio import client

from epp.observability.server import Denial

log = logging.getLogger("epp.k8s")

ALLOWED_TTL_S = 60.0
DENIED_TTL_S = 10.0
REVIEW_TIMEOUT_S = 10.0
_CACHE_LIMIT = 4096
UNAUTHORIZED = Denial("401 Unauthorized", "Unauthorized")
NOT_CONNECTED = Denial("503 Service Unavailable", "the EPP is not connected to the Kubernetes API yet; retry")


class TokenReviewGuard:
    """epp.observability.server.Guard backed by the Kubernetes API (attach the client once it is connected)."""

    def __init__(self, loop: asyncio.AbstractEventLoop, clock: Callable[[], float] = time.monotonic) -> None:
        self.loop = loop
        self.clock = clock
        self.api: client.ApiClient | None = None
        self._verdicts: dict[tuple[bytes, str, str], tuple[float, Denial | None]] = {}
        #: reviews asked of the API server (cache misses), for tests and the curious
        self.reviews = 0

    def attach(self, api: client.ApiClient) -> None:
        self.api = api

    def check(self, authorization: str, path: str, verb: str) -> Denial | None:
        scheme, _, token = authorization.partition(" ")
        token = token.strip()
        if scheme.lower() != "bearer" or not token:
            return UNAUTHORIZED
        key = (hashlib.sha256(token.encode()).digest(), path, verb)
        now = self.clock()
        cached = self._verdicts.get(key)
        if cached is not None and cached[0] > now:
            return cached[1]
        if self.api is None:
            return NOT_CONNECTED
        future = asyncio.run_coroutine_threadsafe(self._review(self.api, token, path, verb), self.loop)
        try:
            denial = future.result(REVIEW_TIMEOUT_S)
        except Exception as exc:  # the API server's answer or its absence: say so, do not cache it
            future.cancel()
            log.warning("metrics auth: cannot review a token for %s: %s", path, exc)
            return Denial("500 Internal Server Error", f"cannot review the token with the Kubernetes API: {exc}")
        if len(self._verdicts) >= _CACHE_LIMIT:
            self._verdicts.clear()
        self._verdicts[key] = (now + (DENIED_TTL_S if denial else ALLOWED_TTL_S), denial)
        return denial

    async def _review(self, api: client.ApiClient, token: str, path: str, verb: str) -> Denial | None:
        self.reviews += 1
        review = await client.AuthenticationV1Api(api).create_token_review(
            client.V1TokenReview(spec=client.V1TokenReviewSpec(token=token))
        )
        status: Any = review.status
        if status is None or not status.authenticated or status.user is None:
            return UNAUTHORIZED
        user = status.user
        access = await client.AuthorizationV1Api(api).create_subject_access_review(
            client.V1SubjectAccessReview(
                spec=client.V1SubjectAccessReviewSpec(
                    user=user.username,
                    groups=user.groups,
                    uid=user.uid,
                    extra=user.extra,
                    non_resource_attributes=client.V1NonResourceAttributes(path=path, verb=verb),
                )
            )
        )
        decision: Any = access.status
        if decision is None or not decision.allowed:
            return Denial("403 Forbidden", f"Authorization denied for user {user.username}")
        return None

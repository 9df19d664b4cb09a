"""kubesim's HTTP surface: the Kubernetes REST paths, discovery documents and watch streams over aiohttp.

Reviews: POST `/apis/authentication.k8s.io/v1/tokenreviews` and
`/apis/authorization.k8s.io/v1/subjectaccessreviews` (see kubesim.reviews).
Paths: `/api/v1[/namespaces/NS]/PLURAL[/NAME[/status]]` and
`/apis/GROUP/VERSION[/namespaces/NS]/PLURAL[/NAME[/status]]`; discovery at `/api`, `/api/v1`, `/apis`,
`/apis/GROUP`, `/apis/GROUP/VERSION` and `/version`. A GET with `?watch=1` (or `true`) answers a chunked
stream of one JSON WatchEvent per line; `allowWatchBookmarks=true` adds BOOKMARK events every
`bookmark_interval` seconds of quiet; `timeoutSeconds` ends the stream cleanly. Errors are Status objects.
"""

from __future__ import annotations

import asyncio
import base64
import ipaddress
import json
import logging
import secrets
from collections import deque
from typing import Any

from aiohttp import web

from kubesim.certs import ServingCert, make_serving_cert
from kubesim.objects import ApiError, Object
from kubesim.reviews import (
    AUTHENTICATION_GROUP,
    AUTHORIZATION_GROUP,
    User,
    forbidden,
    is_discovery,
    request_attributes,
    split_namespace,
    subject_access_review,
    token_review,
)
from kubesim.store import Store

log = logging.getLogger("kubesim")
VERSION = {
    "major": "1", "minor": "33", "gitVersion": "v1.33.0-kubesim", "gitCommit": "0" * 40, "gitTreeState": "clean",
    "buildDate": "2026-01-01T00:00:00Z", "goVersion": "go1.24", "compiler": "gc", "platform": "linux/amd64",
}  # fmt: skip
SERVICE_ACCOUNT_TOKEN_TYPE = "kubernetes.io/service-account-token"
SERVICE_ACCOUNT_ANNOTATION = "kubernetes.io/service-account.name"
SERVICE_ACCOUNT_GROUPS = ("system:serviceaccounts", "system:authenticated")
WATCH_TRUE = ("1", "true", "True")


def _json(data: Any, status: int = 200) -> web.Response:
    return web.Response(body=json.dumps(data).encode(), status=status, content_type="application/json")


def _error(exc: ApiError) -> web.Response:
    return _json(exc.status(), exc.code)


class KubeSim:
    """A Kubernetes API server for tests. Listens on a loopback address only."""

    def __init__(
        self,
        port: int = 0,
        host: str = "127.0.0.1",
        token: str | None = None,
        tls: bool = False,
        inference_crds: bool = True,
        bookmark_interval: float = 1.0,
        gone_as_status: bool = False,
    ) -> None:
        if not ipaddress.ip_address(host).is_loopback:
            raise ValueError(f"kubesim listens on loopback addresses only, not {host!r}; use 127.0.0.1")
        self.host = host
        self.port = port
        self.token = token
        self.store = Store(inference_crds=inference_crds)
        self.bookmark_interval = bookmark_interval
        #: answer a watch from a too-old resourceVersion with HTTP 410 instead of a 200 + ERROR event
        self.gone_as_status = gone_as_status
        self.cert: ServingCert | None = make_serving_cert(host) if tls else None
        #: bearer tokens a TokenReview authenticates (see add_user)
        self.users: dict[str, User] = {}
        #: the last requests served (method, path and query), for tests to inspect
        self.requests: deque[tuple[str, str]] = deque(maxlen=10_000)
        self._runner: web.AppRunner | None = None
        self._watch_tasks: set[asyncio.Task[Any]] = set()

    def add_user(self, token: str, username: str, groups: tuple[str, ...] = (), uid: str = "") -> User:
        """Make TokenReview authenticate `token` as this user (a service account's user name is
        `system:serviceaccount:NAMESPACE:NAME`)."""
        user = User(username, tuple(groups), uid or f"uid-{username}")
        self.users[token] = user
        return user

    def service_account_token(self, namespace: str, account: str) -> str:
        """A new token of ServiceAccount NAMESPACE/ACCOUNT (which must exist), as the kubelet mounts into a pod
        that runs as it: it authenticates as `system:serviceaccount:NAMESPACE:ACCOUNT`."""
        self.store.get(self.store.type_of("v1", "ServiceAccount"), namespace, account)
        token = f"kubesim-sa-{namespace}-{account}-{secrets.token_hex(8)}"
        groups = (*SERVICE_ACCOUNT_GROUPS, f"system:serviceaccounts:{namespace}")
        self.add_user(token, f"system:serviceaccount:{namespace}:{account}", groups)
        return token

    def fill_service_account_token(self, namespace: str, secret_name: str) -> str:
        """What the token controller does for a Secret of type kubernetes.io/service-account-token: mint a token
        for the service account its annotation names, write it to `data.token` and return it (it then
        authenticates as `system:serviceaccount:NAMESPACE:NAME`)."""
        rtype = self.store.type_of("v1", "Secret")
        secret = self.store.get(rtype, namespace, secret_name)
        account = (secret["metadata"].get("annotations") or {}).get(SERVICE_ACCOUNT_ANNOTATION, "")
        if secret.get("type") != SERVICE_ACCOUNT_TOKEN_TYPE or not account:
            raise ApiError(422, "Invalid", f"Secret {namespace}/{secret_name} is not a service-account token Secret")
        token = self.service_account_token(namespace, account)
        data = {**(secret.get("data") or {}), "token": base64.b64encode(token.encode()).decode()}
        self.store.patch(rtype, namespace, secret_name, "application/merge-patch+json", {"data": data}, "")
        return token

    @property
    def url(self) -> str:
        return f"{'https' if self.cert else 'http'}://{self.host}:{self.port}"

    # --- lifecycle ----------------------------------------------------------------------------

    async def start(self) -> None:
        app = web.Application(middlewares=[self._auth])
        app.router.add_route("*", "/{path:.*}", self._dispatch)
        self._runner = web.AppRunner(app, access_log=None, handler_cancellation=True, shutdown_timeout=1.0)
        await self._runner.setup()
        site = web.TCPSite(self._runner, self.host, self.port, ssl_context=self.cert.context() if self.cert else None)
        await site.start()
        server = site._server
        assert server is not None
        sockets = getattr(server, "sockets", None) or []
        self.port = sockets[0].getsockname()[1]
        log.info("kubesim serving on %s", self.url)

    async def stop(self) -> None:
        self.store.drop_watches(abrupt=True)
        if self._runner is not None:
            await self._runner.cleanup()

    # --- middleware and routing ---------------------------------------------------------------

    @web.middleware
    async def _auth(self, request: web.Request, handler: Any) -> web.StreamResponse:
        self.requests.append((request.method, request.path_qs))
        presented = request.headers.get("Authorization", "").removeprefix("Bearer ")
        user = self.users.get(presented) if presented != self.token else None
        if user is not None:  # a registered user's token: RBAC decides, as for a service account in a cluster
            if not is_discovery(request.path):
                watch = request.query.get("watch") in WATCH_TRUE
                refused = forbidden(self.store, user, request_attributes(request.method, request.path, watch))
                if refused is not None:
                    return _error(refused)
        elif self.token is not None and presented != self.token:
            return _error(ApiError(401, "Unauthorized", "Unauthorized"))
        response: web.StreamResponse = await handler(request)
        return response

    async def _dispatch(self, request: web.Request) -> web.StreamResponse:
        parts = [p for p in request.path.split("/") if p]
        try:
            if parts == ["version"]:
                return _json(VERSION)
            if parts == ["api"]:
                return _json({"kind": "APIVersions", "versions": ["v1"], "serverAddressByClientCIDRs": []})
            if parts == ["apis"]:
                return _json(self._group_list())
            if len(parts) == 2 and parts[0] == "apis":
                return _json(self._group(parts[1]))
            if len(parts) == 4 and parts[0] == "apis" and parts[2] == "v1" and request.method == "POST":
                if (parts[1], parts[3]) == (AUTHENTICATION_GROUP, "tokenreviews"):
                    return _json(token_review(await self._body(request), self.users), 201)
                if (parts[1], parts[3]) == (AUTHORIZATION_GROUP, "subjectaccessreviews"):
                    return _json(subject_access_review(await self._body(request), self.store), 201)
            if parts[:1] == ["api"] and len(parts) >= 2:
                group, version, rest = "", parts[1], parts[2:]
            elif parts[:1] == ["apis"] and len(parts) >= 3:
                group, version, rest = parts[1], parts[2], parts[3:]
            else:
                raise ApiError(404, "NotFound", f"the server could not find the requested resource ({request.path})")
            if not rest:
                return _json(self._resource_list(group, version))
            return await self._resource(request, group, version, rest)
        except ApiError as exc:
            return _error(exc)

    # --- discovery ----------------------------------------------------------------------------

    def _group_versions(self) -> dict[str, list[str]]:
        groups: dict[str, list[str]] = {}
        for group, version, _ in self.store.types:
            if group and version not in groups.setdefault(group, []):
                groups[group].append(version)
        return groups

    def _group(self, name: str) -> Object:
        versions = self._group_versions().get(name)
        if not versions:
            raise ApiError(404, "NotFound", f"the server could not find the requested resource (group {name})")
        entries = [{"groupVersion": f"{name}/{v}", "version": v} for v in versions]
        return {
            "kind": "APIGroup",
            "apiVersion": "v1",
            "name": name,
            "versions": entries,
            "preferredVersion": entries[0],
        }

    def _group_list(self) -> Object:
        groups = [self._group(name) for name in self._group_versions()]
        for group in groups:
            del group["kind"], group["apiVersion"]
        return {"kind": "APIGroupList", "apiVersion": "v1", "groups": groups}

    def _resource_list(self, group: str, version: str) -> Object:
        resources = [
            entry
            for (g, v, _), rtype in sorted(self.store.types.items())
            if (g, v) == (group, version)
            for entry in rtype.api_resources()
        ]
        if not resources:
            gv = f"{group}/{version}" if group else version
            raise ApiError(404, "NotFound", f"the server could not find the requested resource ({gv})")
        return {
            "kind": "APIResourceList",
            "apiVersion": "v1",
            "groupVersion": f"{group}/{version}" if group else version,
            "resources": resources,
        }

    # --- resources ----------------------------------------------------------------------------

    async def _resource(self, request: web.Request, group: str, version: str, rest: list[str]) -> web.StreamResponse:
        namespace, rest = split_namespace(rest)
        plural, name, sub = rest[0], rest[1] if len(rest) > 1 else "", rest[2] if len(rest) > 2 else ""
        if len(rest) > 3:
            raise ApiError(404, "NotFound", f"the server could not find the requested resource ({request.path})")
        rtype = self.store.type_for(group, version, plural)
        if namespace is not None and not rtype.namespaced:
            raise ApiError(404, "NotFound", f"{plural} is not a namespaced resource")
        query = request.query
        if "dryRun" in query:
            raise ApiError(400, "BadRequest", "kubesim does not support dryRun requests")
        method = request.method
        ns = namespace or ""
        if not name:
            if method == "GET":
                if query.get("watch") in WATCH_TRUE:
                    return await self._watch(request, rtype.key, namespace)
                items, rv, token = self.store.list(
                    rtype,
                    namespace if rtype.namespaced else None,
                    query.get("labelSelector", ""),
                    query.get("fieldSelector", ""),
                    int(query.get("limit", "0") or 0),
                    query.get("continue", ""),
                )
                metadata: Object = {"resourceVersion": str(rv)}
                if token:
                    metadata["continue"] = token
                kind = f"{rtype.kind}List"
                return _json({"kind": kind, "apiVersion": rtype.api_version, "metadata": metadata, "items": items})
            if method == "POST":
                body = await self._body(request)
                return _json(self.store.create(rtype, ns, body), 201)
            if method == "DELETE":
                items, rv, _ = self.store.list(
                    rtype, namespace if rtype.namespaced else None, query.get("labelSelector", "")
                )
                grace = await self._grace(request)
                deleted = [self.store.delete(rtype, i["metadata"].get("namespace", ""), i["metadata"]["name"], grace)
                           for i in items]  # fmt: skip
                return _json({"kind": f"{rtype.kind}List", "apiVersion": rtype.api_version,
                              "metadata": {"resourceVersion": str(self.store.rv)}, "items": deleted})  # fmt: skip
            raise ApiError(405, "MethodNotAllowed", f"{method} is not supported on a collection")
        if sub not in ("", "status"):
            raise ApiError(404, "NotFound", f"subresource {sub!r} is not served by kubesim")
        if method == "GET":
            return _json(self.store.get(rtype, ns, name))
        if method == "PUT":
            return _json(self.store.update(rtype, ns, name, await self._body(request), sub))
        if method == "PATCH":
            content_type = request.headers.get("Content-Type", "")
            return _json(self.store.patch(rtype, ns, name, content_type, await self._body(request), sub))
        if method == "DELETE":
            return _json(self.store.delete(rtype, ns, name, await self._grace(request)))
        raise ApiError(405, "MethodNotAllowed", f"{method} is not supported on an object")

    async def _body(self, request: web.Request) -> Any:
        raw = await request.read()
        try:
            return json.loads(raw) if raw else {}
        except ValueError as exc:
            raise ApiError(400, "BadRequest", f"request body is not JSON: {exc}") from None

    async def _grace(self, request: web.Request) -> int | None:
        if "gracePeriodSeconds" in request.query:
            return int(request.query["gracePeriodSeconds"])
        raw = await request.read()
        if raw:
            try:
                options = json.loads(raw)
            except ValueError:
                raise ApiError(400, "BadRequest", "DeleteOptions body is not JSON") from None
            if isinstance(options, dict) and options.get("gracePeriodSeconds") is not None:
                return int(options["gracePeriodSeconds"])
        return None

    # --- watch --------------------------------------------------------------------------------

    async def _watch(
        self, request: web.Request, key: tuple[str, str, str], namespace: str | None
    ) -> web.StreamResponse:
        query = request.query
        rtype = self.store.types[key]
        bookmarks = query.get("allowWatchBookmarks") in WATCH_TRUE
        timeout = float(query["timeoutSeconds"]) if query.get("timeoutSeconds") else None
        try:
            watch = self.store.watch(
                rtype,
                namespace if rtype.namespaced else None,
                query.get("labelSelector", ""),
                query.get("fieldSelector", ""),
                query.get("resourceVersion", ""),
            )
        except ApiError as exc:
            if exc.code != 410 or self.gone_as_status:
                raise
            response = web.StreamResponse(status=200, headers={"Content-Type": "application/json"})
            response.enable_chunked_encoding()
            await response.prepare(request)
            await response.write(json.dumps({"type": "ERROR", "object": exc.status()}).encode() + b"\n")
            await response.write_eof()
            return response
        response = web.StreamResponse(status=200, headers={"Content-Type": "application/json"})
        response.enable_chunked_encoding()
        await response.prepare(request)
        loop = asyncio.get_running_loop()
        deadline = loop.time() + timeout if timeout else None
        try:
            while True:
                wait = self.bookmark_interval if bookmarks else None
                if deadline is not None:
                    remaining = deadline - loop.time()
                    if remaining <= 0:
                        break
                    wait = remaining if wait is None else min(wait, remaining)
                try:
                    item = await asyncio.wait_for(watch.queue.get(), wait)
                except TimeoutError:
                    if bookmarks and (deadline is None or loop.time() < deadline):
                        await response.write(self._bookmark(rtype.kind, rtype.api_version))
                    continue
                if item is None:
                    if watch.abrupt and request.transport is not None:
                        request.transport.abort()
                        return response
                    break
                chunk = [_event_line(*item)]
                while not watch.queue.empty():
                    more = watch.queue.get_nowait()
                    if more is None:
                        watch.queue.put_nowait(None)
                        break
                    chunk.append(_event_line(*more))
                await response.write(b"".join(chunk))
        except (ConnectionResetError, asyncio.CancelledError):
            self.store.unwatch(watch)
            raise
        self.store.unwatch(watch)
        await response.write_eof()
        return response

    def _bookmark(self, kind: str, api_version: str) -> bytes:
        obj = {"kind": kind, "apiVersion": api_version, "metadata": {"resourceVersion": str(self.store.rv)}}
        return json.dumps({"type": "BOOKMARK", "object": obj}).encode() + b"\n"


def _event_line(kind: str, obj: Object) -> bytes:
    return json.dumps({"type": kind, "object": obj}).encode() + b"\n"

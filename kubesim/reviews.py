"""TokenReview and SubjectAccessReview: how a server in the cluster asks the API server who a bearer token is
and whether that user may do something (what controller-runtime's metrics filter asks for `/metrics`).

Tokens are the ones registered with `KubeSim.add_user` (a real cluster also knows service-account tokens
it signed; here a test registers them, or has `KubeSim.fill_service_account_token` fill a token Secret as
the token controller does). Authorization is RBAC as the API server evaluates it: the user,
its groups and, for a service-account user name, the ServiceAccount subject, against the ClusterRoleBindings
(and, for namespaced resource requests, the RoleBindings) of the store; the group `system:masters` may do
everything. Rules match verbs (`*` for all), non-resource URLs (exact, a trailing `*` as a prefix, `*`) and
resources by API group and plural name. The same RBAC authorizes every API request a registered user's token
makes (`request_attributes`, `forbidden`): a client running as a service account gets only what its roles
grant; discovery and `/version` are open to every authenticated user, as the default system:discovery role.
"""

from __future__ import annotations

from collections.abc import Iterable, Mapping
from dataclasses import dataclass, field
from typing import Any

from kubesim.objects import ApiError, Object
from kubesim.store import Store

AUTHENTICATION_GROUP = "authentication.k8s.io"
AUTHORIZATION_GROUP = "authorization.k8s.io"
RBAC_GROUP = "rbac.authorization.k8s.io"
SUPERUSER_GROUP = "system:masters"


@dataclass(frozen=True)
class User:
    username: str
    groups: tuple[str, ...] = ()
    uid: str = ""
    extra: Mapping[str, list[str]] = field(default_factory=dict)

    def as_user_info(self) -> Object:
        info: Object = {"username": self.username, "uid": self.uid, "groups": list(self.groups)}
        if self.extra:
            info["extra"] = {k: list(v) for k, v in self.extra.items()}
        return info


def token_review(body: Any, users: Mapping[str, User]) -> Object:
    """The TokenReview (authentication.k8s.io/v1) answered: status.authenticated and status.user."""
    spec = _spec(body, "TokenReview")
    token = spec.get("token")
    if not isinstance(token, str) or not token:
        raise ApiError(422, "Invalid", "TokenReview: spec.token: Required value")
    user = users.get(token)
    status: Object = (
        {"authenticated": True, "user": user.as_user_info()}
        if user is not None
        else {"authenticated": False, "user": {}, "error": "invalid bearer token"}
    )
    return {"apiVersion": f"{AUTHENTICATION_GROUP}/v1", "kind": "TokenReview", "spec": spec, "status": status}


def subject_access_review(body: Any, store: Store) -> Object:
    """The SubjectAccessReview (authorization.k8s.io/v1) answered by RBAC over the store's bindings."""
    spec = _spec(body, "SubjectAccessReview")
    user, groups = spec.get("user") or "", list(spec.get("groups") or [])
    if not user and not groups:
        raise ApiError(422, "Invalid", "SubjectAccessReview: spec.user or spec.groups: at least one is required")
    non_resource, resource = spec.get("nonResourceAttributes"), spec.get("resourceAttributes")
    if (non_resource is None) == (resource is None):
        raise ApiError(
            422,
            "Invalid",
            "SubjectAccessReview: exactly one of nonResourceAttributes and resourceAttributes is required",
        )
    if SUPERUSER_GROUP in groups:
        allowed, reason = True, f"group {SUPERUSER_GROUP}"
    else:
        allowed, reason = _rbac_allows(store, user, groups, non_resource, resource)
    status: Object = {"allowed": allowed}
    if reason:
        status["reason"] = reason
    return {"apiVersion": f"{AUTHORIZATION_GROUP}/v1", "kind": "SubjectAccessReview", "spec": spec, "status": status}


def request_attributes(method: str, path: str, watch: bool) -> Object:
    """The SubjectAccessReview spec attributes of an API request: `nonResourceAttributes` for a path that names
    no resource, else `resourceAttributes` (verb from the method: get/list/watch, create, update, patch,
    delete/deletecollection)."""
    parts = [p for p in path.split("/") if p]
    if parts[:1] == ["api"] and len(parts) >= 3:
        group, rest = "", parts[2:]
    elif parts[:1] == ["apis"] and len(parts) >= 4:
        group, rest = parts[1], parts[3:]
    else:
        return {"nonResourceAttributes": {"path": path, "verb": method.lower()}}
    namespace, rest = split_namespace(rest)
    name = rest[1] if len(rest) > 1 else ""
    verbs = {"POST": "create", "PUT": "update", "PATCH": "patch", "DELETE": "delete" if name else "deletecollection"}
    verb = verbs.get(method, "get" if name else ("watch" if watch else "list"))
    attributes = {"group": group, "resource": rest[0], "verb": verb, "namespace": namespace or "", "name": name}
    if len(rest) > 2:
        attributes["subresource"] = rest[2]
    return {"resourceAttributes": attributes}


def split_namespace(rest: list[str]) -> tuple[str | None, list[str]]:
    """A resource path after the group and version: (namespace or None, [plural, name?, subresource?])."""
    if rest[0] == "namespaces" and len(rest) >= 3 and not (len(rest) == 3 and rest[2] in ("status", "finalize")):
        return rest[1], rest[2:]
    return None, rest


def is_discovery(path: str) -> bool:
    parts = [p for p in path.split("/") if p]
    return (
        parts == ["version"]
        or (parts[:1] == ["api"] and len(parts) <= 2)
        or (parts[:1] == ["apis"] and len(parts) <= 3)
    )


def forbidden(store: Store, user: User, attributes: Object) -> ApiError | None:
    """None when RBAC allows `user` the request `attributes` describe, else the API server's 403."""
    if SUPERUSER_GROUP in user.groups:
        return None
    groups = list(user.groups)
    allowed, _ = _rbac_allows(
        store, user.username, groups, attributes.get("nonResourceAttributes"), attributes.get("resourceAttributes")
    )
    if allowed:
        return None
    resource = attributes.get("resourceAttributes")
    if resource is None:
        what = f'{attributes["nonResourceAttributes"]["verb"]} path "{attributes["nonResourceAttributes"]["path"]}"'
    else:
        plural = resource["resource"] + (f"/{resource['subresource']}" if resource.get("subresource") else "")
        what = f'{resource["verb"]} resource "{plural}" in API group "{resource["group"]}"'
        if resource["namespace"]:
            what += f' in the namespace "{resource["namespace"]}"'
    return ApiError(403, "Forbidden", f'User "{user.username}" cannot {what}')


def _spec(body: Any, kind: str) -> Object:
    if not isinstance(body, dict) or not isinstance(body.get("spec"), dict):
        raise ApiError(400, "BadRequest", f"{kind}: the body needs a spec object")
    spec: Object = body["spec"]
    return spec


def _bound(subjects: Iterable[Any], user: str, groups: list[str], binding_namespace: str) -> bool:
    for subject in subjects:
        if not isinstance(subject, dict):
            continue
        kind, name = subject.get("kind"), subject.get("name")
        if kind == "User" and name == user:
            return True
        if kind == "Group" and name in groups:
            return True
        if kind == "ServiceAccount":
            namespace = subject.get("namespace") or binding_namespace
            if user == f"system:serviceaccount:{namespace}:{name}":
                return True
    return False


def _rules(store: Store, ref: Any, namespace: str) -> list[Any]:
    if not isinstance(ref, dict):
        return []
    kind, name = ref.get("kind"), ref.get("name", "")
    try:
        if kind == "ClusterRole":
            role = store.get(store.type_of(f"{RBAC_GROUP}/v1", "ClusterRole"), "", name)
        elif kind == "Role" and namespace:
            role = store.get(store.type_of(f"{RBAC_GROUP}/v1", "Role"), namespace, name)
        else:
            return []
    except ApiError:
        return []  # a binding to a missing role grants nothing, as in a cluster
    return list(role.get("rules") or [])


def _matches(values: Iterable[Any], wanted: str, prefix_wildcard: bool = False) -> bool:
    for value in values:
        if value == "*" or value == wanted:
            return True
        if prefix_wildcard and isinstance(value, str) and value.endswith("*") and wanted.startswith(value[:-1]):
            return True
    return False


def _rule_allows(rule: Any, non_resource: Any, resource: Any) -> bool:
    if not isinstance(rule, dict):
        return False
    if non_resource is not None:
        return _matches(rule.get("verbs") or [], str(non_resource.get("verb", ""))) and _matches(
            rule.get("nonResourceURLs") or [], str(non_resource.get("path", "")), prefix_wildcard=True
        )
    group = str(resource.get("group", ""))
    plural = str(resource.get("resource", ""))
    if resource.get("subresource"):
        plural += "/" + str(resource["subresource"])
    return (
        _matches(rule.get("verbs") or [], str(resource.get("verb", "")))
        and _matches(rule.get("apiGroups") or [], group)
        and _matches(rule.get("resources") or [], plural)
        and (not rule.get("resourceNames") or resource.get("name") in rule["resourceNames"])
    )


def _rbac_allows(store: Store, user: str, groups: list[str], non_resource: Any, resource: Any) -> tuple[bool, str]:
    bindings: list[tuple[Object, str]] = [
        (b, "") for b in store.list(store.type_of(f"{RBAC_GROUP}/v1", "ClusterRoleBinding"), None)[0]
    ]
    namespace = str(resource.get("namespace", "")) if resource is not None else ""
    if namespace:
        role_bindings = store.list(store.type_of(f"{RBAC_GROUP}/v1", "RoleBinding"), namespace)[0]
        bindings += [(b, namespace) for b in role_bindings]
    for binding, binding_namespace in bindings:
        if not _bound(binding.get("subjects") or [], user, groups, binding_namespace):
            continue
        for rule in _rules(store, binding.get("roleRef"), binding_namespace):
            if _rule_allows(rule, non_resource, resource):
                kind = "RoleBinding" if binding_namespace else "ClusterRoleBinding"
                return True, f'RBAC: allowed by {kind} "{binding["metadata"]["name"]}"'
    return False, ""

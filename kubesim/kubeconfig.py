"""Client configuration for a running kubesim: a kubeconfig file, or an in-cluster service-account directory."""

from __future__ import annotations

import base64
from pathlib import Path
from typing import Any

import yaml

from kubesim.server import KubeSim

#: token written to a service-account directory when kubesim itself does not check tokens
PLACEHOLDER_TOKEN = "kubesim-token"


def kubeconfig(sim: KubeSim, namespace: str = "default", token: str | None = None) -> dict[str, Any]:
    """A client configuration for `sim`, with `token` (default: the server's own token, if it checks one)."""
    cluster: dict[str, Any] = {"server": sim.url}
    if sim.cert is not None:
        cluster["certificate-authority-data"] = base64.b64encode(sim.cert.ca_pem).decode()
    token = token or sim.token
    user: dict[str, Any] = {"token": token} if token else {}
    return {
        "apiVersion": "v1",
        "kind": "Config",
        "clusters": [{"name": "kubesim", "cluster": cluster}],
        "users": [{"name": "kubesim", "user": user}],
        "contexts": [{"name": "kubesim", "context": {"cluster": "kubesim", "user": "kubesim", "namespace": namespace}}],
        "current-context": "kubesim",
        "preferences": {},
    }


def write_kubeconfig(sim: KubeSim, path: str | Path, namespace: str = "default", token: str | None = None) -> Path:
    target = Path(path)
    target.parent.mkdir(parents=True, exist_ok=True)
    target.write_text(yaml.safe_dump(kubeconfig(sim, namespace, token), sort_keys=False))
    return target


def write_service_account(sim: KubeSim, directory: str | Path, namespace: str = "default") -> dict[str, str]:
    """Write `token`, `ca.crt` and `namespace` as a pod's service-account volume has them; returns the
    KUBERNETES_SERVICE_HOST / _PORT environment an in-cluster client reads. kubesim must serve TLS."""
    if sim.cert is None:
        raise ValueError("in-cluster clients only speak https: start kubesim with tls=True (--tls)")
    target = Path(directory)
    target.mkdir(parents=True, exist_ok=True)
    (target / "token").write_text(sim.token or PLACEHOLDER_TOKEN)
    (target / "ca.crt").write_bytes(sim.cert.ca_pem)
    (target / "namespace").write_text(namespace)
    return {"KUBERNETES_SERVICE_HOST": sim.host, "KUBERNETES_SERVICE_PORT": str(sim.port)}

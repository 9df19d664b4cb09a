"""`python -m kubesim`: run the test API server, or apply manifests to a running one.

    python -m kubesim --port 6443 --kubeconfig /tmp/kubesim.kubeconfig [-f manifests.yaml ...] [--tls] [--token T]
    python -m kubesim apply --kubeconfig /tmp/kubesim.kubeconfig -f manifests.yaml [-f more.yaml]

The server listens on 127.0.0.1 only and writes a kubeconfig that any Kubernetes client (the EPP with
KUBECONFIG set, kubernetes_asyncio, kubectl) can use. `apply` creates or replaces each object and writes a
manifest's `status` through the status subresource (so Pods can be declared Running and Ready).
"""

from __future__ import annotations

import argparse
import asyncio
import base64
import json
import signal
import ssl
import sys
import tempfile
import urllib.error
import urllib.request
from pathlib import Path
from typing import Any

import yaml

from kubesim.kubeconfig import write_kubeconfig
from kubesim.manifests import apply_all, load_manifest_files
from kubesim.objects import ApiError
from kubesim.server import KubeSim


def _serve_parser() -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(prog="python -m kubesim", description="Kubernetes API server for tests.")
    parser.add_argument("--port", type=int, default=6443, help="listen port on 127.0.0.1 (0 = any free port)")
    parser.add_argument("--kubeconfig", default="kubesim.kubeconfig", help="where to write the client kubeconfig")
    parser.add_argument("--namespace", default="default", help="namespace of the kubeconfig's context")
    parser.add_argument("-f", "--filename", action="append", default=[], help="manifests to apply at start")
    parser.add_argument("--tls", action="store_true", help="serve https with a fresh CA (in the kubeconfig)")
    parser.add_argument("--token", default=None, help="require this bearer token")
    parser.add_argument("--bookmark-interval", type=float, default=1.0, help="seconds between watch bookmarks")
    parser.add_argument(
        "--no-inference-crds", action="store_true", help="start without the inference CRDs (apply them yourself)"
    )
    return parser


async def _serve(args: argparse.Namespace) -> int:
    sim = KubeSim(
        port=args.port,
        token=args.token,
        tls=args.tls,
        inference_crds=not args.no_inference_crds,
        bookmark_interval=args.bookmark_interval,
    )
    await sim.start()
    try:
        objects = load_manifest_files(args.filename)
        apply_all(sim.store, objects)
    except (ValueError, OSError, ApiError) as exc:
        print(f"kubesim: {exc}", file=sys.stderr)
        await sim.stop()
        return 1
    path = write_kubeconfig(sim, args.kubeconfig, args.namespace)
    print(f"kubesim: serving {sim.url}; kubeconfig {path}; {len(objects)} objects applied", flush=True)
    stop = asyncio.Event()
    loop = asyncio.get_running_loop()
    for sig in (signal.SIGTERM, signal.SIGINT):
        loop.add_signal_handler(sig, stop.set)
    await stop.wait()
    await sim.stop()
    return 0


class _Client:
    """Just enough of a REST client to apply manifests to kubesim (or any API server) from a kubeconfig."""

    def __init__(self, kubeconfig: Path) -> None:
        config = yaml.safe_load(kubeconfig.read_text())
        current = config["current-context"]
        context = next(c["context"] for c in config["contexts"] if c["name"] == current)
        cluster = next(c["cluster"] for c in config["clusters"] if c["name"] == context["cluster"])
        users = config.get("users", [])
        user: dict[str, Any] = next((u["user"] for u in users if u["name"] == context.get("user")), {})
        self.server = cluster["server"].rstrip("/")
        self.namespace = context.get("namespace", "default")
        self.token = user.get("token")
        self.context: ssl.SSLContext | None = None
        if "certificate-authority-data" in cluster:
            with tempfile.NamedTemporaryFile(suffix=".crt") as ca:
                ca.write(base64.b64decode(cluster["certificate-authority-data"]))
                ca.flush()
                self.context = ssl.create_default_context(cafile=ca.name)
        self._plurals: dict[tuple[str, str], str] = {}

    def request(self, method: str, path: str, body: Any = None) -> tuple[int, Any]:
        data = json.dumps(body).encode() if body is not None else None
        request = urllib.request.Request(self.server + path, data=data, method=method)
        request.add_header("Content-Type", "application/json")
        if self.token:
            request.add_header("Authorization", f"Bearer {self.token}")
        opener = urllib.request.build_opener(
            urllib.request.ProxyHandler({}), urllib.request.HTTPSHandler(context=self.context)
        )
        try:
            with opener.open(request, timeout=10) as response:
                return response.status, json.loads(response.read() or b"{}")
        except urllib.error.HTTPError as error:
            return error.code, json.loads(error.read() or b"{}")

    def path(self, obj: dict[str, Any]) -> tuple[str, bool]:
        api_version, kind = obj["apiVersion"], obj["kind"]
        base = f"/apis/{api_version}" if "/" in api_version else f"/api/{api_version}"
        if (api_version, kind) not in self._plurals:
            status, listing = self.request("GET", base)
            if status != 200:
                raise ApiError(status, "NotFound", f"the server does not serve {api_version}")
            for resource in listing.get("resources", []):
                if "/" not in resource["name"]:
                    self._plurals[(api_version, resource["kind"])] = resource["name"] + (
                        "|ns" if resource["namespaced"] else ""
                    )
        entry = self._plurals.get((api_version, kind))
        if entry is None:
            raise ApiError(404, "NotFound", f'no matches for kind "{kind}" in version "{api_version}"')
        plural, _, namespaced = entry.partition("|")
        if namespaced:
            namespace = obj.get("metadata", {}).get("namespace") or self.namespace
            return f"{base}/namespaces/{namespace}/{plural}", True
        return f"{base}/{plural}", False

    def apply(self, obj: dict[str, Any]) -> str:
        collection, _ = self.path(obj)
        name = obj["metadata"]["name"]
        status, current = self.request("GET", f"{collection}/{name}")
        if status == 404:
            status, result = self.request("POST", collection, obj)
            verb = "created"
        else:
            body = {**obj, "metadata": {**obj["metadata"], "resourceVersion": current["metadata"]["resourceVersion"]}}
            status, result = self.request("PUT", f"{collection}/{name}", body)
            verb = "configured"
        if status >= 300:
            raise ApiError(status, str(result.get("reason", "")), str(result.get("message", result)))
        if "status" in obj and obj["kind"] != "Namespace":
            status, result = self.request("PUT", f"{collection}/{name}/status", {**result, "status": obj["status"]})
            if status >= 300 and status != 404:
                raise ApiError(status, str(result.get("reason", "")), str(result.get("message", result)))
        return f"{obj['kind'].lower()}/{name} {verb}"


def _apply(argv: list[str]) -> int:
    parser = argparse.ArgumentParser(prog="python -m kubesim apply", description="Apply manifests to an API server.")
    parser.add_argument("--kubeconfig", required=True)
    parser.add_argument("-f", "--filename", action="append", required=True)
    args = parser.parse_args(argv)
    try:
        client = _Client(Path(args.kubeconfig))
        objects = load_manifest_files(args.filename)
        ordered = [o for o in objects if o["kind"] in ("CustomResourceDefinition", "Namespace")]
        ordered += [o for o in objects if o["kind"] not in ("CustomResourceDefinition", "Namespace")]
        for obj in ordered:
            print(client.apply(obj))
    except (ValueError, OSError, KeyError, ApiError) as exc:
        print(f"kubesim apply: {exc}", file=sys.stderr)
        return 1
    return 0


def main(argv: list[str] | None = None) -> int:
    args = list(sys.argv[1:] if argv is None else argv)
    if args[:1] == ["apply"]:
        return _apply(args[1:])
    return asyncio.run(_serve(_serve_parser().parse_args(args)))


if __name__ == "__main__":
    raise SystemExit(main())

"""The metrics port of an `epp` process in Kubernetes mode, as the reference runs it: --metrics-endpoint-auth on
(the default) and --metrics-cert-dir, against kubesim answering the TokenReview and SubjectAccessReview."""

from __future__ import annotations

import json
import ssl
import urllib.error
import urllib.request
from pathlib import Path

import pytest

from epp.devstack.processes import EppProcess
from kubesim.certs import make_serving_cert
from kubesim.testing import KubeSimThread, wait_until

pytestmark = pytest.mark.e2e
POOL = {
    "apiVersion": "inference.networking.k8s.io/v1",
    "kind": "InferencePool",
    "metadata": {"name": "pool", "namespace": "default"},
    "spec": {"selector": {"matchLabels": {"app": "x"}}, "targetPorts": [{"number": 8000}]},
}


def fetch(url: str, context: ssl.SSLContext | None, authorization: str = "") -> tuple[int, str]:
    request = urllib.request.Request(url, headers={"Authorization": authorization} if authorization else {})
    opener = urllib.request.build_opener(urllib.request.ProxyHandler({}), urllib.request.HTTPSHandler(context=context))
    try:
        with opener.open(request, timeout=10) as response:
            return response.status, response.read().decode()
    except urllib.error.HTTPError as error:
        return error.code, error.read().decode()


def test_tokens_are_reviewed_by_the_api_server_over_tls(tmp_path: Path) -> None:
    cert = make_serving_cert("127.0.0.1")
    (tmp_path / "tls.crt").write_bytes(cert.cert_pem)
    (tmp_path / "tls.key").write_bytes(cert.key_pem)
    client = ssl.create_default_context(cadata=cert.ca_pem.decode())
    with KubeSimThread() as kube:
        kube.apply(POOL)
        reader = kube.grant_metrics_reader()
        kube.add_user("alice-token", "alice", ("developers",))
        kubeconfig = kube.write_kubeconfig(tmp_path / "kubeconfig")
        # --metrics-endpoint-auth is left at its default, true (as the reference)
        epp = EppProcess(
            ["--pool-name", "pool", "--tracing=false", "--metrics-cert-dir", str(tmp_path)],
            env={"KUBECONFIG": str(kubeconfig)},
        )
        with epp:
            base = f"https://127.0.0.1:{epp.metrics_port}"
            wait_until(lambda: fetch(f"{base}/metrics", client, reader)[0] != 503, 10, what="token reviews possible")
            assert fetch(f"{base}/metrics", client) == (401, "Unauthorized\n")
            assert fetch(f"{base}/metrics", client, "Bearer forged") == (401, "Unauthorized\n")
            assert fetch(f"{base}/metrics", client, "Bearer alice-token") == (
                403,
                "Authorization denied for user alice\n",
            )
            status, page = fetch(f"{base}/metrics", client, reader)
            assert status == 200 and "inference_pool_ready_pods" in page
            status, page = fetch(f"{base}/debug/endpoints", client, reader)
            assert status == 200 and json.loads(page)["source"] == "InferencePool default/pool"
            assert fetch(f"{base}/debug/config", client, "Bearer alice-token")[0] == 403
            assert fetch(f"{base}/nope", client)[0] == 404  # unknown paths are not guarded, as the reference's
            reviews = [p for _, p in kube.sim.requests if p.endswith("/tokenreviews")]
            assert len(reviews) >= 3
            for _ in range(3):  # a verdict is reused within its time to live
                assert fetch(f"{base}/metrics", client, reader)[0] == 200
            assert len([p for _, p in kube.sim.requests if p.endswith("/tokenreviews")]) == len(reviews)
            with pytest.raises((urllib.error.URLError, ConnectionError)):  # the port speaks TLS only
                urllib.request.build_opener(urllib.request.ProxyHandler({})).open(
                    f"http://127.0.0.1:{epp.metrics_port}/metrics", timeout=5
                ).read()
        log = epp.log()
        assert "(TokenReview, then SubjectAccessReview of the path with verb get)" in log
        assert "metrics and /debug" in log and "(https)" in log

"""kubesim: a Kubernetes API server for tests that speaks the real wire protocol (list, chunked watch
streams with resourceVersion and bookmarks, 410 Gone, optimistic concurrency, status subresources,
discovery), so that unmodified client code — the EPP's own — can be tested against it.

`python -m kubesim --port 6443 --kubeconfig kubesim.kubeconfig -f manifests.yaml` runs one; tests use
`kubesim.testing.KubeSimThread`, and `kubesim.kubelet.Kubelet` runs simulated model-server pods.
"""

from kubesim.objects import ApiError
from kubesim.server import KubeSim
from kubesim.store import Store

__all__ = ["ApiError", "KubeSim", "Store"]

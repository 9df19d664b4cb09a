"""A kubelet for tests: runs pods as local processes and reports them to kubesim.

- Model-server pods run the simulated vLLM server (`python -m vllmsim.cli`) on their own loopback
  address (127.0.N.2, 127.0.N.3, …: all of 127/8 is loopback on Linux) and the pod's port, so several
  pods share a port number as in a cluster; the Pod object gets that address as its podIP and turns
  Ready once the server answers /health.
- `run_deployment` reads a Deployment manifest (replicas, template labels, the container's args, as the
  llm-d inference simulator takes them) and starts its pods.
- `container_command` turns a Deployment's container (args, downward-API env, ConfigMap volumes) into
  an argv + environment + files for running that program locally (e.g. the EPP itself).
"""

from __future__ import annotations

import random
import socket
import subprocess
import sys
import tempfile
import time
import urllib.request
import uuid
from collections.abc import Mapping, Sequence
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from epp.devstack.lifecycle import stop_process
from kubesim.objects import Object
from kubesim.testing import KubeSimThread, pod_manifest

_OPENER = urllib.request.build_opener(urllib.request.ProxyHandler({}))


def _bindable(ip: str, port: int) -> bool:
    with socket.socket() as sock:
        try:
            sock.bind((ip, port))
        except OSError:
            return False
    return True


@dataclass
class SimPod:
    name: str
    namespace: str
    ip: str
    ports: list[int]
    process: subprocess.Popen[bytes]
    log_path: Path

    def log(self) -> str:
        return self.log_path.read_text(errors="replace")[-2000:]


@dataclass
class Kubelet:
    kube: KubeSimThread
    #: simulated time runs this many times faster (short test requests)
    time_scale: float = 20.0
    #: third octet of the pods' addresses; picked at random (from 100 to 249) unless given
    subnet: int = field(default_factory=lambda: random.randint(100, 249))
    pods: dict[tuple[str, str], SimPod] = field(default_factory=dict)
    _next_host: int = 2

    def allocate_ip(self, ports: Sequence[int]) -> str:
        """A loopback address no running pod has, on which all `ports` are free (after .254 the addresses of
        stopped pods are used again, so pods can come and go for as long as a test or soak runs)."""
        taken = {pod.ip for pod in self.pods.values()}
        for _ in range(253):
            ip = f"127.0.{self.subnet}.{self._next_host}"
            self._next_host = self._next_host + 1 if self._next_host < 254 else 2
            if ip not in taken and all(_bindable(ip, p) for p in ports):
                return ip
        raise RuntimeError(f"no free loopback address left in 127.0.{self.subnet}.0/24")

    # --- model-server pods ------------------------------------------------------------------------

    def start_pods(
        self,
        names: Sequence[str],
        labels: Mapping[str, str],
        ports: Sequence[int] = (8000,),
        sim_args: Sequence[str] = (),
        namespace: str = "default",
        annotations: Mapping[str, str] | None = None,
        ready: bool = True,
        timeout: float = 20.0,
    ) -> list[SimPod]:
        """Start one simulated server per pod (on consecutive `ports`), wait until each answers, then create
        the Pods (Ready unless `ready` is False)."""
        if list(ports) != list(range(ports[0], ports[0] + len(ports))):
            raise ValueError(f"pod ports {list(ports)} must be consecutive (the simulator serves --port .. --port+N-1)")
        started = []
        for name in names:
            ip = self.allocate_ip(ports)
            log_path = Path(tempfile.mkstemp(prefix=f"kubesim-{name}-", suffix=".log")[1])
            command = [
                sys.executable, "-m", "vllmsim.cli", *sim_args, "--host", ip, "--port", str(ports[0]),
                "--count", str(len(ports)), "--time-scale", str(self.time_scale),
            ]  # fmt: skip
            with log_path.open("wb") as log:
                process = subprocess.Popen(command, stdout=log, stderr=subprocess.STDOUT)
            pod = SimPod(name, namespace, ip, list(ports), process, log_path)
            self.pods[(namespace, name)] = pod
            started.append(pod)
        for pod in started:
            self._wait_healthy(pod, timeout)
        for pod in started:
            manifest = pod_manifest(pod.name, pod.ip, labels, namespace, ready, annotations, pod.ports)
            self.kube.apply(manifest)
        return started

    def _wait_healthy(self, pod: SimPod, timeout: float) -> None:
        deadline = time.monotonic() + timeout
        pending = set(pod.ports)
        while pending:
            if pod.process.poll() is not None:
                raise RuntimeError(f"simulated server of pod {pod.name} exited: {pod.log()}")
            for port in list(pending):
                try:
                    with _OPENER.open(f"http://{pod.ip}:{port}/health", timeout=1):
                        pending.discard(port)
                except OSError:
                    pass
            if pending and time.monotonic() > deadline:
                raise TimeoutError(f"pod {pod.name} ({pod.ip}) did not answer /health within {timeout}s")
            if pending:
                time.sleep(0.05)

    def run_deployment(self, deployment: Object, replicas: int | None = None) -> list[SimPod]:
        """Start the pods of a Deployment whose container runs an inference simulator."""
        metadata, spec = deployment["metadata"], deployment["spec"]
        template = spec["template"]
        labels = template["metadata"]["labels"]
        container = template["spec"]["containers"][0]
        args = [str(a) for a in container.get("args") or []]
        port = int(args[args.index("--port") + 1]) if "--port" in args else 8000
        if "--port" in args:
            index = args.index("--port")
            args = args[:index] + args[index + 2 :]
        count = spec.get("replicas", 1) if replicas is None else replicas
        template_hash = uuid.uuid4().hex[:9]
        names = [f"{metadata['name']}-{template_hash}-{uuid.uuid4().hex[:5]}" for _ in range(count)]
        return self.start_pods(names, labels, (port,), args, metadata.get("namespace", "default"))

    def stop_pod(self, name: str, namespace: str = "default", delete: bool = True, grace: int = 0) -> None:
        """Stop the pod's server; with `delete`, delete the Pod (grace > 0 leaves it terminating first)."""
        pod = self.pods.pop((namespace, name), None)
        if delete:
            self.kube.delete("v1", "Pod", name, namespace, grace)
        if pod is not None:
            stop_process(pod.process, 5.0)
            pod.log_path.unlink(missing_ok=True)

    def stop(self) -> None:
        for pod in self.pods.values():
            stop_process(pod.process, 5.0)
            pod.log_path.unlink(missing_ok=True)
        self.pods.clear()

    def __enter__(self) -> Kubelet:
        return self

    def __exit__(self, *exc: object) -> None:
        self.stop()


@dataclass
class ContainerCommand:
    args: list[str]
    env: dict[str, str]
    #: where the ConfigMap volumes were written (remove when done)
    volume_root: Path


def container_command(deployment: Object, configmaps: Mapping[str, Object], pod_name: str) -> ContainerCommand:
    """The first container of a Deployment as a local command: its args with each volume's mountPath
    replaced by a temporary directory holding the ConfigMap's files (an emptyDir volume is an empty
    directory), and its env with the downward API's metadata.name / metadata.namespace / status.podIP
    filled in."""
    metadata = deployment["metadata"]
    namespace = metadata.get("namespace", "default")
    pod_spec = deployment["spec"]["template"]["spec"]
    container = pod_spec["containers"][0]
    root = Path(tempfile.mkdtemp(prefix="kubesim-volumes-"))
    volumes = {v["name"]: v for v in pod_spec.get("volumes") or []}
    mounts: dict[str, Path] = {}
    for mount in container.get("volumeMounts") or []:
        volume = volumes.get(mount["name"])
        if volume is not None and "emptyDir" in volume:
            target = root / mount["name"]
            target.mkdir()
            mounts[mount["mountPath"].rstrip("/")] = target
            continue
        if volume is None or "configMap" not in volume:
            raise ValueError(f"volume {mount['name']!r}: only configMap and emptyDir volumes can be run locally")
        source = configmaps.get(volume["configMap"]["name"])
        if source is None:
            raise ValueError(f"ConfigMap {volume['configMap']['name']!r} of volume {mount['name']!r} was not given")
        target = root / mount["name"]
        target.mkdir()
        for key, text in (source.get("data") or {}).items():
            (target / key).write_text(text)
        mounts[mount["mountPath"].rstrip("/")] = target
    args = []
    for arg in container.get("args") or []:
        text = str(arg)
        # the deepest mount that holds the path, once (a local directory may itself lie under a mountPath)
        for path, target in sorted(mounts.items(), key=lambda m: -len(m[0])):
            if text == path or text.startswith(path + "/"):
                text = str(target) + text[len(path) :]
                break
        args.append(text)
    fields = {"metadata.name": pod_name, "metadata.namespace": namespace, "status.podIP": "127.0.0.1"}
    env: dict[str, str] = {}
    for item in container.get("env") or []:
        if "value" in item:
            env[item["name"]] = str(item["value"])
        else:
            ref: Any = (item.get("valueFrom") or {}).get("fieldRef") or {}
            if ref.get("fieldPath") in fields:
                env[item["name"]] = fields[ref["fieldPath"]]
    return ContainerCommand(args, env, root)

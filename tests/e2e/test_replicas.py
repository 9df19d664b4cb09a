"""Two epp replicas sharing state through a real redis-server, end to end through real Envoy: what one learns
(a prefix's server) and holds (in-flight requests) steers the other; the store dying and returning under load
fails no request; a replica killed with SIGKILL leaves the other's view within its TTL and the other serves
everything. Envoy A talks only to replica A, Envoy B only to B, and a third Envoy spreads streams over both
(deploy/envoy/envoy-replicas.yaml)."""

from __future__ import annotations

import re
import subprocess
import sys
import threading
import time
import urllib.request
from collections.abc import Callable, Iterator
from concurrent.futures import ThreadPoolExecutor
from dataclasses import dataclass

import pytest

from epp.devstack.envoy import EnvoyProcess, env_without_proxies, free_port, free_port_range, render_bootstrap
from epp.devstack.processes import EppProcess
from epp.devstack.redis import RedisServer
from tests.e2e.backends import EchoBackends
from tests.e2e.http import post
from tests.replicas.store import started_store, store_binary

pytestmark = pytest.mark.e2e
MODEL = "meta-llama/Llama-3.1-8B-Instruct"
SERVERS = 3
_OPENER = urllib.request.build_opener(urllib.request.ProxyHandler({}))


@dataclass
class Stack:
    store: RedisServer
    replicas: list[EppProcess]
    envoys: list[EnvoyProcess]  # through A only, through B only, over both

    def served_by(self, envoy: int, prompt: str, max_tokens: int = 4) -> int:
        body = {"model": MODEL, "prompt": prompt, "max_tokens": max_tokens}
        status, headers, text = post(self.envoys[envoy].listener_port, "/v1/completions", body, timeout=60)
        assert status == 200, text
        return int(headers["x-vllm-sim-port"])

    def peer_inflight(self, replica: int) -> dict[int, float]:
        """What `replica` adds in of the other's in-flight requests, per server port."""
        port = self.replicas[replica].metrics_port
        page = _OPENER.open(f"http://127.0.0.1:{port}/metrics", timeout=2).read().decode()
        pattern = r'^epp_shared_state_peer_inflight_requests\{endpoint="127\.0\.0\.1:(\d+)"\} (\S+)$'
        return {int(m.group(1)): float(m.group(2)) for m in re.finditer(pattern, page, re.MULTILINE)}


def wait_for(condition: Callable[[], bool], timeout: float) -> float:
    started = time.monotonic()
    while not condition():
        assert time.monotonic() - started < timeout, f"not within {timeout}s"
        time.sleep(0.02)
    return time.monotonic() - started


@pytest.fixture(scope="module")
def stack() -> Iterator[Stack]:
    store_iterator = started_store()
    store = next(store_iterator)
    base = free_port_range(SERVERS)
    fleet = subprocess.Popen(
        [sys.executable, "-m", "vllmsim.cli", "--model", MODEL, "--port", str(base), "--count", str(SERVERS),
         "--time-scale", "2"],
        env=env_without_proxies(), stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL,
    )  # fmt: skip
    endpoints = ",".join(f"127.0.0.1:{base + i}" for i in range(SERVERS))
    flags = ["--endpoints", endpoints, "--tracing=false", "--health-checking", "--shared-state", store.url]
    replicas = [EppProcess(flags, env={"POD_NAME": f"epp-{name}"}) for name in "ab"]
    envoys: list[EnvoyProcess] = []
    try:
        time.sleep(1.0)
        for replica in replicas:
            replica.start()
        for replica in replicas:
            envoys.append(EnvoyProcess(render_bootstrap("envoy", free_port(), free_port(), replica.grpc_port)))
        ports = [r.grpc_port for r in replicas]
        envoys.append(EnvoyProcess(render_bootstrap("envoy-replicas", free_port(), free_port(), 0, epp_ports=ports)))
        for envoy in envoys:
            envoy.start()
        yield Stack(store, replicas, envoys)
    finally:
        for envoy in envoys:
            envoy.stop()
        for replica in replicas:
            replica.stop()
        fleet.terminate()
        fleet.wait(10)
        store_iterator.close()


def test_a_prefix_first_routed_by_one_replica_is_routed_to_the_same_server_by_the_other(stack: Stack) -> None:
    for tenant in range(3):
        system = f"You are the support assistant of tenant {tenant}; answer in one sentence. " * 30
        home = stack.served_by(0, system + "First question, through replica A?")
        time.sleep(0.1)  # the insert reaches the other replica within tens of milliseconds
        assert stack.served_by(1, system + "Second question, through replica B?") == home
        assert stack.served_by(0, system + "Third question, through replica A again?") == home


def test_in_flight_requests_held_through_one_replica_steer_the_others_picks(stack: Stack) -> None:
    with ThreadPoolExecutor(2) as pool:
        held = [pool.submit(stack.served_by, 0, f"long answer {i} " + "q" * 400, 600) for i in range(2)]
        wait_for(lambda: sum(stack.peer_inflight(1).values()) == 2.0, timeout=5.0)
        busy = {port for port, count in stack.peer_inflight(1).items() if count > 0}
        picks = [stack.served_by(1, f"short question {i}: " + "s" * 300) for i in range(6)]
        assert busy.isdisjoint(picks), (busy, picks)
        assert len(busy) == 2  # replica A spread its own two as well
        for future in held:
            assert future.result() in busy
    wait_for(lambda: sum(stack.peer_inflight(1).values()) == 0.0, timeout=2.0)


def test_the_store_killed_and_restarted_under_load_fails_no_request_and_sharing_resumes(stack: Stack) -> None:
    failures: list[str] = []
    done = threading.Event()
    sent = [0]

    def load(worker: int) -> None:
        i = 0
        while not done.is_set() and i < 2000:
            i += 1
            body = {"model": MODEL, "prompt": f"worker {worker} request {i} " + "l" * 200, "max_tokens": 8}
            status, _, text = post(stack.envoys[2].listener_port, "/v1/completions", body, timeout=30)
            sent[0] += 1
            if status != 200:
                failures.append(f"{status}: {text[:200]!r}")

    threads = [threading.Thread(target=load, args=(w,)) for w in range(4)]
    for thread in threads:
        thread.start()
    try:
        time.sleep(1.0)
        stack.store.kill()
        time.sleep(2.0)
        stack.store.start()
        time.sleep(2.0)
    finally:
        done.set()
        for thread in threads:
            thread.join(60)
    assert sent[0] > 40 and failures == [], (sent[0], failures[:5])
    system = "A tenant that appears after the store came back; be brief. " * 30
    deadline = time.monotonic() + 5
    while True:  # replicas rejoin within their retry interval and send a full report
        home = stack.served_by(0, system + f"through A at {time.monotonic()}")
        time.sleep(0.1)
        if stack.served_by(1, system + "through B") == home or time.monotonic() > deadline:
            break
    assert stack.served_by(1, system + "through B, once more") == home


def test_a_replica_killed_leaves_the_view_within_ten_seconds_and_the_other_serves_everything(stack: Stack) -> None:
    with ThreadPoolExecutor(2) as pool:
        held = [pool.submit(post, stack.envoys[1].listener_port, "/v1/completions",
                            {"model": MODEL, "prompt": f"held by B {i}", "max_tokens": 2000}, None, 60)
                for i in range(2)]  # fmt: skip
        wait_for(lambda: sum(stack.peer_inflight(0).values()) == 2.0, timeout=5.0)
        victim = stack.replicas[1].process
        assert victim is not None
        victim.kill()  # SIGKILL: no goodbye
        try:
            gone = wait_for(lambda: sum(stack.peer_inflight(0).values()) == 0.0, timeout=10.0)
        except AssertionError as late:  # the surviving replica's own account of its shared view, to diagnose
            log = stack.replicas[0].log_path.read_text(errors="replace").splitlines()
            raise AssertionError(f"{late}; view {stack.peer_inflight(0)}; replica A's log ends:\n"
                                 + "\n".join(log[-60:])) from late  # fmt: skip
        for future in held:
            future.result()  # cut with the replica; only their completion matters here
    served = [stack.served_by(2, f"after the kill {i}: " + "k" * 200) for i in range(20)]
    assert len(served) == 20
    print(f"the killed replica's load left the other's view after {gone:.1f}s")


def test_the_local_stack_with_two_replicas_routes_a_tenants_prefix_to_one_server() -> None:
    store_binary()
    done = subprocess.run(
        [sys.executable, "-m", "epp.devstack.stack", "--replicas", "2", "--exit", "--listener-port", str(free_port())],
        capture_output=True, text=True, timeout=120, env=env_without_proxies(), check=False,
    )  # fmt: skip
    assert done.returncode == 0, done.stdout + done.stderr
    lines = re.findall(r"\(tenant (\w)\) via replica (\d) → HTTP 200, served by 127\.0\.0\.1:(\d+)", done.stdout)
    assert len(lines) == 12, done.stdout
    for tenant in "ABC":
        routed = [(replica, server) for t, replica, server in lines if t == tenant]
        # the tenant's first request goes through replica 0, its next through replica 1: to the same server
        # (later ones may move when that server's queue makes another faster)
        assert [replica for replica, _ in routed[:2]] == ["0", "1"], done.stdout
        assert routed[1][1] == routed[0][1], done.stdout


def test_a_store_unreachable_at_start_leaves_the_replica_serving_and_it_joins_when_the_store_comes() -> None:
    binary = store_binary()
    backends = EchoBackends([free_port() for _ in range(2)])
    backends.start()
    store = RedisServer(binary=binary)  # its port is chosen, nothing listens there yet
    epp = EppProcess(["--endpoints", ",".join(f"127.0.0.1:{p}" for p in backends.ports), "--tracing=false",
                      "--shared-state", store.url])  # fmt: skip
    try:
        epp.start()  # waits for SERVING
        with EnvoyProcess(render_bootstrap("envoy", free_port(), free_port(), epp.grpc_port)) as envoy:
            for i in range(5):
                status, _, body = post(envoy.listener_port, "/v1/completions", {"model": "m", "prompt": f"p{i}"})
                assert status == 200, body
            assert epp.health() == "SERVING"
            assert metric(epp, "epp_shared_state_connected") == 0.0
            time.sleep(1.2)  # several retries, one log line
            assert epp.log().count("unreachable") == 1, epp.log()
            store.start()
            wait_for(lambda: metric(epp, "epp_shared_state_connected") == 1.0, timeout=5.0)
            assert "back" in epp.log()
            status, _, body = post(envoy.listener_port, "/v1/completions", {"model": "m", "prompt": "after"})
            assert status == 200, body
    finally:
        epp.stop()
        store.close()
        backends.stop()


def metric(epp: EppProcess, name: str) -> float:
    page = _OPENER.open(f"http://127.0.0.1:{epp.metrics_port}/metrics", timeout=2).read().decode()
    found = re.search(rf"^{name} (\S+)$", page, re.MULTILINE)
    assert found is not None, page[-2000:]
    return float(found.group(1))

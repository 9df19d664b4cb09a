"""Process lifecycle of a real `epp`: health, graceful SIGTERM drain, TLS with certificate reload."""

from __future__ import annotations

import os
import queue
import signal
import socket
import subprocess
import sys
import threading
import time
from collections.abc import Iterator
from pathlib import Path

import grpc
import pytest

from epp.datalayer.scraper import TABLE_MEMORY_PREFIX
from epp.devstack.processes import EppProcess
from epp.tls import self_signed_pair
from epp_pb.envoy.service.ext_proc.v3 import external_processor_pb2 as pb
from epp_pb.envoy.service.ext_proc.v3 import external_processor_pb2_grpc as pb_grpc

pytestmark = pytest.mark.e2e


def headers_message() -> pb.ProcessingRequest:
    message = pb.ProcessingRequest()
    message.request_headers.headers.headers.add(key=":path", raw_value=b"/v1/completions")
    message.request_headers.headers.headers.add(key="x-request-id", raw_value=b"drain-1")
    return message


def body_message() -> pb.ProcessingRequest:
    message = pb.ProcessingRequest()
    message.request_body.body = b'{"model":"m","prompt":"p"}'
    message.request_body.end_of_stream = True
    return message


def test_sigterm_goes_not_serving_and_lets_in_flight_streams_finish() -> None:
    epp = EppProcess(["--endpoints", "127.0.0.1:1", "--secure-serving=false", "--drain-timeout", "10s"])
    epp.start()
    assert epp.process is not None
    try:
        assert epp.health() == "SERVING"
        assert epp.health("") == "SERVING"
        assert epp.health("envoy.service.ext_proc.v3.ExternalProcessor") == "SERVING"
        outbox: queue.Queue[pb.ProcessingRequest | None] = queue.Queue()

        def requests() -> Iterator[pb.ProcessingRequest]:
            while (message := outbox.get()) is not None:
                yield message

        channel = grpc.insecure_channel(f"127.0.0.1:{epp.grpc_port}")
        responses = pb_grpc.ExternalProcessorStub(channel).Process(requests())
        received: list[pb.ProcessingResponse] = []
        reader = threading.Thread(target=lambda: received.extend(responses), daemon=True)
        reader.start()
        outbox.put(headers_message())
        time.sleep(0.3)  # the stream is open and waiting for its body
        epp.process.send_signal(signal.SIGTERM)
        deadline = time.monotonic() + 3
        while epp.health() != "NOT_SERVING":
            assert time.monotonic() < deadline, "health did not go NOT_SERVING after SIGTERM"
            time.sleep(0.05)
        outbox.put(body_message())
        outbox.put(None)
        reader.join(5)
        assert [r.WhichOneof("response") for r in received] == ["request_headers", "request_body"]
        assert epp.process.wait(10) == 0
        channel.close()
    finally:
        epp.stop()


def test_broken_endpoint_source_stops_startup_with_the_reason(tmp_path: Path) -> None:
    missing = tmp_path / "none.yaml"
    result = subprocess.run(
        [sys.executable, "-m", "epp.cli", "--endpoints-file", str(missing), "--grpc-port", "0",
         "--grpc-health-port", "0", "--metrics-port", "0"],
        capture_output=True, text=True, timeout=30,
    )  # fmt: skip
    assert result.returncode == 1
    assert str(missing) in result.stderr


@pytest.mark.parametrize("flag", ["--grpc-port", "--grpc-health-port", "--metrics-port"])
def test_a_port_in_use_stops_startup_with_the_flag_and_no_traceback(flag: str) -> None:
    with socket.socket() as taken:
        taken.bind(("0.0.0.0", 0))
        taken.listen()
        port = taken.getsockname()[1]
        ports = {"--grpc-port": "0", "--grpc-health-port": "0", "--metrics-port": "0", flag: str(port)}
        process = subprocess.Popen(
            [sys.executable, "-m", "epp.cli", "--endpoints", "127.0.0.1:9", *(x for kv in ports.items() for x in kv)],
            stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True,
        )  # fmt: skip
        _, stderr = process.communicate(timeout=30)
    assert process.returncode == 1
    assert f"epp: {flag} {port}: cannot listen there" in stderr
    assert "Traceback" not in stderr and "leaked" not in stderr, stderr
    # the endpoint table's shared memory is released (named after its process: other processes' blocks may come
    # and go meanwhile)
    assert not [n for n in os.listdir("/dev/shm") if n.startswith(f"{TABLE_MEMORY_PREFIX}{process.pid}-")]


def test_tls_with_cert_path_and_reload(tmp_path: Path) -> None:
    first_cert, first_key = self_signed_pair()
    (tmp_path / "tls.crt").write_bytes(first_cert)
    (tmp_path / "tls.key").write_bytes(first_key)
    epp = EppProcess(["--endpoints", "127.0.0.1:1", "--cert-path", str(tmp_path), "--enable-cert-reload"])
    epp.start()
    try:

        def pick_with_trust(root: bytes) -> str:
            credentials = grpc.ssl_channel_credentials(root_certificates=root)
            options = [("grpc.ssl_target_name_override", "localhost")]
            with grpc.secure_channel(f"127.0.0.1:{epp.grpc_port}", credentials, options) as channel:
                stub = pb_grpc.ExternalProcessorStub(channel)
                responses = list(stub.Process(iter([headers_message(), body_message()]), timeout=5))
                return responses[0].request_headers.response.header_mutation.set_headers[0].header.raw_value.decode()

        assert pick_with_trust(first_cert) == "127.0.0.1:1"
        second_cert, second_key = self_signed_pair()
        (tmp_path / "tls.key").write_bytes(second_key)
        (tmp_path / "tls.crt").write_bytes(second_cert)
        deadline = time.monotonic() + 5
        while True:
            try:
                assert pick_with_trust(second_cert) == "127.0.0.1:1"
                break
            except grpc.RpcError:
                assert time.monotonic() < deadline, "the new certificate was not served within 5 s"
                time.sleep(0.2)
        with pytest.raises(grpc.RpcError):
            pick_with_trust(first_cert)
    finally:
        epp.stop()


def test_health_checking_flag_serves_health_on_the_ext_proc_port() -> None:
    from grpc_health.v1 import health_pb2, health_pb2_grpc

    epp = EppProcess(["--endpoints", "127.0.0.1:1", "--secure-serving=false", "--health-checking"])
    epp.start()
    try:
        with grpc.insecure_channel(f"127.0.0.1:{epp.grpc_port}") as channel:
            stub = health_pb2_grpc.HealthStub(channel)
            request = health_pb2.HealthCheckRequest(service="envoy.service.ext_proc.v3.ExternalProcessor")
            assert stub.Check(request, timeout=2).status == health_pb2.HealthCheckResponse.SERVING
        with grpc.insecure_channel(f"127.0.0.1:{epp.health_port}") as channel:
            stub = health_pb2_grpc.HealthStub(channel)
            listed = stub.List(health_pb2.HealthListRequest(), timeout=2)
            assert listed.statuses["envoy.service.ext_proc.v3.ExternalProcessor"].status == 1
            with pytest.raises(grpc.RpcError) as error:
                next(iter(stub.Watch(health_pb2.HealthCheckRequest(service=""), timeout=2)))
            assert error.value.code() == grpc.StatusCode.UNIMPLEMENTED
    finally:
        epp.stop()

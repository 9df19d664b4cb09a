"""Flow-control admission comes before the candidates check (reference §2.4): with flow control on, a request
for an empty pool waits in the queue (the pool is saturated; scale-from-zero) instead of being answered
503 at once, and is routed once an endpoint appears. Wired as epp.app wires it, without gRPC."""

from __future__ import annotations

import asyncio
import time
from collections.abc import AsyncIterator

import pytest

from epp.config.schema import load_config_text
from epp.datastore.table import Endpoint, EndpointTable
from epp.director import Director
from epp.extproc.core import ExtProcStream
from epp.extproc.servicer import ExtProcServicer
from epp.flowcontrol.controller import FlowController
from epp.requests.parsers import openai_parser
from epp.scheduling.framework import build_scheduler
from epp_pb.envoy.extensions.filters.http.ext_proc.v3 import processing_mode_pb2 as mode_pb
from epp_pb.envoy.service.ext_proc.v3 import external_processor_pb2 as pb

CONFIG = """\
apiVersion: inference.networking.x-k8s.io/v1alpha1
kind: EndpointPickerConfig
featureGates: [{gates}]
plugins:
- type: queue-scorer
- type: {detector}
  name: detector
saturationDetector: {{pluginRef: detector}}
schedulingProfiles:
- name: default
  plugins: [{{pluginRef: queue-scorer}}]
{flow_control}
"""
DETECTORS = ["utilization-detector", "concurrency-detector"]
NO_CANDIDATES = b"failed to find endpoint candidates for serving the request"


class Epp:
    """Director, flow controller and servicer over an endpoint table, as epp.app builds them."""

    def __init__(self, detector: str, flow_control: bool, ttl: str = "0s") -> None:
        config = load_config_text(
            CONFIG.format(
                gates="flowControl" if flow_control else "",
                detector=detector,
                flow_control=f"flowControl: {{defaultRequestTTL: {ttl}}}" if flow_control else "",
            ),
            "test",
        )
        self.table = EndpointTable(64)
        scheduler = build_scheduler(config, self.table)
        self.director = Director(
            self.table, scheduler, hooks=scheduler, saturation=scheduler.saturation, shed_sheddable=not flow_control
        )
        self.flow: FlowController[list[pb.ProcessingResponse]] | None = None
        if flow_control:
            self.flow = FlowController(
                config.flow_control, lambda: scheduler.saturation(self.table.live_slots()), poll_interval=0.005
            )
            self.director.on_release = self.flow.notify
        self.servicer = ExtProcServicer(
            lambda: ExtProcStream(self.director, openai_parser, flow_control=flow_control), self.flow
        )

    def add_endpoint(self, address: str) -> None:
        slot = self.table.add(Endpoint(address, 8000))
        self.table.metrics_time[slot] = time.monotonic()  # scraped: fresh metrics, nothing queued

    async def request(self, subset: list[str] | None = None) -> list[pb.ProcessingResponse]:
        return [response async for response in self.servicer.Process(_messages(subset), None)]


async def _messages(subset: list[str] | None) -> AsyncIterator[pb.ProcessingRequest]:
    headers = pb.ProcessingRequest()
    for key, value in {":path": "/v1/completions", ":method": "POST", "x-request-id": "rid"}.items():
        headers.request_headers.headers.headers.add(key=key, raw_value=value.encode())
    headers.protocol_config.request_body_mode = mode_pb.ProcessingMode.FULL_DUPLEX_STREAMED
    if subset is not None:
        hint = headers.metadata_context.filter_metadata["envoy.lb.subset_hint"]
        values = hint.fields["x-gateway-destination-endpoint-subset"].list_value
        for hostport in subset:
            values.values.add().string_value = hostport
    yield headers
    body = pb.ProcessingRequest()
    body.request_body.body = b'{"model":"m","prompt":"hello","max_tokens":3}'
    body.request_body.end_of_stream = True
    yield body


def _destination(responses: list[pb.ProcessingResponse]) -> str:
    mutation = responses[0].request_headers.response.header_mutation
    return next(h.header.raw_value.decode() for h in mutation.set_headers if h.header.key.startswith("x-gateway-dest"))


@pytest.mark.parametrize("detector", DETECTORS)
async def test_empty_pool_queues_the_request_until_an_endpoint_appears(detector: str) -> None:
    epp = Epp(detector, flow_control=True)
    assert epp.flow is not None
    epp.flow.start()
    try:
        waiting = asyncio.create_task(epp.request())
        await asyncio.sleep(0.05)
        assert not waiting.done(), "answered at once instead of waiting in flow control"
        assert len(epp.flow.queue) == 1
        epp.add_endpoint("10.0.0.1")
        responses = await asyncio.wait_for(waiting, 2.0)
        assert responses[0].WhichOneof("response") == "request_headers"
        assert _destination(responses) == "10.0.0.1:8000"
    finally:
        await epp.flow.stop()


@pytest.mark.parametrize("detector", DETECTORS)
async def test_empty_pool_request_times_out_in_the_queue(detector: str) -> None:
    epp = Epp(detector, flow_control=True, ttl="100ms")
    assert epp.flow is not None
    epp.flow.start()
    try:
        started = time.monotonic()
        responses = await asyncio.wait_for(epp.request(), 2.0)
        assert time.monotonic() - started >= 0.1
        immediate = responses[-1].immediate_response
        assert immediate.status.code == 503 and b"request timed out in queue" in immediate.body
    finally:
        await epp.flow.stop()


async def test_subset_matching_nothing_is_503_after_admission() -> None:
    epp = Epp("concurrency-detector", flow_control=True)
    assert epp.flow is not None
    epp.add_endpoint("10.0.0.1")
    epp.flow.start()
    try:
        responses = await asyncio.wait_for(epp.request(subset=["10.9.9.9:8000"]), 2.0)
        immediate = responses[-1].immediate_response
        assert immediate.status.code == 503 and NO_CANDIDATES in immediate.body
        assert epp.flow.dispatched == 1  # admitted (the pool has room), then no candidates
    finally:
        await epp.flow.stop()


@pytest.mark.parametrize("detector", DETECTORS)
async def test_empty_pool_without_flow_control_is_503_at_once(detector: str) -> None:
    epp = Epp(detector, flow_control=False)
    responses = await asyncio.wait_for(epp.request(), 2.0)
    immediate = responses[-1].immediate_response
    assert immediate.status.code == 503 and NO_CANDIDATES in immediate.body

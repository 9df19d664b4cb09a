"""gRPC health service with the reference semantics (reference §1.3).

Leader election off: every service name answers SERVING once the endpoint source has synced, else
NOT_SERVING. `Watch` is UNIMPLEMENTED, as in the reference.
"""

from __future__ import annotations

from typing import Any

import grpc
from grpc_health.v1 import health_pb2, health_pb2_grpc

EXTPROC_SERVICE = "envoy.service.ext_proc.v3.ExternalProcessor"
SERVICE_NAMES = ("inference-extension", "", EXTPROC_SERVICE)


class HealthState:
    def __init__(self) -> None:
        self.synced = False
        self.draining = False

    @property
    def serving(self) -> bool:
        return self.synced and not self.draining


class HealthServicer(health_pb2_grpc.HealthServicer):  # type: ignore[misc]
    def __init__(self, state: HealthState) -> None:
        self._state = state

    def _status(self) -> Any:
        serving = self._state.serving
        return health_pb2.HealthCheckResponse.SERVING if serving else health_pb2.HealthCheckResponse.NOT_SERVING

    async def Check(self, request: Any, context: grpc.aio.ServicerContext[Any, Any]) -> Any:
        return health_pb2.HealthCheckResponse(status=self._status())

    async def List(self, request: Any, context: grpc.aio.ServicerContext[Any, Any]) -> Any:
        response = health_pb2.HealthListResponse()
        response.statuses[EXTPROC_SERVICE].status = self._status()
        return response

    async def Watch(self, request: Any, context: grpc.aio.ServicerContext[Any, Any]) -> Any:
        await context.abort(grpc.StatusCode.UNIMPLEMENTED, "Watch is not implemented")


def add_health(server: grpc.aio.Server, state: HealthState) -> None:
    health_pb2_grpc.add_HealthServicer_to_server(HealthServicer(state), server)

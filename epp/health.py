"""gRPC health service with the reference semantics (reference §1.3).

Leader election off: every service name answers SERVING once the endpoint source has synced, else
NOT_SERVING. Leader election on: `liveness` is always SERVING; `readiness`, `""` and the ext_proc
service are SERVING only on the synced leader; other names are SERVICE_UNKNOWN. `List` reports the
ext_proc service (and liveness / readiness with leader election). `Watch` is UNIMPLEMENTED, as in the
reference.
"""

from __future__ import annotations

from typing import Any

import grpc
from grpc_health.v1 import health_pb2, health_pb2_grpc

EXTPROC_SERVICE = "envoy.service.ext_proc.v3.ExternalProcessor"
SERVICE_NAMES = ("inference-extension", "", EXTPROC_SERVICE)
LIVENESS_SERVICE = "liveness"
READINESS_SERVICE = "readiness"


class HealthState:
    def __init__(self) -> None:
        self.synced = False
        self.draining = False
        #: --ha-enable-leader-election: readiness follows `leader`
        self.leader_election = False
        self.leader = False

    @property
    def serving(self) -> bool:
        return self.synced and not self.draining and (self.leader or not self.leader_election)

    def status_of(self, service: str) -> Any:
        """The health status of one service name, per the reference's rules."""
        response = health_pb2.HealthCheckResponse
        if self.leader_election:
            if service == LIVENESS_SERVICE:
                return response.SERVING
            if service not in (READINESS_SERVICE, "", EXTPROC_SERVICE):
                return response.SERVICE_UNKNOWN
        return response.SERVING if self.serving else response.NOT_SERVING


class HealthServicer(health_pb2_grpc.HealthServicer):  # type: ignore[misc]
    def __init__(self, state: HealthState) -> None:
        self._state = state

    async def Check(self, request: Any, context: grpc.aio.ServicerContext[Any, Any]) -> Any:
        return health_pb2.HealthCheckResponse(status=self._state.status_of(request.service))

    async def List(self, request: Any, context: grpc.aio.ServicerContext[Any, Any]) -> Any:
        response = health_pb2.HealthListResponse()
        names = [EXTPROC_SERVICE]
        if self._state.leader_election:
            names += [LIVENESS_SERVICE, READINESS_SERVICE]
        for name in names:
            response.statuses[name].status = self._state.status_of(name)
        return response

    async def Watch(self, request: Any, context: grpc.aio.ServicerContext[Any, Any]) -> Any:
        await context.abort(grpc.StatusCode.UNIMPLEMENTED, "Watch is not implemented")


def add_health(server: grpc.aio.Server, state: HealthState) -> None:
    health_pb2_grpc.add_HealthServicer_to_server(HealthServicer(state), server)

"""Serves grpc.reflection.v1 next to v1alpha.

grpcio-reflection only ships v1alpha. The v1 service has the same messages on the wire under
another package name, so the v1alpha servicer answers both; newer grpcurl and Postman ask
for v1 first.
"""

from __future__ import annotations

from typing import Any

import grpc
from grpc import aio
from grpc_reflection.v1alpha import reflection, reflection_pb2

V1_SERVICE_NAME = "grpc.reflection.v1.ServerReflection"


def enable_reflection(service_names: tuple[str, ...], server: aio.Server) -> None:
    # v1 is answered but not listed: the pool has no v1 descriptor to describe it with.
    names = (*service_names, reflection.SERVICE_NAME)
    reflection.enable_server_reflection(names, server)
    servicer: Any = reflection.ReflectionServicer(names)
    handler = grpc.stream_stream_rpc_method_handler(
        servicer.ServerReflectionInfo,
        request_deserializer=reflection_pb2.ServerReflectionRequest.FromString,
        response_serializer=reflection_pb2.ServerReflectionResponse.SerializeToString,
    )
    server.add_generic_rpc_handlers(
        (grpc.method_handlers_generic_handler(V1_SERVICE_NAME, {"ServerReflectionInfo": handler}),)
    )

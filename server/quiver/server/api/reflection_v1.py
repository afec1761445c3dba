"""Server reflection (v1alpha and v1) that carries the protos' comments.

grpcio-reflection only ships v1alpha. The v1 service has the same messages on the wire under
another package name, so the v1alpha servicer answers both; newer grpcurl and Postman ask
for v1 first.

The generated stubs hold descriptors without comments, so reflection alone would describe
the API bare. ``make proto`` also writes ``quiver/v1/descriptors.binpb`` (a
FileDescriptorSet built with ``--include_source_info``, checked for drift like the stubs);
the files it holds are served from it, comments included, so ``grpcurl describe`` shows the
contract's documentation.
"""

from __future__ import annotations

from functools import cache
from pathlib import Path
from typing import Any

import grpc
import quiver.v1
from google.protobuf import descriptor_pb2, descriptor_pool
from google.protobuf.descriptor import FileDescriptor
from grpc import aio
from grpc_reflection.v1alpha import reflection, reflection_pb2

V1_SERVICE_NAME = "grpc.reflection.v1.ServerReflection"
DESCRIPTOR_SET = Path(quiver.v1.__file__).with_name("descriptors.binpb")


@cache
def documented_files() -> dict[str, bytes]:
    """File name -> serialized FileDescriptorProto with source info, from DESCRIPTOR_SET.

    protoc writes each field's ``json_name`` (lowerCamelCase) into the set; the stubs'
    descriptors leave it unset, and so must these: grpcurl then prints and reads the proto
    field names (``vector_store_id``), as in OpenAI's JSON, whichever descriptor it got."""
    files = descriptor_pb2.FileDescriptorSet.FromString(DESCRIPTOR_SET.read_bytes())
    for file in files.file:
        stack = list(file.message_type)
        while stack:
            message = stack.pop()
            for field in (*message.field, *message.extension):
                field.ClearField("json_name")
            stack += message.nested_type
    return {f.name: f.SerializeToString() for f in files.file}


class _File:
    """A FileDescriptor whose CopyToProto includes the comments when we have them."""

    def __init__(self, descriptor: FileDescriptor, documented: dict[str, bytes]) -> None:
        self._descriptor = descriptor
        self._documented = documented
        self.name = descriptor.name

    @property
    def dependencies(self) -> list[_File]:
        return [_File(d, self._documented) for d in self._descriptor.dependencies]

    def CopyToProto(self, proto: descriptor_pb2.FileDescriptorProto) -> None:
        serialized = self._documented.get(self.name)
        if serialized is None:
            self._descriptor.CopyToProto(proto)
        else:
            proto.MergeFromString(serialized)


class DocumentedPool:
    """The default descriptor pool, answering with ``_File`` where the reflection servicer
    asks for files."""

    def __init__(self, documented: dict[str, bytes]) -> None:
        self._pool = descriptor_pool.Default()
        self._documented = documented

    def FindFileByName(self, name: str) -> _File:
        return _File(self._pool.FindFileByName(name), self._documented)

    def FindFileContainingSymbol(self, symbol: str) -> _File:
        return _File(self._pool.FindFileContainingSymbol(symbol), self._documented)

    def __getattr__(self, name: str) -> Any:  # message types, extensions: as they are
        return getattr(self._pool, name)


def enable_reflection(service_names: tuple[str, ...], server: aio.Server) -> None:
    # v1 is answered but not listed: the pool has no v1 descriptor to describe it with.
    names = (*service_names, reflection.SERVICE_NAME)
    pool: Any = DocumentedPool(documented_files())
    reflection.enable_server_reflection(names, server, pool=pool)
    servicer: Any = reflection.ReflectionServicer(names, pool=pool)
    handler = grpc.stream_stream_rpc_method_handler(
        servicer.ServerReflectionInfo,
        request_deserializer=reflection_pb2.ServerReflectionRequest.FromString,
        response_serializer=reflection_pb2.ServerReflectionResponse.SerializeToString,
    )
    server.add_generic_rpc_handlers(
        (grpc.method_handlers_generic_handler(V1_SERVICE_NAME, {"ServerReflectionInfo": handler}),)
    )

"""Server reflection carries the protos' comments: `grpcurl describe` shows the contract's
documentation, from the committed descriptor set that `make proto` writes."""

from __future__ import annotations

import asyncio

from google.protobuf import descriptor_pb2
from quiver.server.api.reflection_v1 import documented_files
from quiver.v1 import file_batches_pb2

from tests.support.grpcurl import GRPCURL
from tests.support.inproc import Running


async def grpcurl(target: str, *args: str) -> tuple[int, str, str]:
    proc = await asyncio.create_subprocess_exec(
        str(GRPCURL),
        "-plaintext",
        "-max-time",
        "20",
        target,
        *args,
        stdout=asyncio.subprocess.PIPE,
        stderr=asyncio.subprocess.PIPE,
    )
    out, err = await asyncio.wait_for(proc.communicate(), timeout=60)
    return proc.returncode or 0, out.decode(), err.decode()


async def test_describe_shows_the_field_comments(running: Running) -> None:
    code, out, err = await grpcurl(running.target, "describe", "quiver.v1.CreateFileBatchRequest")
    assert code == 0, err
    assert "quiver.v1.CreateFileBatchRequest is a message" in out
    # The comment on request_id, as written in file_batches.proto.
    assert "// Optional idempotency key, 1…128 characters, scoped to the caller" in out
    assert "string request_id = 6;" in out
    assert "json_name" not in out  # proto field names in JSON, as OpenAI's bodies have them
    # A type from a dependency without comments of ours still resolves.
    assert "map<string, .google.protobuf.Value> attributes" in out

    code, out, err = await grpcurl(running.target, "describe", "quiver.v1.FileBatchService")
    assert code == 0, err
    assert "// File batches: attach many files to a store at once" in out
    assert "// Creates a batch and queues its files." in out


async def test_the_descriptor_set_matches_the_stubs() -> None:
    """What reflection serves describes the same messages the server decodes (make
    proto-check keeps the files identical to what the protos generate)."""
    served = descriptor_pb2.FileDescriptorProto.FromString(
        documented_files()["quiver/v1/file_batches.proto"]
    )
    compiled = descriptor_pb2.FileDescriptorProto()
    file_batches_pb2.DESCRIPTOR.CopyToProto(compiled)
    served.ClearField("source_code_info")
    assert served == compiled

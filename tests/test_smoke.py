from __future__ import annotations

from collections.abc import AsyncIterator

from quiver.v1 import files_pb2, vector_stores_pb2

from tests.support.inproc import Running


async def test_upload_and_create_store(running: Running) -> None:
    async def messages() -> AsyncIterator[files_pb2.UploadFileRequest]:
        yield files_pb2.UploadFileRequest(filename="a.txt", data=b"hello")
        yield files_pb2.UploadFileRequest(data=b" world")

    a = running.alice
    reply = await a.files.UploadFile(messages(), metadata=a.metadata)
    assert reply.file.bytes == 11
    store = await a.stores.CreateVectorStore(
        vector_stores_pb2.CreateVectorStoreRequest(name="x"), metadata=a.metadata
    )
    assert store.vector_store.id.startswith("vs_")

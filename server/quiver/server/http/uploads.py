"""``POST /v1/files``: a multipart/form-data body parsed as it streams (python-multipart's
parser), the file part written straight into the same ``Upload`` as gRPC's UploadFile: the
same size limit (checked as bytes arrive: 413 past it), sha256 and temp-file handling, the
same upload slots and idle timeout. The body is never held in memory.

Form fields: ``purpose`` (required, before the file part), optional ``sha256`` (a Quiver
extension, also before the file), and one ``file`` part with a filename.
"""

from __future__ import annotations

import asyncio
from collections.abc import AsyncIterator

from python_multipart.multipart import MultipartParser, parse_options_header
from quiver.server.core.errors import DeadlineExceeded, FieldViolation, InvalidArgument
from quiver.server.core.files import FileStore, Upload
from quiver.server.core.models import StoredFile
from quiver.server.core.principal import Principal
from quiver.server.core.upload_slots import UploadSlots
from quiver.server.core.validation import FILE_PURPOSES
from starlette.requests import Request

FORM_FIELDS = ("purpose", "sha256", "file")
MAX_FIELD_BYTES = 1024
MAX_HEADER_BYTES = 8 * 1024
MAX_PARTS = 8


class _Form:
    """Callbacks of the multipart parser: small fields in memory, the file into ``Upload``.
    They run in a worker thread (``write`` hashes and writes the file's pieces)."""

    def __init__(self, files: FileStore, principal: Principal) -> None:
        self._files = files
        self._principal = principal
        self.fields: dict[str, str] = {}
        self.upload: Upload | None = None
        self.file_parts = 0
        self._parts = 0
        self._headers: dict[str, bytes] = {}
        self._header_field = bytearray()
        self._header_value = bytearray()
        self._header_bytes = 0
        self._name = ""
        self._is_file = False
        self._value = bytearray()

    def callbacks(self) -> dict[str, object]:
        return {
            "on_part_begin": self._part_begin,
            "on_header_field": self._header_field_data,
            "on_header_value": self._header_value_data,
            "on_header_end": self._header_end,
            "on_headers_finished": self._headers_finished,
            "on_part_data": self._part_data,
            "on_part_end": self._part_end,
        }

    def _part_begin(self) -> None:
        self._parts += 1
        if self._parts > MAX_PARTS:
            raise InvalidArgument.one("body", f"has more than {MAX_PARTS} form parts")
        self._headers = {}
        self._header_bytes = 0
        self._value = bytearray()
        self._is_file = False

    def _count(self, size: int) -> None:
        self._header_bytes += size
        if self._header_bytes > MAX_HEADER_BYTES:
            raise InvalidArgument.one("body", "a form part's headers are too long")

    def _header_field_data(self, data: bytes, start: int, end: int) -> None:
        self._count(end - start)
        self._header_field += data[start:end]

    def _header_value_data(self, data: bytes, start: int, end: int) -> None:
        self._count(end - start)
        self._header_value += data[start:end]

    def _header_end(self) -> None:
        self._headers[bytes(self._header_field).lower().decode("latin-1")] = bytes(
            self._header_value
        )
        self._header_field = bytearray()
        self._header_value = bytearray()

    def _headers_finished(self) -> None:
        _, options = parse_options_header(self._headers.get("content-disposition", b""))
        name = options.get(b"name", b"").decode("utf-8", "replace")
        if name not in FORM_FIELDS:
            raise InvalidArgument.one(
                name[:64] or "body",
                f"is not a known form field (known: {', '.join(FORM_FIELDS)})",
            )
        self._name = name
        if name != "file":
            return
        self.file_parts += 1
        if self.file_parts > 1:
            raise InvalidArgument.one("file", "send exactly one file part")
        if b"filename" not in options:
            raise InvalidArgument.one("file", "must be a file part with a filename")
        if "purpose" not in self.fields:
            raise InvalidArgument.one(
                "purpose", "is required, as a form field before the file part"
            )
        if not self.fields["purpose"]:
            raise InvalidArgument.one("purpose", f"must be one of {', '.join(FILE_PURPOSES)}")
        filename = options[b"filename"].decode("utf-8", "surrogateescape")
        self._is_file = True
        self.upload = self._files.begin_upload(
            self._principal, filename, self.fields["purpose"], self.fields.get("sha256", "")
        )

    def _part_data(self, data: bytes, start: int, end: int) -> None:
        if self._is_file:
            assert self.upload is not None
            self.upload.write(data[start:end])
            return
        self._value += data[start:end]
        if len(self._value) > MAX_FIELD_BYTES:
            raise InvalidArgument.one(self._name, f"is longer than {MAX_FIELD_BYTES} bytes")

    def _part_end(self) -> None:
        if self._is_file:
            return
        try:
            self.fields[self._name] = self._value.decode("utf-8")
        except UnicodeDecodeError:
            raise InvalidArgument.one(self._name, "is not UTF-8 text") from None


def _boundary(request: Request) -> bytes:
    kind, options = parse_options_header(request.headers.get("content-type", ""))
    boundary = options.get(b"boundary", b"")
    if kind != b"multipart/form-data" or not boundary:
        raise InvalidArgument(
            [FieldViolation("file", "send the file as multipart/form-data (fields purpose, file)")],
            reason="NOT_MULTIPART",
        )
    return boundary


async def _pieces(request: Request, idle_timeout: float) -> AsyncIterator[bytes]:
    stream = aiter(request.stream())
    while True:
        try:
            piece = await asyncio.wait_for(anext(stream), idle_timeout)
        except StopAsyncIteration:
            return
        except TimeoutError:
            raise DeadlineExceeded(
                f"the upload sent nothing for {idle_timeout:g} s (--upload-idle-timeout); "
                "nothing was stored",
                reason="UPLOAD_IDLE",
            ) from None
        if piece:
            yield piece


async def receive_file(
    request: Request,
    principal: Principal,
    files: FileStore,
    slots: UploadSlots,
    idle_timeout: float,
) -> StoredFile:
    boundary = _boundary(request)
    with slots.hold(principal.tenant):
        form = _Form(files, principal)
        parser = MultipartParser(boundary, form.callbacks())  # type: ignore[arg-type]
        try:
            async for piece in _pieces(request, idle_timeout):
                await asyncio.to_thread(parser.write, piece)
            parser.finalize()
            if form.upload is None:
                raise InvalidArgument.one(
                    "purpose" if "purpose" not in form.fields else "file",
                    "is required (multipart/form-data fields: purpose, then file)",
                )
            await asyncio.to_thread(form.upload.seal)  # sha256 check, fsync, rename
            stored = await form.upload.record()
            form.upload = None
            return stored
        finally:
            if form.upload is not None:
                form.upload.abort()

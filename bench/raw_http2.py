"""A bare HTTP/2 client for hostile-caller benchmarks: opens gRPC streams (HEADERS without
END_STREAM) and resets them, with no gRPC library in between. Loopback only."""

from __future__ import annotations

import socket
import struct

PREFACE = b"PRI * HTTP/2.0\r\n\r\nSM\r\n\r\n"
HEADERS, RST_STREAM, SETTINGS, PING, GOAWAY, WINDOW_UPDATE = 0x1, 0x3, 0x4, 0x6, 0x7, 0x8
END_HEADERS = 0x4
CANCEL = 0x8


def frame(kind: int, flags: int, stream: int, payload: bytes = b"") -> bytes:
    return (
        struct.pack(">I", len(payload))[1:]
        + bytes([kind, flags])
        + struct.pack(">I", stream & 0x7FFFFFFF)
        + payload
    )


def _string(value: bytes) -> bytes:
    """An HPACK string literal, not Huffman-coded (lengths here stay under 127)."""
    assert len(value) < 127
    return bytes([len(value)]) + value


def header_block(path: str, authority: str, extra: dict[str, str] | None = None) -> bytes:
    """HPACK: every field a literal without indexing, new name (0x00 prefix)."""
    fields = {
        ":method": "POST",
        ":scheme": "http",
        ":path": path,
        ":authority": authority,
        "content-type": "application/grpc",
        "te": "trailers",
        **(extra or {}),
    }
    return b"".join(b"\x00" + _string(k.encode()) + _string(v.encode()) for k, v in fields.items())


class RawConnection:
    """One TCP connection speaking HTTP/2. It never reads unless asked: a caller that does not
    read is part of what these benchmarks play."""

    def __init__(self, host: str, port: int) -> None:
        self.authority = f"{host}:{port}"
        self.sock = socket.create_connection((host, port), timeout=5.0)
        self.sock.setsockopt(socket.IPPROTO_TCP, socket.TCP_NODELAY, 1)
        self.sock.sendall(PREFACE + frame(SETTINGS, 0, 0))
        self.next_stream = 1

    def open_stream(self, path: str) -> int:
        """HEADERS without END_STREAM: the stream stays open, waiting for a body that never
        comes."""
        stream = self.next_stream
        self.next_stream += 2
        self.sock.sendall(frame(HEADERS, END_HEADERS, stream, header_block(path, self.authority)))
        return stream

    def reset(self, stream: int) -> None:
        self.sock.sendall(frame(RST_STREAM, 0, stream, struct.pack(">I", CANCEL)))

    def drain(self) -> int:
        """Reads whatever the server has sent so far (non-blocking); returns the bytes."""
        self.sock.setblocking(False)
        total = 0
        try:
            while chunk := self.sock.recv(1 << 20):
                total += len(chunk)
        except (BlockingIOError, ConnectionError):
            pass
        finally:
            self.sock.settimeout(5.0)
        return total

    def close(self) -> None:
        self.sock.close()
